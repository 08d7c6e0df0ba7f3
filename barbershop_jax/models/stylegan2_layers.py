"""The StyleGAN2 generator's resampling and layers (rosinality's port, as Barbershop uses it),
NHWC: upfirdn2d as separable shifted adds, the 2x transposed convolution, and the layers named
after the paper (EqualDense, ModulatedConv2d with the modulation on the activations, StyledConv,
ToRGB). models/stylegan2.py builds the networks from them (its docstring: why this form)."""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax.models.conv import MIN_INPUT_CHANNELS, conv_general_dilated

# The [1, 3, 3, 1] binomial filter of every StyleGAN2 blur and upsample, normalised to sum 1.
BLUR_TAPS = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0

# Dense layers (mapping, modulation, demodulation) run in full float32, as PyTorch's default
# matmul does; they are cheap. Convolutions follow GeneratorConfig.precision.
HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- resampling
def _upfirdn_1d(x, taps, axis, up, pad):
    """upfirdn along one axis: zero-insert by `up`, pad (pad0, pad1), true convolution with
    `taps` (a flipped correlation), stride 1. Shifted adds, not a depthwise convolution:
    on CPU the grouped convolution is about 13x slower."""
    if up > 1:
        zeros = [jnp.zeros_like(x)] * (up - 1)
        x = jnp.stack([x, *zeros], axis=axis + 1)
        shape = list(x.shape)
        shape[axis:axis + 2] = [shape[axis] * up]
        x = x.reshape(shape)
    widths = [(0, 0)] * x.ndim
    widths[axis] = pad
    x = jnp.pad(x, widths)
    n_out = x.shape[axis] - len(taps) + 1
    flipped = taps[::-1]
    out = 0.0
    for t, tap in enumerate(flipped):
        out = out + float(tap) * jax.lax.slice_in_dim(x, t, t + n_out, axis=axis)
    return out


def upfirdn2d(x, taps, up=1, pad=(0, 0)):
    """rosinality's upfirdn2d for a separable kernel outer(taps, taps), on NHWC arrays."""
    x = _upfirdn_1d(x, taps, axis=1, up=up, pad=pad)
    return _upfirdn_1d(x, taps, axis=2, up=up, pad=pad)


def blur(x, pad):
    """Blur of the up-convolution: kernel outer(k, k) * 4 (the upsample factor squared)."""
    return upfirdn2d(x, BLUR_TAPS * 2.0, up=1, pad=pad)


def upsample_2x(x):
    """ToRGB's skip upsample: upfirdn2d(up=2, kernel * 4, pad (2, 1))."""
    return upfirdn2d(x, BLUR_TAPS * 2.0, up=2, pad=(2, 1))


