"""LPIPS, its spatial maps and Barbershop's masked LPIPS against the `lpips` package's own code.

The reference is `lpips.LPIPS(net='vgg', pretrained=True, pnet_rand=True)`: the package's network
and forward, its shipped v0.1 linear weights, a random VGG16 trunk (random biases too). The trunk
is saved as a torchvision-layout state_dict and converted by `barbershop-jax convert vgg16`,
which reads the linear weights from the installed package's file. Tolerance: relative
difference <= 1e-5 for values and maps, 1e-4 of the largest gradient for gradients."""
import importlib.util
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import nhwc, rel_err
from barbershop_jax import cli
from barbershop_jax.losses import lpips as L
from barbershop_jax.models import vgg16
from convert import vgg16 as conv
from convert.common import ConversionError

TOL = 1e-5
SIZE = 64
# Jitted once per module; compiled once per input shape and option.
lpips_fn = jax.jit(L.lpips)
maps_fn = jax.jit(L.lpips_maps, static_argnames="taps")
spatial_fn = jax.jit(L.lpips_spatial)
masked_fn = jax.jit(L.masked_lpips, static_argnames=("taps", "guard_empty"))


@pytest.fixture(scope="module")
def lpips_ref():
    import lpips
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's `pretrained` deprecation, inside lpips
        net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=gen))
    return net


def torchvision_state_dict(net) -> dict:
    """The package's VGG slices keep torchvision's `features` indices as module names."""
    return {f"features.{name}": p.detach().clone()
            for s in range(1, 6) for name, p in getattr(net.net, f"slice{s}").named_parameters()}


@pytest.fixture(scope="module")
def converted(lpips_ref, tmp_path_factory):
    root = tmp_path_factory.mktemp("vgg16")
    torch.save(torchvision_state_dict(lpips_ref), root / "vgg16.pth")
    assert cli.main(["convert", "vgg16", str(root / "vgg16.pth"), str(root / "weights")]) == 0
    return vgg16.load(root / "weights"), root


def _images(batch=2, seed=0, size=SIZE):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    x1 = (x0 + 0.5 * torch.randn(batch, 3, size, size, generator=gen)).clamp(-1, 1)
    return x0, x1


def _j(t):
    return jnp.asarray(nhwc(t))


def torch_tap_maps(net, x0, x1):
    """The package's pieces at native resolution: lins[k]((normalize(f0) - normalize(f1))^2)."""
    import lpips
    outs0, outs1 = net.net(net.scaling_layer(x0)), net.net(net.scaling_layer(x1))
    return [net.lins[k]((lpips.normalize_tensor(a) - lpips.normalize_tensor(b)) ** 2)
            for k, (a, b) in enumerate(zip(outs0, outs1))]


def torch_masked_lpips(net, x0, x1, mask, blocks=("1", "2", "3")):
    """Barbershop's masked formula (losses/masked_lpips) on the package's network: the mask
    nearest-resized level by level, sum(map * mask) / sum(mask) per tap, taps 1..3 summed."""
    value = 0.0
    for k, tap_map in enumerate(torch_tap_maps(net, x0, x1)):
        mask = F.interpolate(mask, size=tap_map.shape[2:], mode="nearest")
        if str(k + 1) in blocks:
            value = value + (tap_map * mask).sum([2, 3], keepdim=True) / torch.sum(mask)
    return value


def _blob_mask(batch, size, seed):
    """A smooth random region, thresholded: a hair-like binary mask (N, 1, size, size)."""
    noise = torch.randn(batch, 1, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False) > 0.3).float()


# ----------------------------------------------------------------------------- LPIPS
def test_lpips_matches_package(lpips_ref, converted):
    model, _ = converted
    x0, x1 = _images()
    with torch.no_grad():
        ref, per_tap = lpips_ref(x0, x1, retPerLayer=True)
    ours = lpips_fn(model, _j(x0), _j(x1))
    assert ours.shape == (2,)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy().reshape(-1), rtol=TOL, atol=0)
    maps = maps_fn(model, _j(x0), _j(x1))
    for tap, ref_tap in zip(vgg16.TAPS, per_tap):
        np.testing.assert_allclose(np.asarray(maps[tap].mean((1, 2))), ref_tap.numpy().reshape(-1), rtol=TOL)


