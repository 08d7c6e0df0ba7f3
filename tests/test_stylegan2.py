"""The Flax generator against the PyTorch reference (tests/torch_stylegan2.py), converted
through `barbershop-jax convert stylegan2`. Tolerance: max abs difference <= 1e-4 times the
largest magnitude of the reference output."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_stylegan2 as T
from conftest import nhwc, normal, rel_err
from barbershop_jax.models import stylegan2, stylegan2_layers

TOL = 1e-4


def _inputs(g, batch=2, seed=3):
    torch.manual_seed(seed)
    latent_avg = T.checkpoint(g)["latent_avg"]
    w = latent_avg + 0.5 * torch.randn(batch, g.n_latent, g.style_dim)
    noise = [torch.randn(batch, 1, *n.shape[2:]) for n in g.const_noise()]
    return w, noise, [jnp.asarray(nhwc(n)) for n in noise]


def test_mapping_matches_torch(torch_generator_64, converted_64):
    model, _ = converted_64
    z = torch.randn(5, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = torch_generator_64.style(z).numpy()
    assert rel_err(model.map(jnp.asarray(z.numpy())), ref) <= TOL


def test_truncation_matches_official_formula(torch_generator_64, converted_64):
    model, _ = converted_64
    z = torch.randn(3, 512, generator=torch.Generator().manual_seed(1))
    avg = T.checkpoint(torch_generator_64)["latent_avg"]
    with torch.no_grad():
        ref = (avg + 0.7 * (torch_generator_64.style(z) - avg)).numpy()
    np.testing.assert_allclose(np.asarray(model.latent_avg), avg.numpy(), rtol=0, atol=0)
    assert rel_err(model.map(jnp.asarray(z.numpy()), truncation=0.7), ref) <= TOL


def test_render_w_plus_matches_torch(torch_generator_64, converted_64):
    model, _ = converted_64
    w, noise, noise_j = _inputs(torch_generator_64)
    with torch.no_grad():
        _, ref = torch_generator_64(w, noise)
    ours = jax.jit(lambda m, w, n: m.render(w, noise=n))(model, jnp.asarray(w.numpy()), noise_j)
    assert ours.shape == (2, 64, 64, 3)
    assert rel_err(ours, nhwc(ref)) <= TOL


def test_const_noise_is_the_checkpoint_buffers(torch_generator_64, converted_64):
    model, _ = converted_64
    w, _, _ = _inputs(torch_generator_64, batch=1)
    with torch.no_grad():
        _, ref = torch_generator_64(w, torch_generator_64.const_noise())
    assert rel_err(model.render(jnp.asarray(w.numpy()), noise="const"), nhwc(ref)) <= TOL


def test_features_and_fs_resume_match_official(torch_generator_64, converted_64):
    """F after block 3 (32x32) and the FS render from block 4, skip dropped (official)."""
    model, _ = converted_64
    w, noise, noise_j = _inputs(torch_generator_64)
    with torch.no_grad():
        ref_f, ref_skip = torch_generator_64(w, noise, end_layer=3)
        _, ref_fs = torch_generator_64(w, noise, start_layer=4, layer_in=ref_f)
    wj = jnp.asarray(w.numpy())
    structure_f, skip = model.features(wj, block=3, noise=noise_j)
    assert structure_f.shape == (2, 32, 32, 512)
    assert rel_err(structure_f, nhwc(ref_f)) <= TOL
    assert rel_err(skip, nhwc(ref_skip)) <= TOL
    fs = model.render_from_features(jnp.asarray(nhwc(ref_f)), wj, block=3, noise=noise_j)
    assert rel_err(fs, nhwc(ref_fs)) <= TOL
    # The S code alone (latents from index 7 on) gives the same image as the full W+.
    fs_s = model.render_from_features(jnp.asarray(nhwc(ref_f)), wj[:, 7:], block=3, noise=noise_j)
    np.testing.assert_array_equal(np.asarray(fs_s), np.asarray(fs))


def test_resume_with_skip_carried_equals_render(converted_64):
    model, _ = converted_64
    w = model.mean_w_plus(2) + 0.3 * normal(0, (2, 10, 512))
    key = jax.random.PRNGKey(1)
    full = model.render(w, key=key)
    for block in (1, 2, 3):
        structure_f, skip = model.features(w, block=block, key=key)
        resumed = model.render_from_features(structure_f, w, block=block, skip=skip, key=key)
        assert rel_err(resumed, full) <= 1e-5
        dropped = model.render_from_features(structure_f, w, block=block, key=key)
        assert rel_err(dropped, full) > 1e-3  # the official FS render loses the low-res colour


def test_gradients_match_torch_autograd(tmp_path):
    """d(loss)/d(W+) and d(loss)/d(F) against torch autograd, 32 px with official widths.
    Stated tolerance: max abs difference <= 1e-3 times the largest gradient magnitude."""
    from convert import stylegan2 as conv

    g = T.realistic_init_(T.Generator(32, 512, 8, channel_multiplier=2), seed=4).eval()
    torch.save(T.checkpoint(g), tmp_path / "g32.pt")
    model, _ = conv.convert(tmp_path / "g32.pt")
    w, noise, noise_j = _inputs(g, batch=2, seed=5)
    target = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))

    w_t = w.clone().requires_grad_(True)
    _, img = g(w_t, noise)
    ((img - target) ** 2).mean().backward()

    f_in, _ = g(w, noise, end_layer=1)  # F after block 1 (8x8): the 32 px analogue
    f_t = f_in.detach().clone().requires_grad_(True)
    _, img_f = g(w, noise, start_layer=2, layer_in=f_t)
    ((img_f - target) ** 2).mean().backward()

    target_j = jnp.asarray(nhwc(target))

    # The model an argument, not a closure: as a closure its weights are constants of the
    # program, which XLA takes longer to compile (17 against 12 s for grad_w).
    def loss_w(m, w_plus):
        return jnp.mean((m.render(w_plus, noise=noise_j) - target_j) ** 2)

    def loss_f(m, f):
        return jnp.mean((m.render_from_features(f, jnp.asarray(w.numpy()), block=1, noise=noise_j)
                         - target_j) ** 2)

    grad_w = jax.jit(jax.grad(loss_w, argnums=1))(model, jnp.asarray(w.numpy()))
    grad_f = jax.jit(jax.grad(loss_f, argnums=1))(model, jnp.asarray(nhwc(f_t.detach())))
    assert rel_err(grad_w, w_t.grad.numpy()) <= 1e-3
    assert rel_err(grad_f, nhwc(f_t.grad)) <= 1e-3


def test_jit_vmap_and_loop_agree(converted_64):
    model, _ = converted_64
    w = model.mean_w_plus(3) + 0.3 * normal(2, (3, 10, 512))
    batched = jax.jit(lambda m, w: m.render(w, noise="const"))(model, w)
    vmapped = jax.jit(jax.vmap(lambda m, w: m.render(w[None], noise="const")[0], in_axes=(None, 0)))(model, w)
    looped = np.stack([np.asarray(model.render(w[i:i + 1], noise="const")[0]) for i in range(3)])
    assert rel_err(vmapped, batched) <= 1e-5
    assert rel_err(looped, batched) <= 1e-5


def test_noise_modes(converted_64):
    model, _ = converted_64
    w = model.mean_w_plus(1)
    k1, k2 = jax.random.PRNGKey(7), jax.random.PRNGKey(8)
    a, b, c = (np.asarray(model.render(w, key=k)) for k in (k1, k1, k2))
    np.testing.assert_array_equal(a, b)  # reproducible from the key
    assert not np.allclose(a, c)  # a fresh draw per key
    none = np.asarray(model.render(w, noise="none"))
    zeros = [jnp.zeros((1,) + model.config.noise_shape(i)[1:]) for i in range(model.config.num_noises)]
    np.testing.assert_allclose(none, np.asarray(model.render(w, noise=zeros)), atol=1e-6)
    with pytest.raises(ValueError, match="PRNG key"):
        model.render(w)
    with pytest.raises(ValueError, match="noise 3"):
        model.render(w, noise=zeros[:3] + [jnp.zeros((1, 5, 5, 1))] + zeros[4:])
    with pytest.raises(ValueError, match="noise must be"):
        model.render(w, noise="fresh")


def test_random_noise_differs_per_sample(converted_64):
    model, _ = converted_64
    noise = model.make_noise("random", batch=2, key=jax.random.PRNGKey(0))
    assert not np.allclose(noise[0][0], noise[0][1])


def test_parameter_counts_pinned():
    """The official FFHQ 1024 generator: 171 state_dict entries (SPEC.md section 2); its
    trainable parameters and ours agree, and the tiny config is pinned too."""
    from convert import stylegan2 as conv

    official = stylegan2.GeneratorConfig()
    shapes = conv.torch_shapes(official)
    assert len(shapes) == 171
    assert shapes["convs.15.conv.weight"] == (1, 32, 32, 3, 3)
    assert shapes["to_rgbs.4.conv.modulation.weight"] == (256, 512)
    trainable = sum(int(np.prod(s)) for k, s in shapes.items() if "noises." not in k and "kernel" not in k)
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(stylegan2.abstract_params(official)))
    assert ours == trainable == 30_370_060
    tiny = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(stylegan2.abstract_params(stylegan2.tiny_config())))
    assert tiny == 400_920


def test_channel_table_matches_rosinality():
    for cm in (1, 2, 4):
        c = stylegan2.GeneratorConfig(channel_multiplier=cm)
        table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm,
                 512: 32 * cm, 1024: 16 * cm}
        assert {r: c.channels(r) for r in table} == {r: min(512, v) for r, v in table.items()}


def test_bfloat16_compute_is_close(converted_64):
    model, _ = converted_64
    w = model.mean_w_plus(1) + 0.3 * normal(3, (1, 10, 512))
    bf16 = model.replace(config=model.config.replace(dtype="bfloat16"))
    full, half = model.render(w, noise="const"), bf16.render(w, noise="const")
    assert half.dtype == jnp.float32
    assert 0 < rel_err(half, full) <= 0.05


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        stylegan2.GeneratorConfig(size=48)
    with pytest.raises(ValueError, match="dtype"):
        stylegan2.GeneratorConfig(dtype="float16")
    model = stylegan2.init(stylegan2.tiny_config(size=16), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="block must be"):
        model.features(model.mean_w_plus(), block=3, noise="const")


def test_conv_transpose_matches_torch():
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 4)).astype(np.float32)
    k = np.random.default_rng(1).normal(size=(3, 3, 4, 6)).astype(np.float32)
    ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                               torch.from_numpy(k.transpose(2, 3, 0, 1)), stride=2)
    out = stylegan2_layers.conv_transpose_2x(jnp.asarray(x), jnp.asarray(k))
    assert out.shape == (2, 11, 15, 6)
    assert rel_err(out, nhwc(ref)) <= 1e-5


def test_cpu_paths_of_large_maps_match_torch(tmp_path):
    """256 px, narrow layers: the polyphase transposed convolutions (inputs from 64x64 on CPU)
    and ToRGB's dot with its hand-written gradient (maps from 128x128) run inside the real
    generator; its image and its gradient to W+ against the PyTorch reference and autograd."""
    from convert import stylegan2 as conv

    assert 64 * 64 >= stylegan2_layers.POLYPHASE_MIN_PIXELS and 128 * 128 >= stylegan2_layers.POINTWISE_MIN_PIXELS
    g = T.realistic_init_(T.Generator(256, 32, 2, channel_multiplier=1, channel_max=16), seed=7).eval()
    torch.save(T.checkpoint(g), tmp_path / "g256.pt")
    model, _ = conv.convert(tmp_path / "g256.pt")
    w, noise, noise_j = _inputs(g, batch=1, seed=8)
    target = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(9))
    w_t = w.clone().requires_grad_(True)
    _, img = g(w_t, noise)
    ((img - target) ** 2).mean().backward()

    target_j = jnp.asarray(nhwc(target))
    render = jax.jit(lambda m, w_plus: m.render(w_plus, noise=noise_j))
    assert rel_err(render(model, jnp.asarray(w.numpy())), nhwc(img.detach())) <= TOL
    grad_w = jax.jit(jax.grad(lambda m, w_plus: jnp.mean((m.render(w_plus, noise=noise_j) - target_j) ** 2),
                              argnums=1))
    assert rel_err(grad_w(model, jnp.asarray(w.numpy())), w_t.grad.numpy()) <= 1e-3


def test_polyphase_and_pointwise_forms_equal_the_convolutions():
    """The CPU forms against the convolutions they replace, on odd shapes: values, and the
    gradients to the input and the kernel."""
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(size=(2, 5, 7, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    for ours, ref, args in (
            (lambda x, k: stylegan2_layers._polyphase(x, k, hi),
             lambda x, k: stylegan2_layers._conv_transpose_2x(x, k, hi), (x, k)),
            (lambda x, k: stylegan2_layers._pointwise(x, k, hi),
             lambda x, k: stylegan2_layers._conv(x, k, [(0, 0), (0, 0)], hi), (x, k[:1, :1, :, :3]))):
        out, expected = ours(*args), ref(*args)
        assert out.shape == expected.shape and rel_err(out, expected) <= 1e-6
        cot = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
        for g_ours, g_ref in zip(jax.vjp(ours, *args)[1](cot), jax.vjp(ref, *args)[1](cot)):
            assert g_ours.shape == g_ref.shape and rel_err(g_ours, g_ref) <= 1e-6
