"""The parsing stage: each image's face-parser labels, at the target mask's size and at the
blend's, computed once per run (a forward pass, batched, nothing stored)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from barbershop_jax.pipeline.context import TransferContext
from barbershop_jax.stages.parse import parse_images


def parse(ctx: TransferContext, sources) -> list[tuple[np.ndarray, np.ndarray]]:
    """(labels at parse_size, labels at blend_parse_size) of each source, parsed once each
    per run (kept in ctx.parsed by name)."""
    todo = list({s.name: s for s in sources if s.name not in ctx.parsed}.values())
    batch_size = ctx.settings.batch_size
    for i in range(0, len(todo), batch_size):
        batch = todo[i:i + batch_size]
        pixels = np.stack([ctx.decoded.pixels(s) for s in batch])
        # Every batch padded to batch_size (a forward pass): one compilation.
        pad = batch_size - len(batch)
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)]) if pad > 0 else pixels
        labels, blend_labels = parse_images(ctx.models.parser, jnp.asarray(pixels), ctx.size, ctx.cfg.parse_size,
                                            ctx.cfg.blend_parse_size)
        for s, lab, blend_lab in zip(batch, np.asarray(labels), np.asarray(blend_labels)):
            ctx.parsed[s.name] = (lab, blend_lab)
    return [ctx.parsed[s.name] for s in sources]