def test_native_tap_maps_match_package_layers(lpips_ref, converted):
    model, _ = converted
    x0, x1 = _images(seed=1)
    with torch.no_grad():
        refs = torch_tap_maps(lpips_ref, x0, x1)
    maps = maps_fn(model, _j(x0), _j(x1))
    for tap, ref in zip(vgg16.TAPS, refs):
        assert maps[tap].shape == ref.shape[:1] + ref.shape[2:]
        assert rel_err(maps[tap], ref.numpy()[:, 0]) <= TOL


def test_spatial_maps_match_package(lpips_ref, converted):
    model, _ = converted
    x0, x1 = _images(seed=2)
    lpips_ref.spatial = True
    try:
        with torch.no_grad():
            ref = lpips_ref(x0, x1)
    finally:
        lpips_ref.spatial = False
    ours = spatial_fn(model, _j(x0), _j(x1))
    assert ours.shape == (2, SIZE, SIZE)
    assert rel_err(ours, ref.numpy()[:, 0]) <= TOL


def test_lpips_is_zero_for_identical_images_and_symmetric(converted):
    model, _ = converted
    x0, x1 = _images(seed=3)
    assert float(jnp.max(jnp.abs(lpips_fn(model, _j(x0), _j(x0))))) == 0.0
    np.testing.assert_allclose(lpips_fn(model, _j(x0), _j(x1)), lpips_fn(model, _j(x1), _j(x0)), rtol=1e-6)


def test_lpips_gradient_matches_torch_autograd(lpips_ref, converted):
    model, _ = converted
    x0, x1 = _images(seed=4)
    x0_t = x0.clone().requires_grad_(True)
    lpips_ref(x0_t, x1).sum().backward()
    grad = jax.jit(jax.grad(lambda m, a, b: jnp.sum(lpips_fn(m, a, b)), argnums=1))(model, _j(x0), _j(x1))
    assert np.all(np.isfinite(np.asarray(grad)))
    assert rel_err(grad, nhwc(x0_t.grad)) <= 1e-4


# ----------------------------------------------------------------------------- masked LPIPS
@pytest.mark.parametrize("mask_size", [SIZE, 2 * SIZE])
def test_masked_lpips_matches_barbershop_formula(lpips_ref, converted, mask_size):
    """Batch 1 (the official batch size); a mask at the image size and one at twice it."""
    model, _ = converted
    x0, x1 = _images(batch=1, seed=5)
    mask = _blob_mask(1, mask_size, seed=6)
    with torch.no_grad():
        ref = torch_masked_lpips(lpips_ref, x0, x1, mask)
    ours = masked_fn(model, _j(x0), _j(x1), _j(mask))
    np.testing.assert_allclose(np.asarray(ours), ref.numpy().reshape(-1), rtol=TOL)


def test_masked_lpips_is_per_sample(lpips_ref, converted):
    model, _ = converted
    x0, x1 = _images(batch=2, seed=7)
    mask = _blob_mask(2, SIZE, seed=8)
    with torch.no_grad():
        refs = [torch_masked_lpips(lpips_ref, x0[i:i + 1], x1[i:i + 1], mask[i:i + 1]) for i in range(2)]
    ours = masked_fn(model, _j(x0), _j(x1), _j(mask)[..., 0])  # (B, H, W) masks work too
    np.testing.assert_allclose(np.asarray(ours), [float(r) for r in refs], rtol=TOL)


def test_masked_lpips_with_full_mask_is_lpips_of_taps_1_to_3(converted):
    model, _ = converted
    x0, x1 = _images(seed=9)
    maps = maps_fn(model, _j(x0), _j(x1), taps=L.MASKED_TAPS)
    expected = sum(m.mean((1, 2)) for m in maps.values())
    ours = masked_fn(model, _j(x0), _j(x1), jnp.ones((1, SIZE, SIZE)))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=1e-6)


def test_masked_lpips_gradient_matches_torch_autograd(lpips_ref, converted):
    model, _ = converted
    x0, x1 = _images(batch=1, seed=10)
    mask = _blob_mask(1, SIZE, seed=11)
    x0_t = x0.clone().requires_grad_(True)
    torch_masked_lpips(lpips_ref, x0_t, x1, mask).sum().backward()
    grad = jax.jit(jax.grad(lambda m, a: jnp.sum(masked_fn(m, a, _j(x1), _j(mask))), argnums=1))(model, _j(x0))
    assert np.all(np.isfinite(np.asarray(grad)))
    assert rel_err(grad, nhwc(x0_t.grad)) <= 1e-4


