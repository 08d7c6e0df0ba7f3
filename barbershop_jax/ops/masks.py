"""Mask operations the transfer stages share: binary dilation and erosion, PyTorch's bicubic
resize (for the F-mixing weights), and region masks from label maps. Pure jnp, jit- and
vmap-friendly; masks are float arrays of 0s and 1s, (..., H, W).

Official equivalents (Barbershop utils/image_utils.py, models/Alignment.py):
- `dilate` / `erode`: scipy.ndimage.binary_dilation / binary_erosion with the default cross
  (4-connected) structuring element, `iterations` times, border value 0 (so erosion eats in
  from the image border, and dilation never grows in from it).
- `torch_bicubic_resize`: F.interpolate(mode='bicubic', align_corners=False) without
  antialiasing: Keys' kernel with a = -0.75, edge indices clamped. Downsampling 256 -> 32 it
  samples 4 of every 8 rows, and the weights may leave [0, 1] (the official leaves them so).
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

TORCH_BICUBIC_A = -0.75  # PyTorch's upsample_bicubic2d constant


def _neighbour_reduce(mask, reduce):
    """reduce(centre, its 4 neighbours) with 0 beyond the border, over the last two axes."""
    pad = [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)]
    p = jnp.pad(mask, pad)
    h, w = mask.shape[-2:]
    out = mask
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        out = reduce(out, p[..., dy:dy + h, dx:dx + w])
    return out


def dilate(mask, iterations: int):
    """Binary dilation by a 3x3 cross, `iterations` times (scipy.ndimage.binary_dilation)."""
    for _ in range(iterations):
        mask = _neighbour_reduce(mask, jnp.maximum)
    return mask


def erode(mask, iterations: int):
    """Binary erosion by a 3x3 cross, `iterations` times, border value 0
    (scipy.ndimage.binary_erosion)."""
    for _ in range(iterations):
        mask = _neighbour_reduce(mask, jnp.minimum)
    return mask


@functools.lru_cache(maxsize=None)
def torch_bicubic_matrix(n_in: int, n_out: int, a: float = TORCH_BICUBIC_A) -> np.ndarray:
    """(n_out, n_in) float32 matrix of F.interpolate(mode='bicubic', align_corners=False) along
    one axis: src = (dst + 0.5) * in / out - 0.5, taps floor(src) - 1 .. + 2 clamped to the edge."""
    def cubic(x):
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    scale = n_in / n_out
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        t = src - base
        for k in range(-1, 3):
            m[i, min(max(base + k, 0), n_in - 1)] += cubic(k - t)
    return m.astype(np.float32)


def torch_bicubic_resize(x, size: int):
    """F.interpolate(x, (size, size), mode='bicubic', align_corners=False) on (..., H, W)."""
    rows = jnp.asarray(torch_bicubic_matrix(x.shape[-2], size))
    cols = jnp.asarray(torch_bicubic_matrix(x.shape[-1], size))
    return jnp.einsum("ih,...hw,jw->...ij", rows, x, cols, precision="highest")


def region(labels, ids) -> jnp.ndarray:
    """1.0 where `labels` is one of `ids` (class ids), else 0.0."""
    return jnp.isin(labels, jnp.asarray(ids)).astype(jnp.float32)


def class_mask(ids, n_classes: int) -> np.ndarray:
    """(n_classes,) float32, 1.0 at the class ids of a region: the region as data, so that
    the compiled stages take it as an argument and one program serves every region."""
    mask = np.zeros(n_classes, np.float32)
    mask[list(ids)] = 1.0
    return mask


def region_of(labels, classes) -> jnp.ndarray:
    """1.0 where `labels` is a class of the region given as a class_mask, else 0.0 (the same
    values as `region`)."""
    return jnp.asarray(classes)[labels]