def _conv(x, kernel, padding, precision, lhs_dilation=(1, 1)):
    return conv_general_dilated(x, kernel, (1, 1), padding, lhs_dilation=lhs_dilation,
                                dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


def _conv_transpose_2x(x, kernel, precision):
    k = kernel.shape[0]
    return _conv(x, kernel[::-1, ::-1], [(k - 1, k - 1)] * 2, precision, lhs_dilation=(2, 2))


# On CPU, transposed convolutions whose input has at least this many pixels run polyphase.
POLYPHASE_MIN_PIXELS = 64 * 64


def conv_transpose_2x(x, kernel, precision=None):
    """PyTorch's conv_transpose2d(stride=2, padding=0): (H, W) -> (2H+1, 2W+1), HWIO kernel.

    Written as a stride-1 convolution of the zero-inserted input with the flipped kernel,
    which XLA hands to cuDNN as a transposed convolution; the polyphase form is slower on a GPU,
    so every platform but the CPU keeps this one.

    On CPU, XLA runs the zero-inserted form and its gradient to x (a stride-2 convolution) far
    below its stride-1 speed, so inputs of at least POLYPHASE_MIN_PIXELS pixels run polyphase
    (`_polyphase`), and smaller inputs with at least conv.MIN_INPUT_CHANNELS output channels
    take the gradient to x as patches + one matmul. The rest (the tests' tiny models) run the
    very program XLA derives, so their bits stay. The kernel's gradient is XLA's own throughout.
    Timings: benchmarks/README.md, "Generator on CPU".
    """
    if x.shape[1] * x.shape[2] >= POLYPHASE_MIN_PIXELS:
        return jax.lax.platform_dependent(x, kernel, cpu=functools.partial(_polyphase, precision=precision),
                                          default=functools.partial(_conv_transpose_2x, precision=precision))
    if kernel.shape[3] < MIN_INPUT_CHANNELS:
        return _conv_transpose_2x(x, kernel, precision)
    return _conv_transpose_2x_patched_grad(x, kernel, precision)


def _polyphase(x, kernel, precision=None):
    """conv_transpose_2x as four stride-1 convolutions of x, one per output phase: output row
    2r takes taps 0 and 2 of the kernel (rows r and r - 1 of x), row 2r + 1 tap 1 (row r); the
    same in columns. No multiplication by an inserted zero, and the gradients are stride-1
    convolutions too. The phases are interleaved by one stack and reshape."""
    b, h, w, _ = x.shape
    phases = {}
    for a in (0, 1):
        for c in (0, 1):
            taps = kernel[a::2, c::2][::-1, ::-1]  # (2 or 1, 2 or 1, in, out), as a correlation
            y = conv_general_dilated(x, taps, (1, 1), [(1 - a, 1 - a), (1 - c, 1 - c)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
            phases[a, c] = jnp.pad(y, [(0, 0), (0, a), (0, c), (0, 0)])  # odd phases: one row/column short
    rows = [jnp.stack([phases[a, 0], phases[a, 1]], axis=3) for a in (0, 1)]  # (B, H+1, W+1, 2, out)
    out = jnp.stack(rows, axis=2).reshape(b, 2 * h + 2, 2 * w + 2, kernel.shape[3])
    return out[:, :2 * h + 1, :2 * w + 1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_transpose_2x_patched_grad(x, kernel, precision):
    return _conv_transpose_2x(x, kernel, precision)


def _conv_transpose_2x_fwd(x, kernel, precision):
    return _conv_transpose_2x(x, kernel, precision), (x, kernel)


def _conv_transpose_2x_bwd(precision, residuals, g):
    x, kernel = residuals
    _, vjp = jax.vjp(lambda x, k: _conv_transpose_2x(x, k, precision), x, kernel)
    d_kernel = vjp(g)[1]  # its d_x, and this too when unused, is dropped by XLA
    d_x = conv_general_dilated(g, jnp.swapaxes(kernel, 2, 3), (2, 2), [(0, 0), (0, 0)],
                               dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision,
                               patches_at_any_size=True)
    return d_x.astype(x.dtype), d_kernel


_conv_transpose_2x_patched_grad.defvjp(_conv_transpose_2x_fwd, _conv_transpose_2x_bwd)


# On CPU, ToRGB's 1x1 convolution of maps of at least this many pixels runs as a dot (below).
POINTWISE_MIN_PIXELS = 128 * 128


def to_rgb_conv(x, kernel, precision=None):
    """ToRGB's 1x1 convolution to 3 channels (HWIO kernel (1, 1, in, 3)).

    XLA:CPU runs a convolution with 3 output channels far below its speed; a dot over the
    channels gives the same numbers much faster, and three broadcast multiply-adds beat XLA's
    transpose of that dot for the gradient to x. So on CPU, from POINTWISE_MIN_PIXELS pixels,
    that form (a custom VJP); smaller maps (the tests' 64 px models) and other platforms keep
    the convolution. Timings: benchmarks/README.md, "Generator on CPU"."""
    plain = functools.partial(_conv, padding=[(0, 0), (0, 0)], precision=precision)
    if x.shape[1] * x.shape[2] < POINTWISE_MIN_PIXELS:
        return plain(x, kernel)
    return jax.lax.platform_dependent(x, kernel, cpu=functools.partial(_pointwise, precision=precision),
                                      default=plain)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise(x, kernel, precision):
    return jax.lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())), precision=precision)


def _pointwise_fwd(x, kernel, precision):
    return _pointwise(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, residuals, g):
    x, kernel = residuals
    w = kernel[0, 0].astype(g.dtype)  # (in, out)
    d_x = g[..., 0:1] * w[:, 0]
    for o in range(1, w.shape[1]):
        d_x = d_x + g[..., o:o + 1] * w[:, o]
    d_kernel = jax.lax.dot_general(x, g, (((0, 1, 2), (0, 1, 2)), ((), ())), precision=precision)
    return d_x.astype(x.dtype), d_kernel[None, None].astype(kernel.dtype)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


# Kernels with at least this many input channels sum their squared taps with adds (below).
SUM_TAPS_MIN_CHANNELS = 128


def _sum_of_squared_taps(kernel):
    """sum over (kh, kw) of kernel ** 2: (in, out), the demodulation's weight norms.

    XLA:CPU hands the reduction to YNNPACK, which is slow at it for the generator's large
    kernels; explicit adds make one loop fusion instead (which rounds differently: XLA contracts
    each square and add into one FMA). Small kernels cost little either way, so they (the tests'
    models) keep the reduction and its bits. Timings: benchmarks/README.md, "Generator on CPU"."""
    if kernel.shape[2] < SUM_TAPS_MIN_CHANNELS:
        return jnp.sum(jnp.square(kernel), axis=(0, 1))
    squares = jnp.square(kernel)
    total = squares[0, 0]
    for t in range(1, kernel.shape[0] * kernel.shape[1]):
        total = total + squares[t // kernel.shape[1], t % kernel.shape[1]]
    return total


def fused_leaky_relu(x, bias, negative_slope=0.2, gain=math.sqrt(2.0)):
    return jax.nn.leaky_relu(x + bias, negative_slope) * gain


# ----------------------------------------------------------------------------- layers
class PixelNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-8)


class EqualDense(nn.Module):
    """EqualLinear: y = x @ (kernel * lr_mul / sqrt(in)) + bias * lr_mul.

    The stored kernel is (in, out), the transpose of the PyTorch weight; the equalised
    learning-rate scale is applied here, so stored values equal the official ones."""
    features: int
    lr_mul: float = 1.0
    bias_init: float = 0.0
    activation: bool = False

    @nn.compact
    def __call__(self, x):
        n_in = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.normal(1.0 / self.lr_mul), (n_in, self.features))
        bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
        y = jnp.matmul(x, kernel * (self.lr_mul / math.sqrt(n_in)), precision=HIGHEST)
        if self.activation:
            return fused_leaky_relu(y, bias * self.lr_mul)
        return y + bias * self.lr_mul


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution, applied to the activations (see the module docstring).

    upsample: a transposed convolution with stride 2 and no padding (2H+1 outputs) followed
    by the blur with pad (1, 1), exactly as the official layer."""
    features: int
    kernel_size: int
    demodulate: bool = True
    upsample: bool = False
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, w):
        n_in = x.shape[-1]
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, n_in, self.features))
        style = EqualDense(n_in, bias_init=1.0, name="modulation")(w)  # (B, in)
        scale = 1.0 / math.sqrt(n_in * k * k)

        x = x * (style * scale)[:, None, None, :].astype(x.dtype)
        x = x.astype(self.dtype)
        kern = kernel.astype(self.dtype)
        if self.upsample:
            out = conv_transpose_2x(x, kern, self.precision)
        elif k == 1 and self.features == 3:
            out = to_rgb_conv(x, kern, self.precision)
        else:
            out = _conv(x, kern, [(k // 2, k // 2)] * 2, self.precision)
        out = out.astype(jnp.float32)
        if self.demodulate:
            kernel_sq = _sum_of_squared_taps(kernel)  # (in, out)
            demod = jax.lax.rsqrt(jnp.matmul(style * style, kernel_sq, precision=HIGHEST) * scale ** 2 + 1e-8)
            out = out * demod[:, None, None, :]
        if self.upsample:
            out = blur(out, pad=(1, 1))
        return out


class StyledConv(nn.Module):
    """Modulated conv -> noise injection -> bias + leaky ReLU (the official order)."""
    features: int
    upsample: bool = False
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, w, noise):
        x = ModulatedConv2d(self.features, 3, upsample=self.upsample, dtype=self.dtype,
                            precision=self.precision, name="conv")(x, w)
        strength = self.param("noise_strength", nn.initializers.zeros, ())
        if noise is not None:
            x = x + strength * noise
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return fused_leaky_relu(x, bias)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) + bias, plus the upsampled skip."""
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, w, skip=None):
        out = ModulatedConv2d(3, 1, demodulate=False, dtype=self.dtype,
                              precision=self.precision, name="conv")(x, w)
        out = out + self.param("bias", nn.initializers.zeros, (3,))
        if skip is not None:
            out = out + upsample_2x(skip)
        return out
