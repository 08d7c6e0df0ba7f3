"""The target-mask stage: for each alignment to compute, the target segmentation of its
(face, shape) pair, by the official GAN inpainting (the pure stages/target_mask.py), or the
mask the user gave (a TargetEdit). Nothing is stored here: the alignment stage writes the
target beside its result (store/layout.py), and a found alignment brings its target back."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax.pipeline import stage_runner
from barbershop_jax.pipeline.context import TransferContext
from barbershop_jax.pipeline.store import cache
from barbershop_jax.stages import target_mask as inpainting


def target_masks(ctx: TransferContext, alignments, bar=None) -> dict:
    """{alignment: its target label map (P, P) int32} for each (face, shape, ref) alignment,
    batched as the alignment stage batches them: the two stages share each batch's checkpoint
    folder (OUT/.resume/align/{batch}/, the masks' loops under mask/), which the alignment
    clears once the batch's results are written, and their progress bar (`bar`: the
    alignment's, align.progress)."""
    cfg = ctx.cfg
    stage = stage_runner.Stage("Target mask", "pair", 2 * cfg.inpaint_steps, "target mask", "align",
                               lambda batch, hook, bar: _batch_targets(ctx, batch, hook, bar),
                               key=lambda a: ctx.align_key(*a), result=lambda a, row: row["target"])
    return stage_runner.compute(ctx, stage, alignments, bar)


def _stack(items):
    return jax.tree.map(lambda *x: jnp.stack(x), *items)


def _batch_targets(ctx: TransferContext, batch, hook, bar) -> dict:
    """A batch's target masks: the given ones as they are, the others inpainted. The noise
    key is the (face, shape) pair's, whatever the latent reference: a structure reference
    changes neither the target mask nor the face's side of the alignment."""
    edits = [ctx.edit(face, shape) for face, shape, _ in batch]
    if all(e.target is not None for e in edits):  # every mask given: no GAN inpainting
        bar.skip(2 * ctx.cfg.inpaint_steps)
        return {"target": jnp.asarray(np.stack([e.target for e in edits]), jnp.int32)}
    labels_map = ctx.models.parser.labels
    background = labels_map.id("background")

    def shape_labels(shape, edit):
        labels = ctx.parsed[shape][0]
        if edit.shape_transform is None:
            return labels
        return inpainting.move_region(labels, ctx.region, background, *edit.shape_transform)

    inputs = _stack([inpainting.prepare(ctx.parsed[face][0], shape_labels(shape, e), labels_map,
                                        ctx.noise_key(face, shape), ctx.region)
                     for (face, shape, _), e in zip(batch, edits)])
    target = inpainting.gan_inpaint(ctx.models, inputs, ctx.cfg, hook=hook.within("mask"))
    if any(e.target is not None for e in edits):  # the given masks replace the computed ones
        given = np.stack([np.zeros(target.shape[1:], np.int32) if e.target is None
                          else np.asarray(e.target, np.int32) for e in edits])
        use = np.array([e.target is not None for e in edits])[:, None, None]
        target = jnp.where(use, given, target)
    return {"target": target}


def save_target_masks(ctx: TransferContext, aligned: dict) -> None:
    """--save-target-mask: each (face, shape) pair's target mask as an indexed PNG (values are
    class ids, shown in the label colours), with legend.json, to edit and give back."""
    n_classes = len(ctx.models.parser.labels.names)
    for (face, shape, _), a in aligned.items():  # one target mask per (face, shape)
        cache.save_label_png(ctx.layout.target_mask(face, shape), a.target, n_classes)
    if aligned:
        cache.save_json(ctx.layout.target_masks_dir() / "legend.json", inpainting.legend(ctx.models.parser.labels))