def test_empty_mask_guard(converted):
    """Official: 0 / 0 = NaN (SPEC.md section 7). Guarded (default): 0, with a finite gradient."""
    model, _ = converted
    x0, x1 = _images(batch=1, seed=12)
    empty = jnp.zeros((1, SIZE, SIZE))
    assert np.isnan(float(masked_fn(model, _j(x0), _j(x1), empty, guard_empty=False)[0]))
    assert float(masked_fn(model, _j(x0), _j(x1), empty)[0]) == 0.0
    grad = jax.jit(jax.grad(lambda m, a: jnp.sum(L.masked_lpips(m, a, _j(x1), empty)), argnums=1))(model, _j(x0))
    assert np.all(np.asarray(grad) == 0.0)


# ----------------------------------------------------------------------------- converter
def test_parameter_counts_pinned(converted):
    model, _ = converted
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params)) == 14_714_688
    assert {t: w.shape[0] for t, w in model.lpips_lin.items()} == dict(zip(vgg16.TAPS, (64, 128, 256, 512, 512)))
    assert len(conv.torch_shapes(vgg16.VGG16Config())) == 26


def test_converter_skips_classifier_and_takes_given_lins(lpips_ref, converted, tmp_path):
    _, root = converted
    sd = torch.load(root / "vgg16.pth", weights_only=True)
    sd["classifier.0.weight"] = torch.zeros(4, 8)  # any classifier is skipped
    torch.save(sd, tmp_path / "full.pth")
    lins = {f"lin{k}.model.1.weight": torch.full((1, w, 1, 1), 0.5 + k)
            for k, w in enumerate((64, 128, 256, 512, 512))}
    torch.save(lins, tmp_path / "lins.pth")
    assert cli.main(["convert", "vgg16", str(tmp_path / "full.pth"), str(tmp_path / "w"),
                     "--lpips-weights", str(tmp_path / "lins.pth")]) == 0
    model = vgg16.load(tmp_path / "w")
    assert float(model.lpips_lin["relu3_3"][0]) == 2.5


def test_default_lins_found_without_importing_lpips(monkeypatch):
    path = conv.default_lpips_weights()
    assert path.parts[-3:] == ("weights", "v0.1", "vgg.pth")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConversionError, match="--lpips-weights"):
        conv.default_lpips_weights()


def _refused(args, dst, capsys, match):
    assert cli.main(["convert", "vgg16", *map(str, args), str(dst)]) == 1
    err = capsys.readouterr().err
    assert match in err, err
    assert not dst.exists()


def test_converter_refusals(converted, tmp_path, capsys):
    _, root = converted
    data = (root / "vgg16.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:1000])
    _refused([tmp_path / "cut.pth"], tmp_path / "out", capsys, "truncated or corrupt")
    sd = torch.load(root / "vgg16.pth", weights_only=True)
    sd["features.3.weight"] = sd.pop("features.2.weight")
    torch.save(sd, tmp_path / "renamed.pth")
    _refused([tmp_path / "renamed.pth"], tmp_path / "out", capsys,
             "missing features.2.weight; unexpected features.3.weight")
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "alex.pth")
    _refused([root / "vgg16.pth", "--lpips-weights", tmp_path / "alex.pth"], tmp_path / "out", capsys,
             "missing lin1.model.1.weight")
    _refused([root / "vgg16.pth", "--lpips-weights", tmp_path / "nope.pth"], tmp_path / "out", capsys,
             "nope.pth: no such file")


def test_lpips_to_precomputed_target_features_equals_lpips(converted):
    """The embedding computes its target's features once; same numbers as plain LPIPS."""
    model, _ = converted
    x0, x1 = _images(batch=2, seed=5)
    units = jax.jit(L.unit_features)(model, _j(x1))
    ours = jax.jit(L.lpips_to_features)(model, _j(x0), units)
    assert rel_err(ours, lpips_fn(model, _j(x0), _j(x1))) <= 1e-6
