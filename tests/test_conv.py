"""The models' convolution: patches + matmul for small outputs on CPU, the same numbers as XLA's
convolution, and the plain convolution everywhere else."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from barbershop_jax.models import conv
from conftest import normal

NHWC = ("NHWC", "HWIO", "NHWC")
# (input, kernel, strides, padding, lhs_dilation): every form the models run, and a few more.
CASES = [
    ((2, 4, 4, 8), (3, 3, 8, 5), (1, 1), ((1, 1), (1, 1)), (1, 1)),      # VGG / generator 3x3
    ((1, 5, 5, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1)), (1, 1)),      # ResNet stride 2
    ((2, 4, 4, 6), (3, 3, 6, 7), (1, 1), ((2, 2), (2, 2)), (2, 2)),      # generator's transposed conv
    ((1, 7, 6, 2), (7, 7, 2, 3), (2, 2), ((3, 3), (3, 3)), (1, 1)),      # ResNet stem, odd sizes
    ((1, 6, 6, 2), (3, 3, 2, 3), (1, 1), ((-1, 0), (0, 1)), (1, 1)),     # negative, uneven padding
]


def _lax(x, k, strides, padding, dilation):
    return jax.lax.conv_general_dilated(x, k, strides, padding, lhs_dilation=dilation, dimension_numbers=NHWC,
                                        precision="highest")


def _ours(x, k, strides, padding, dilation):
    return conv.conv_general_dilated(x, k, strides, padding, lhs_dilation=dilation, dimension_numbers=NHWC,
                                     precision="highest")


@pytest.mark.parametrize("case", CASES)
def test_patch_path_matches_xla_convolution(case, monkeypatch):
    monkeypatch.setattr(conv, "MIN_INPUT_CHANNELS", 1)  # small arrays, the patch path all the same
    x_shape, k_shape, *args = case
    x = normal(0, x_shape)
    k = normal(1, k_shape)
    # Jitted, as the models run it (and one program each: eagerly, some 100 small ones per case).
    ours = jax.jit(_ours, static_argnums=(2, 3, 4))
    assert "convolution" not in ours.lower(x, k, *args).as_text()
    np.testing.assert_allclose(ours(x, k, *args), _lax(x, k, *args), rtol=1e-5, atol=1e-5)
    # Gradients to both operands (the latents' gradient flows through the input).
    grad = lambda f: jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k, *args))), (0, 1)))  # noqa: E731
    for ours, ref in zip(grad(_ours)(x, k), grad(_lax)(x, k)):
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_plain_convolution_where_the_patch_path_does_not_pay():
    args = ((1, 1), ((1, 1), (1, 1)), (1, 1))
    c = conv.MIN_INPUT_CHANNELS
    small = jnp.ones((1, 4, 4, c)), jnp.ones((3, 3, c, 8))
    large = jnp.ones((1, 17, 16, c)), jnp.ones((3, 3, c, 8))      # 272 output pixels
    one_by_one = jnp.ones((1, 4, 4, c)), jnp.ones((1, 1, c, 8))
    narrow = jnp.ones((1, 4, 4, c // 2)), jnp.ones((3, 3, c // 2, 8))
    ours = jax.jit(_ours, static_argnums=(2, 3, 4))
    assert "convolution" not in ours.lower(*small, *args).as_text()
    assert "convolution" in ours.lower(*large, *args).as_text()
    assert "convolution" in ours.lower(*narrow, *args).as_text()
    assert "convolution" in ours.lower(*one_by_one, (1, 1), ((0, 0), (0, 0)), (1, 1)).as_text()
    # On a GPU the small one stays a convolution too (only the CPU branch is the matmul).
    gpu = ours.trace(*small, *args).lower(lowering_platforms=("cuda",)).as_text()
    assert "convolution" in gpu and "dot_general" not in gpu
    # vmapped, as the stages run it.
    x = normal(0, (3, 4, 4, c))
    batched = jax.vmap(lambda x: _ours(x[None], small[1], *args)[0])
    np.testing.assert_allclose(batched(x), _lax(x, small[1], *args), rtol=1e-5, atol=1e-4)
