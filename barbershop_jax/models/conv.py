"""The 2-D convolution every model runs: `lax.conv_general_dilated`, except for small outputs
on CPU, where the same numbers come from patches and one matrix product.

Why: XLA's CPU convolution has a fixed cost that dominates small feature maps, and a cliff at
2x2 (a 3x3 512->512 convolution at 2x2 takes over 30x as long as patches + one matmul). From
32x32 outputs the matmul loses, so the patch path stops at 16x16. With fewer channels the cliff
fades: below 128 input channels the patch path gains nothing worth its larger program (the
tests' tiny models compile about 35% longer with it). Timings: benchmarks/README.md.

Such maps are the VGG16 loss network's last blocks (16x16 at the official LPIPS size of 256,
2x2 at a 64 px generator's 32), the face parser's context path and the generator's first
blocks. No XLA flag (XNNPACK, oneDNN) removed the cliff. On other platforms `lax.platform_dependent`
keeps the plain convolution (cuDNN has no such cliff), and only the matching branch is lowered.
The patch path reads the input through `lax.pad` (padding and zero insertion for transposed
convolutions in one op) and strided slices, so it covers every convolution the models run.
The path is chosen from the shapes alone (and the platform, when the program is lowered).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# The CPU path uses patches + matmul for outputs of at most this many pixels (H * W) from
# at least this many input channels (see the tables above).
SMALL_OUTPUT_PIXELS = 16 * 16
MIN_INPUT_CHANNELS = 128
_NHWC = jax.lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _patch_conv(x, kernel, strides, padding, lhs_dilation, precision):
    """NHWC x HWIO convolution as one matmul of the (kh * kw * C)-channel patches."""
    kh, kw, c, o = kernel.shape
    (sh, sw), (dh, dw) = strides, lhs_dilation
    x = jax.lax.pad(x, jnp.zeros((), x.dtype),
                    [(0, 0, 0), (*padding[0], dh - 1), (*padding[1], dw - 1), (0, 0, 0)])
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    patches = jnp.concatenate(
        [jax.lax.slice(x, (0, i, j, 0), (x.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
         for i in range(kh) for j in range(kw)], axis=-1)
    return jax.lax.dot_general(patches, kernel.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())),
                               precision=precision)


def _output_pixels(x_shape, k_shape, strides, padding, lhs_dilation) -> int:
    pixels = 1
    for axis in range(2):
        n = (x_shape[1 + axis] - 1) * lhs_dilation[axis] + 1 + sum(padding[axis])
        pixels *= max(0, (n - k_shape[axis]) // strides[axis] + 1)
    return pixels


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, patches_at_any_size=False):
    """`jax.lax.conv_general_dilated`'s signature and numbers (float rounding aside); small
    NHWC/HWIO outputs take the patch path on CPU. Usable as flax `nn.Conv(conv_general_dilated=)`.

    patches_at_any_size: the patch path on CPU whatever the output's size, from MIN_INPUT_CHANNELS
    input channels (the generator's stride-2 input gradients, models/stylegan2_layers.conv_transpose_2x)."""
    plain = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                              lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                              dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                              batch_group_count=batch_group_count, precision=precision,
                              preferred_element_type=preferred_element_type)
    lhs_dilation = tuple(lhs_dilation or (1, 1))
    patchable = (lhs.ndim == 4 and not isinstance(padding, str)
                 and feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None
                 and all(d == 1 for d in (rhs_dilation or (1, 1)))
                 and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)
    small = patches_at_any_size or _output_pixels(lhs.shape, rhs.shape, window_strides, padding,
                                                  lhs_dilation) <= SMALL_OUTPUT_PIXELS
    if not patchable or rhs.shape[0] * rhs.shape[1] == 1 or rhs.shape[2] < MIN_INPUT_CHANNELS or not small:
        return plain(lhs, rhs)
    patch = functools.partial(_patch_conv, strides=tuple(window_strides), padding=tuple(map(tuple, padding)),
                              lhs_dilation=lhs_dilation, precision=precision)
    return jax.lax.platform_dependent(lhs, rhs, cpu=patch, default=plain)
