"""LPIPS v0.1 with the VGG16 trunk, exactly as the `lpips` package computes it, plus the
masked LPIPS of Barbershop's blending stage. NHWC, images in [-1, 1].

For images x0, x1 and each VGG16 tap l (relu1_2 .. relu5_3) with features f^l (C_l channels):

    scaled(x)  = (x - shift) / scale,    shift = (-.030, -.088, -.188), scale = (.458, .448, .450)
    u^l(x)     = f^l(scaled(x)) / (sqrt(sum_c f^l(scaled(x))_c^2) + 1e-10)       (per pixel)
    map^l      = sum_c w^l_c (u^l(x0)_c - u^l(x1)_c)^2                        (a 1x1 conv, no bias)
    lpips      = sum_l mean_{h,w} map^l

The masked LPIPS (Barbershop losses/masked_lpips, used by Blending with vgg_blocks 1..3) keeps
map^l at its native resolution and averages it over a mask instead:

    m^1 = nearest(mask, size of tap 1),  m^l = nearest(m^{l-1}, size of tap l)   (level by level)
    masked_lpips = sum_{l in 1..3} sum_{h,w} map^l m^l / sum_{h,w} m^l

Departures from the official code, both documented where they happen:
- The mask sum is per sample. The official divides by the mask summed over the whole batch,
  which only differs for batch > 1 (the official pipeline runs batch 1).
- `guard_empty=True` (the default) returns 0 for a tap whose mask is empty, where the official
  0 / 0 is NaN and poisons the blending optimiser (SPEC.md section 7). `guard_empty=False`
  reproduces the official NaN.

The module is ours rather than lpips-j: lpips-j downloads its weights inside `setup()` on every
bind and takes no local weights; here the weights come from a converted directory (`vgg16.load`).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from barbershop_jax.ops import resample
from barbershop_jax.models.vgg16 import TAPS, VGG16

SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)   # lpips ScalingLayer.shift
SCALE = np.array([0.458, 0.448, 0.450], np.float32)      # lpips ScalingLayer.scale
NORM_EPS = 1e-10                                          # lpips normalize_tensor eps
MASKED_TAPS = ("relu1_2", "relu2_2", "relu3_3")           # Blending: vgg_blocks ['1', '2', '3']


def scale_input(x):
    """lpips ScalingLayer: (x - shift) / scale, for x in [-1, 1]."""
    return (x - SHIFT) / SCALE


def unit_normalize(features, eps: float = NORM_EPS):
    """f / (||f||_2 over channels + eps), per pixel (lpips normalize_tensor)."""
    return features / (jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True)) + eps)


def _taps_through(taps) -> tuple:
    """All taps from relu1_2 down to the deepest one in `taps` (the mask chain needs them)."""
    deepest = max(TAPS.index(t) for t in taps)
    return TAPS[:deepest + 1]


def unit_features(vgg: VGG16, x, taps=TAPS) -> dict:
    """{tap: u(x)}: the channel-normalised VGG features LPIPS compares. For a fixed target
    (the embedding's reference image) compute them once and use `lpips_to_features`."""
    features = vgg.features(scale_input(x), tuple(taps))
    return {tap: unit_normalize(features[tap]) for tap in taps}


def lpips_to_features(vgg: VGG16, x, target_units: dict):
    """LPIPS between images x (B, H, W, 3) and a target given by its `unit_features`: the same
    numbers as `lpips(vgg, x, target)` without running VGG on the target again."""
    units = unit_features(vgg, x, tuple(target_units))
    return sum(jnp.mean(jnp.sum(jnp.square(units[t] - target_units[t]) * vgg.lpips_lin[t], axis=-1), axis=(1, 2))
               for t in target_units)


def lpips_maps(vgg: VGG16, x0, x1, taps=TAPS) -> dict:
    """Per-tap LPIPS maps at each tap's native resolution.

    Args:
      vgg: converted VGG16 with its LPIPS linear weights.
      x0, x1: (B, H, W, 3) images in [-1, 1].
      taps: which taps to return.
    Returns:
      {tap: (B, h, w)}: sum_c w_c (u(x0) - u(x1))^2 (the lpips lin layer output before the mean).
    """
    if x0.shape != x1.shape:
        raise ValueError(f"image shapes differ: {x0.shape} vs {x1.shape}")
    batch = x0.shape[0]
    # One VGG pass over both images (the package runs two; same numbers).
    features = vgg.features(scale_input(jnp.concatenate([x0, x1], axis=0)), tuple(taps))
    maps = {}
    for tap in taps:
        u = unit_normalize(features[tap])
        diff = jnp.square(u[:batch] - u[batch:])
        maps[tap] = jnp.sum(diff * vgg.lpips_lin[tap], axis=-1)
    return maps


def lpips(vgg: VGG16, x0, x1):
    """LPIPS v0.1 distance, one value per sample: (B,). The package returns it as
    (B, 1, 1, 1); Barbershop's embedding loss sums it over the batch."""
    maps = lpips_maps(vgg, x0, x1)
    return sum(jnp.mean(m, axis=(1, 2)) for m in maps.values())


def lpips_spatial(vgg: VGG16, x0, x1):
    """The package's `spatial=True` output, (B, H, W): every tap map upsampled to the input
    size (bilinear, align_corners=False) and summed; its spatial mean is close to, but not
    equal to, `lpips`."""
    size = x0.shape[1:3]
    maps = lpips_maps(vgg, x0, x1)
    return sum(resample.bilinear_resize(m[..., None], size, align_corners=False)[..., 0]
               for m in maps.values())


def mask_pyramid(mask, sizes) -> list:
    """The official mask chain: nearest-resize to sizes[0], then each level from the previous.

    Args:
      mask: (B, H, W) or (B, H, W, 1), values in [0, 1].
      sizes: [(h, w), ...] of the taps in order relu1_2, relu2_2, ...
    """
    if mask.ndim == 4:
        mask = mask[..., 0]
    levels = []
    for size in sizes:
        mask = resample.nearest_resize(mask, size)
        levels.append(mask)
    return levels


def masked_lpips(vgg: VGG16, x0, x1, mask, taps=MASKED_TAPS, guard_empty: bool = True):
    """Barbershop's masked LPIPS: per tap, sum(map * mask) / sum(mask), summed over `taps`.

    Args:
      vgg: converted VGG16 with its LPIPS linear weights.
      x0, x1: (B, H, W, 3) images in [-1, 1] (Blending: 256 px).
      mask: (B or 1, H', W') or (B or 1, H', W', 1), any resolution (Blending: 256 px), values
        in [0, 1]; resized nearest, level by level, to each tap's resolution.
      taps: the taps summed (official: relu1_2, relu2_2, relu3_3).
      guard_empty: True returns 0 for a tap whose mask is empty; False keeps the official
        0 / 0 = NaN.
    Returns:
      (B,). The denominator is per sample (official: the whole batch's mask sum; equal at
      batch 1, the official batch size).
    """
    chain = _taps_through(taps)
    maps = lpips_maps(vgg, x0, x1, chain)
    mask = jnp.broadcast_to(mask, (x0.shape[0],) + mask.shape[1:]).astype(x0.dtype)
    levels = mask_pyramid(mask, [maps[t].shape[1:3] for t in chain])
    total = 0.0
    for tap, level in zip(chain, levels):
        if tap not in taps:
            continue
        weighted = jnp.sum(maps[tap] * level, axis=(1, 2))
        mass = jnp.sum(level, axis=(1, 2))
        if guard_empty:
            nonempty = mass > 0
            total = total + jnp.where(nonempty, weighted / jnp.where(nonempty, mass, 1.0), 0.0)
        else:
            total = total + weighted / mass
    return total
