"""Image and mask resampling exactly as the official Barbershop pipeline does it, NHWC.

- `bicubic_downsample`: PULSE's BicubicDownSample (Barbershop utils/bicubic.py), used on every
  generated image before the parser (1024 -> 512) and before LPIPS / style (1024 -> 256).
- `lanczos_resize`: PIL's LANCZOS on uint8, how the official data loader makes `ref_im_L`.
- `nearest_resize`, `bilinear_resize`: PyTorch's F.interpolate 'nearest' and 'bilinear'
  (align_corners True or False) index arithmetic, for masks, parser logits and LPIPS maps.

Every function works on (B, H, W, C) float arrays (masks may be (B, H, W)), is jit- and
grad-friendly, and builds its gather indices and weights with numpy at trace time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

BICUBIC_A = -0.5  # PULSE's Keys kernel parameter (Catmull-Rom)


# ----------------------------------------------------------------------------- bicubic
def cubic_kernel(x: np.ndarray, a: float = BICUBIC_A) -> np.ndarray:
    """Keys' cubic convolution kernel:

        k(x) = (a + 2)|x|^3 - (a + 3)|x|^2 + 1          for |x| <= 1
        k(x) = a|x|^3 - 5a|x|^2 + 8a|x| - 4a            for 1 < |x| < 2
        k(x) = 0                                        otherwise
    """
    x = np.abs(np.asarray(x, np.float32))
    near = (a + 2.0) * x ** 3 - (a + 3.0) * x ** 2 + 1.0
    far = a * x ** 3 - 5.0 * a * x ** 2 + 8.0 * a * x - 4.0 * a
    return np.where(x <= 1.0, near, np.where(x < 2.0, far, 0.0)).astype(np.float32)


def bicubic_taps(factor: int, a: float = BICUBIC_A) -> np.ndarray:
    """The 4 * factor taps of BicubicDownSample: k((i - floor(2 factor) + 0.5) / factor),
    i = 0 .. 4 factor - 1, normalised to sum 1 (float32, as the official buffers).

    At factor 1 they are [-1/16, 9/16, 9/16, -1/16]: a half-pixel shift and a slight
    sharpening, not the identity."""
    size = 4 * factor
    positions = (np.arange(size, dtype=np.float32) - np.float32(size // 2) + np.float32(0.5)) / np.float32(factor)
    taps = cubic_kernel(positions, a)
    return (taps / taps.sum(dtype=np.float32)).astype(np.float32)


def _downsample_axis(x, taps: np.ndarray, factor: int, axis: int):
    """Reflect-pad along `axis`, correlate with `taps`, keep every `factor`-th output.

    The official code runs a grouped conv2d with stride `factor`; here the same sum is
    written as len(taps) strided slices, multiplied and added in float32 (no grouped
    convolution, which is slow on CPU, and no matmul that a GPU might run in TF32).
    """
    n_out = x.shape[axis] // factor
    pad_total = 3 * factor  # filter size 4 f minus the stride f
    pad_before = pad_total // 2
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad_before, pad_total - pad_before)
    x = jnp.pad(x, widths, mode="reflect")
    span = factor * (n_out - 1) + 1
    out = 0.0
    for t, tap in enumerate(taps):
        out = out + float(tap) * jax.lax.slice_in_dim(x, t, t + span, stride=factor, axis=axis)
    return out


def bicubic_downsample(x, factor: int):
    """PULSE / Barbershop BicubicDownSample(factor) on NHWC images.

    Separable: reflect padding (3 factor samples, floor half before), the 4 * factor
    `bicubic_taps`, stride `factor`; height first, then width, as the official code.

    Args:
      x: (B, H, W, C) float array; H and W divisible by `factor` and larger than 3 * factor / 2
        (reflect padding needs it).
      factor: integer downsampling factor >= 1 (1024 -> 512 is 2, 1024 -> 256 is 4).
    Returns:
      (B, H / factor, W / factor, C).
    """
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    _, h, w, _ = x.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by the factor {factor}")
    taps = bicubic_taps(int(factor))
    x = _downsample_axis(x, taps, int(factor), axis=1)
    return _downsample_axis(x, taps, int(factor), axis=2)


# ----------------------------------------------------------------------------- PIL LANCZOS
def lanczos_resize(image, size: int) -> np.ndarray:
    """PIL LANCZOS resize to size x size on uint8, as the official `ref_im_L`.

    Args:
      image: a PIL image (converted to RGB first, as `Image.open(p).convert('RGB')`) or a
        uint8 array (H, W, 3).
    Returns:
      uint8 array (size, size, 3). Map to [-1, 1] with `uint8_to_signed`.
    """
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"expected a PIL image or a uint8 (H, W, 3) array, got {array.dtype} {array.shape}")
        pil = Image.fromarray(array, mode="RGB")
    return np.asarray(pil.resize((size, size), Image.LANCZOS))


def uint8_to_signed(image_uint8) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]: ToTensor then Normalize(0.5, 0.5), the official mapping."""
    return ((np.asarray(image_uint8, np.float32) / np.float32(255.0)) - np.float32(0.5)) / np.float32(0.5)


# ----------------------------------------------------------------------------- PyTorch interpolate
def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """PyTorch's legacy 'nearest' source index: min(floor(dst * (in / out)), in - 1), in float32."""
    if n_out == n_in:
        return np.arange(n_out)
    if n_out == 2 * n_in:
        return np.arange(n_out) >> 1
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def nearest_resize(x, size):
    """F.interpolate(x, size, mode='nearest') on (B, H, W[, C]) arrays.

    Masks are resized with it everywhere in the official code; for power-of-two ratios it is
    plain subsampling (every k-th row and column, starting at 0)."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    x = jnp.take(x, _nearest_indices(x.shape[1], out_h), axis=1)
    return jnp.take(x, _nearest_indices(x.shape[2], out_w), axis=2)


def _linear_weights(n_in: int, n_out: int, align_corners: bool):
    """Source rows and weights of PyTorch's bilinear upsample along one axis (float32):
    align_corners: src = dst * (in - 1) / (out - 1); else src = max((dst + 0.5) * in / out - 0.5, 0).
    Returns (i0, i1, w1): out = (1 - w1) * x[i0] + w1 * x[i1]."""
    dst = np.arange(n_out, dtype=np.float32)
    if align_corners:
        scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0.0)
        src = dst * scale
    else:
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, w1


def _lerp_axis(x, n_out, axis, align_corners):
    i0, i1, w1 = _linear_weights(x.shape[axis], n_out, align_corners)
    shape = [1] * x.ndim
    shape[axis] = n_out
    w1 = jnp.asarray(w1.reshape(shape), x.dtype)
    return jnp.take(x, i0, axis=axis) * (1.0 - w1) + jnp.take(x, i1, axis=axis) * w1


def bilinear_resize(x, size, align_corners: bool):
    """F.interpolate(x, size, mode='bilinear', align_corners=...) on (B, H, W, C) arrays.

    BiSeNet upsamples its logits with align_corners=True; the lpips package's spatial maps,
    with align_corners=False. Separable: rows, then columns (equal to PyTorch's 2-D blend
    up to float rounding)."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    x = _lerp_axis(x, out_h, 1, align_corners)
    return _lerp_axis(x, out_w, 2, align_corners)
