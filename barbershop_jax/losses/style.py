"""The Gram-matrix style loss of Barbershop's alignment stage (losses/style, align step 2). NHWC.

For the reference image x (the hair of the first aligned render) with mask m, the current
image x_hat with mask m_hat, and the VGG16 taps l in relu1_2, relu2_2, relu3_3, relu4_3:

    a^l     = VGG16^l(resize_256(x * m))          (no ImageNet normalisation, inputs in [-1, 1])
    a_hat^l = VGG16^l(resize_256(x_hat * m_hat))
    g^l     = Gram(a^l * nearest(m, h_l)),  g_hat^l = Gram(a_hat^l * nearest(m_hat, h_l))
    Gram(f) = f^T f / (C H W)                     (f as an (H W, C) matrix per sample)
    loss    = (1 / 4) sum_l mean_{i,j} (g^l - g_hat^l)_{ij}^2

The reference side carries no gradient (the official code computes it under no_grad). The
official weight is style_lambda = 4e4, applied by the alignment stage, not here.

Departures from the official code:
- The Gram matrix is per sample. The official one flattens the batch into the rows
  (an (N C) x (N C) matrix divided by N C H W), which mixes samples when N > 1; the
  official pipeline runs batch 1, where both agree.
- The images are multiplied by their masks once. The official alignment multiplies twice
  (`downsample_256(I) * HM` in Alignment, then `im1 * mask1` in AlignLossBuilder); its
  masks are binary (argmax hair == 10), for which m * m == m.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from barbershop_jax.ops import resample
from barbershop_jax.models.vgg16 import VGG16

STYLE_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")  # VGG16_ACTIVATIONS_LIST [3, 8, 15, 22]
STYLE_SIZE = 256  # StyleLoss resizes its inputs to 256 px (bilinear, align_corners=True)


def gram_matrix(features):
    """(B, H, W, C) -> (B, C, C): f^T f / (C H W) per sample."""
    _, h, w, c = features.shape
    flat = features.reshape(features.shape[0], h * w, c)
    gram = jnp.einsum("bpi,bpj->bij", flat, flat, precision=jax.lax.Precision.HIGHEST)
    return gram / (c * h * w)


def _as_mask(mask, batch):
    """(B|1, H, W[, 1]) -> (B, H, W, 1) float."""
    if mask.ndim == 3:
        mask = mask[..., None]
    return jnp.broadcast_to(mask, (batch,) + mask.shape[1:]).astype(jnp.float32)


def _masked_taps(vgg, image, mask, taps, size):
    if image.shape[1] != size or image.shape[2] != size:
        # nn.Upsample(scale_factor=256 / H, bilinear, align_corners=True); identity at 256.
        image = resample.bilinear_resize(image, size, align_corners=True)
    features = vgg.features(image, taps)
    # prepare_mask: nearest with scale_factor h_l / H_mask. For the power-of-two ratios of
    # the pipeline (256 -> 256, 128, 64, 32) it picks the same pixels as the size form.
    return {t: f * resample.nearest_resize(mask, f.shape[1:3]) for t, f in features.items()}


def style_loss(vgg: VGG16, reference_image, image, reference_mask, mask, taps=STYLE_TAPS,
               size: int = STYLE_SIZE):
    """Unweighted Gram style loss between the masked reference and current images.

    Args:
      vgg: converted VGG16 (the LPIPS lins are not used).
      reference_image: (B, H, W, 3) in [-1, 1]; no gradient flows into it.
      image: (B, H, W, 3) in [-1, 1] (Alignment: bicubic-downsampled renders at 256 px).
      reference_mask, mask: (B|1, H, W) or (B|1, H, W, 1) hair masks at the image size.
      taps: the VGG16 taps averaged (official: relu1_2 .. relu4_3).
      size: the resolution VGG sees (official: 256; smaller only for tests).
    Returns:
      (B,) losses (multiply by style_lambda = 4e4 for the official term).
    """
    batch = image.shape[0]
    reference_mask = _as_mask(reference_mask, batch)
    mask = _as_mask(mask, batch)
    reference = jax.lax.stop_gradient(
        _masked_taps(vgg, reference_image * reference_mask, reference_mask, taps, size))
    current = _masked_taps(vgg, image * mask, mask, taps, size)
    total = 0.0
    for tap in taps:
        diff = gram_matrix(reference[tap]) - gram_matrix(current[tap])
        total = total + jnp.mean(jnp.square(diff), axis=(1, 2))
    return total / len(taps)
