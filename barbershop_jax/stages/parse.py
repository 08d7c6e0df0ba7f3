"""The face parse of real images (the official `seg` of the inputs): labels for the target
mask, the alignment's region masks and the blend's."""
from __future__ import annotations

import jax.numpy as jnp

from barbershop_jax.stages import rehearsal


@rehearsal.program(static_argnames=("size", "parse_size", "blend_parse_size"))
def parse_images(parser, pixels_uint8, size, parse_size, blend_parse_size):
    """The official parse of real images: ToTensor ([0, 1]), bicubic down, clamp, normalise.
    pixels_uint8: (B, size, size, 3). Returns labels (B, P, P) at parse_size and (B, Q, Q) at
    blend_parse_size, int32."""
    image01 = pixels_uint8.astype(jnp.float32) / 255.0
    labels = parser.labels_of(image01, parse_size=parse_size)
    blend_labels = labels if blend_parse_size == parse_size else parser.labels_of(image01, parse_size=blend_parse_size)
    return labels, blend_labels
