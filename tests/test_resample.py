"""Resampling helpers against PyTorch versions of the same formulas (tests/torch_bisenet.py for
PULSE's bicubic, F.interpolate for nearest and bilinear) and against PIL for LANCZOS."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import torch_bisenet as T
from conftest import nhwc, rel_err
from barbershop_jax.ops import resample


def _image(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("factor,shape", [(1, (2, 3, 16, 12)), (2, (1, 3, 32, 24)), (4, (2, 3, 64, 64)),
                                          (3, (1, 1, 24, 18))])
def test_bicubic_downsample_matches_torch_formula(factor, shape):
    x = _image(shape, seed=factor)
    ref = nhwc(T.bicubic_downsample(x, factor))
    ours = resample.bicubic_downsample(jnp.asarray(nhwc(x)), factor)
    assert ours.shape == ref.shape
    assert rel_err(ours, ref) <= 1e-6


def test_bicubic_factor_one_is_a_half_pixel_shift_not_identity():
    np.testing.assert_allclose(resample.bicubic_taps(1), [-1 / 16, 9 / 16, 9 / 16, -1 / 16], atol=1e-7)
    ramp = jnp.broadcast_to(jnp.arange(8.0)[None, :, None, None], (1, 8, 8, 1))
    out = np.asarray(resample.bicubic_downsample(ramp, 1))[0, :, 0, 0]
    # Away from the reflected border a linear ramp moves by half a pixel.
    np.testing.assert_allclose(out[1:-2], np.arange(8.0)[1:-2] + 0.5, atol=1e-5)


def test_bicubic_taps_sum_to_one_and_are_symmetric():
    for factor in (1, 2, 4, 8):
        taps = resample.bicubic_taps(factor)
        assert taps.shape == (4 * factor,)
        assert abs(float(taps.sum()) - 1.0) < 1e-6
        np.testing.assert_allclose(taps, taps[::-1], atol=1e-7)


def test_bicubic_gradient_matches_torch_autograd():
    x = _image((1, 3, 32, 32), seed=7)
    weights = _image((1, 3, 8, 8), seed=8)
    xt = x.clone().requires_grad_(True)
    (T.bicubic_downsample(xt, 4) * weights).sum().backward()
    grad = jax.grad(lambda a: jnp.sum(resample.bicubic_downsample(a, 4) * jnp.asarray(nhwc(weights))))(
        jnp.asarray(nhwc(x)))
    assert rel_err(grad, nhwc(xt.grad)) <= 1e-6


def test_bicubic_rejects_sizes_not_divisible_by_the_factor():
    with pytest.raises(ValueError, match="not divisible"):
        resample.bicubic_downsample(jnp.zeros((1, 30, 32, 3)), 4)
    with pytest.raises(ValueError, match="positive integer"):
        resample.bicubic_downsample(jnp.zeros((1, 32, 32, 3)), 0)


def test_lanczos_matches_pil_on_uint8():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(array).resize((32, 32), Image.LANCZOS))
    np.testing.assert_array_equal(resample.lanczos_resize(array, 32), expected)
    # A PIL image with alpha is converted to RGB first, as Image.open(p).convert('RGB').
    rgba = Image.fromarray(np.dstack([array, np.full((96, 96), 7, np.uint8)]), mode="RGBA")
    np.testing.assert_array_equal(resample.lanczos_resize(rgba, 32), expected)
    # LANCZOS is not the bicubic downsample of the generated images.
    bicubic = resample.bicubic_downsample(jnp.asarray(array[None], jnp.float32), 3)[0]
    assert np.abs(np.asarray(bicubic) - expected).max() > 1


def test_lanczos_rejects_float_arrays():
    with pytest.raises(ValueError, match="uint8"):
        resample.lanczos_resize(np.zeros((8, 8, 3), np.float32), 4)


def test_uint8_to_signed_is_totensor_then_normalize():
    values = np.array([0, 128, 255], np.uint8)
    expected = ((torch.tensor(values, dtype=torch.float32) / 255.0) - 0.5) / 0.5
    np.testing.assert_array_equal(resample.uint8_to_signed(values), expected.numpy())


@pytest.mark.parametrize("n_in,n_out", [(16, 16), (8, 16), (16, 4), (10, 7), (7, 10), (256, 64)])
def test_nearest_resize_matches_torch(n_in, n_out):
    x = _image((2, 3, n_in, n_in + 2), seed=n_in)
    ref = nhwc(F.interpolate(x, size=(n_out, n_out + 1), mode="nearest"))
    ours = resample.nearest_resize(jnp.asarray(nhwc(x)), (n_out, n_out + 1))
    np.testing.assert_array_equal(np.asarray(ours), ref)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("n_in,n_out", [(8, 64), (64, 512), (16, 12), (5, 9)])
def test_bilinear_resize_matches_torch(n_in, n_out, align_corners):
    x = _image((2, 4, n_in, n_in), seed=n_out)
    ref = nhwc(F.interpolate(x, size=(n_out, n_out), mode="bilinear", align_corners=align_corners))
    ours = resample.bilinear_resize(jnp.asarray(nhwc(x)), n_out, align_corners=align_corners)
    assert rel_err(ours, ref) <= 1e-6
