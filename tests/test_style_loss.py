"""The Gram style loss against a PyTorch version of Barbershop's formula (AlignLossBuilder.style_loss
-> StyleLoss with VGG16_ACTIVATIONS_LIST [3, 8, 15, 22], prepare_mask, gram_matrix, MSE) on
torchvision's VGG16 `features` with random weights, converted by `barbershop-jax convert vgg16`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import nhwc, rel_err
from barbershop_jax import cli
from barbershop_jax.losses import style
from barbershop_jax.models import vgg16

TOL = 1e-5
style_fn = jax.jit(style.style_loss, static_argnames=("taps", "size"))


@pytest.fixture(scope="module")
def torch_features():
    """torchvision's vgg16().features layout (make_layers of config 'D'), random weights."""
    from torchvision.models.vgg import cfgs, make_layers
    features = make_layers(cfgs["D"]).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in features:
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=gen))
    return features


@pytest.fixture(scope="module")
def converted(torch_features, tmp_path_factory):
    root = tmp_path_factory.mktemp("vgg_style")
    torch.save({f"features.{k}": v for k, v in torch_features.state_dict().items()}, root / "vgg16.pth")
    assert cli.main(["convert", "vgg16", str(root / "vgg16.pth"), str(root / "weights")]) == 0
    return vgg16.load(root / "weights")


def torch_style_loss(features, x, x_hat, mask1, mask2, size=256, layers=(3, 8, 15, 22)):
    """Barbershop's chain: the builder masks the (already masked) images again, StyleLoss
    upsamples to `size` (256 officially), VGG activations, masks resized with scale_factor,
    Gram = x x^T / (N C H W) over (N C, H W), MSE, mean over layers; reference under no_grad."""
    x, x_hat = x * mask1, x_hat * mask2
    up = nn.Upsample(scale_factor=size / x.shape[2], mode="bilinear", align_corners=True)
    x, x_hat = up(x), up(x_hat)

    def activations(t):
        out = []
        for i, layer in enumerate(features[:max(layers) + 1]):
            t = layer(t)
            if i in layers:
                out.append(t)
        return out

    def prepare(f, mask):
        mask = mask.repeat(1, f.shape[1], 1, 1)
        return F.interpolate(mask, scale_factor=f.shape[2] / mask.shape[2], mode="nearest")

    def gram(f):
        n, c, h, w = f.shape
        v = f.view(n * c, h * w)
        return (v @ v.t()) / (n * c * h * w)

    with torch.no_grad():
        act_x = activations(x)
    act_x_hat = activations(x_hat)
    loss = 0.0
    for a, b in zip(act_x, act_x_hat):
        loss = loss + F.mse_loss(gram(a * prepare(a, mask1)), gram(b * prepare(b, mask2)))
    return loss / len(layers)


def _inputs(size, seed, batch=1):
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(batch, 3, size, size, generator=gen) * 2 - 1 for _ in range(2)]
    masks = []
    for _ in range(2):
        noise = torch.randn(batch, 1, size // 8, size // 8, generator=gen)
        masks.append((F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False) > 0).float())
    return images, masks


def _j(t):
    return jnp.asarray(nhwc(t))


def test_matches_barbershop_formula_at_256(torch_features, converted):
    """The official call: 256 px renders, binary hair masks; Alignment masks the images once
    before the loss builder masks them again."""
    (ref_img, img), (ref_mask, mask) = _inputs(256, seed=1)
    with torch.no_grad():
        expected = torch_style_loss(torch_features, ref_img * ref_mask, img * mask, ref_mask, mask)
    ours = style_fn(converted, _j(ref_img), _j(img), _j(ref_mask), _j(mask))
    assert ours.shape == (1,)
    np.testing.assert_allclose(np.asarray(ours), [float(expected)], rtol=TOL)


def test_resizes_like_the_official_upsample(torch_features, converted):
    """Inputs smaller than the VGG size are upsampled bilinearly (align_corners=True) and the
    masks follow through prepare_mask's scale factors. Tested at 32 -> 64 to stay small."""
    (ref_img, img), (ref_mask, mask) = _inputs(32, seed=2)
    with torch.no_grad():
        expected = torch_style_loss(torch_features, ref_img, img, ref_mask, mask, size=64)
    ours = style_fn(converted, _j(ref_img), _j(img), _j(ref_mask), _j(mask), size=64)
    np.testing.assert_allclose(np.asarray(ours), [float(expected)], rtol=TOL)


def test_gradient_matches_torch_autograd(torch_features, converted):
    (ref_img, img), (ref_mask, mask) = _inputs(64, seed=3)
    img_t = img.clone().requires_grad_(True)
    torch_style_loss(torch_features, ref_img, img_t, ref_mask, mask, size=64).backward()

    def loss(vgg, reference, image):  # the VGG an argument: as a closure its weights are constants to compile
        return jnp.sum(style.style_loss(vgg, reference, image, _j(ref_mask), _j(mask), size=64))

    grad_ref, grad = jax.jit(jax.grad(loss, argnums=(1, 2)))(converted, _j(ref_img), _j(img))
    assert np.all(np.isfinite(np.asarray(grad)))
    assert rel_err(grad, nhwc(img_t.grad)) <= 1e-4
    assert float(jnp.abs(grad_ref).max()) == 0.0  # the reference side is computed under no_grad


def test_batch_is_per_sample(converted):
    (ref_img, img), (ref_mask, mask) = _inputs(64, seed=4, batch=2)
    batched = style_fn(converted, _j(ref_img), _j(img), _j(ref_mask), _j(mask), size=64)
    singles = [style_fn(converted, _j(ref_img[i:i + 1]), _j(img[i:i + 1]), _j(ref_mask[i:i + 1]),
                        _j(mask[i:i + 1]), size=64)[0] for i in range(2)]
    np.testing.assert_allclose(np.asarray(batched), np.asarray(singles), rtol=1e-5)


def test_gram_matrix_by_hand():
    features = jnp.arange(12.0).reshape(1, 2, 3, 2)  # (B, H, W, C): 6 pixels, 2 channels
    flat = np.arange(12.0).reshape(6, 2)
    np.testing.assert_allclose(style.gram_matrix(features)[0], flat.T @ flat / 12.0, rtol=1e-6)


def test_identical_inputs_and_empty_masks_give_zero(converted):
    (ref_img, _), (ref_mask, _) = _inputs(64, seed=5)
    same = style_fn(converted, _j(ref_img), _j(ref_img), _j(ref_mask), _j(ref_mask), size=64)
    assert float(same[0]) == 0.0
    empty = jnp.zeros((1, 64, 64))
    assert float(style_fn(converted, _j(ref_img), _j(ref_img) * 0.5, empty, empty, size=64)[0]) == 0.0
