"""The alignment stage: each distinct (face, shape, ref) alignment, the face's F aligned to
the latent reference under the target mask of (face, shape), batched, through the store (the
pure stage: stages/align.py). Writes the Align_{tag}/ entry, its target label map and the
official vis_mask PNG (store/layout.py)."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from barbershop_jax.pipeline import stage_runner
from barbershop_jax.pipeline.context import TransferContext
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.store import cache
from barbershop_jax.pipeline.store.layout import references
from barbershop_jax.stages import align as alignment
from barbershop_jax.stages import target_mask as inpainting


@dataclasses.dataclass
class Aligned:
    target: np.ndarray          # (P, P) int32: the target mask of (face, shape)
    structure_f: np.ndarray     # (r, r, C): the face's F aligned to the reference


def found(ctx: TransferContext, alignments) -> tuple[dict, list]:
    """({alignment: Aligned} the output folder holds, the alignments to compute)."""
    return stage_runner.lookup(ctx, _stage(ctx), alignments)


def progress(ctx: TransferContext, alignments):
    """The alignment stage's bar, over its target masks' steps too: users and plans know the
    two as one stage ("Alignment", as the official prints it)."""
    cfg = ctx.cfg
    return stage_runner.progress(ctx, "Alignment", "pair", len(alignments),
                                 2 * cfg.inpaint_steps + cfg.align_steps1 + cfg.align_steps2)


def align(ctx: TransferContext, alignments, embedded: dict, targets: dict, bar=None) -> dict:
    """{alignment: Aligned} of each alignment computed (and written), given each one's target
    mask (target_mask.py); one that diverged is in ctx.failures instead."""
    return stage_runner.compute(ctx, _stage(ctx, embedded, targets), alignments, bar)


def _stage(ctx: TransferContext, embedded=None, targets=None) -> stage_runner.Stage:
    cfg = ctx.cfg
    return stage_runner.Stage(
        "Alignment", "pair", cfg.align_steps1 + cfg.align_steps2, "alignment", "align",
        lambda batch, hook, bar: _batch(ctx, batch, hook, embedded, targets),
        key=lambda a: ctx.align_key(*a), kind="alignment", cached=lambda a, key: _cached(ctx, a, key),
        write=lambda a, key, row: _write(ctx, a, key, row, embedded[a[0]].latent_in),
        result=lambda a, row: Aligned(row["target"], row["structure_f"]), finite=("structure_f", "image"),
        diverged=lambda a: (a, f"{a[0]} with {references(*a[1:])}: alignment diverged (NaN or infinity); "
                               "nothing written"))


def _cached(ctx: TransferContext, a, key) -> Aligned | None:
    """The alignment the output folder holds under `key` (its F and target labels), or None
    (a damaged entry: one warning, and it is recomputed; cache.read_entry)."""
    n_classes = len(ctx.models.parser.labels.names)

    def read(path):
        _, structure_f = cache.load_latents_npz(path, ctx.latent_shape, ctx.f_shape)
        return Aligned(cache.load_labels(ctx.layout.alignment_labels(*a), ctx.cfg.parse_size, n_classes),
                       structure_f)
    return cache.read_entry(ctx.layout.alignment(*a), key, read)


def _batch(ctx: TransferContext, batch, hook, embedded, targets) -> dict:
    """One batch of alignments (the last ones may repeat one, to keep the compiled size)."""
    def stacked(names, field):
        return jnp.asarray(np.stack([getattr(embedded[n], field) for n in names]))

    faces, refs = [f for f, _, _ in batch], [r for _, _, r in batch]
    target = jnp.asarray(np.stack([targets[a] for a in batch]), jnp.int32)
    inputs = alignment.AlignInputs(
        stacked(faces, "w_plus"), stacked(faces, "latent_in"), stacked(faces, "structure_f"),
        stacked(refs, "w_plus"), stacked(refs, "latent_in"), stacked(refs, "structure_f"), target,
        jnp.asarray(np.stack([ctx.region_of(ctx.parsed[f][0]) for f in faces])),
        jnp.asarray(np.stack([ctx.region_of(ctx.parsed[r][0]) for r in refs])),
        jnp.stack([ctx.noise_key(f, s) for f, s, _ in batch]), ctx.region_batch(len(batch)))
    result = alignment.align(ctx.models, inputs, ctx.cfg, hook=hook.within("align"))
    return {"structure_f": result.structure_f, "image": result.image, "target": target}


def _write(ctx: TransferContext, a, key, row, latent_in) -> None:
    """One alignment's files: the key last, so that a half-written entry has none."""
    face, shape, ref = a
    npz, layout = ctx.layout.alignment(*a), ctx.layout
    meta = {"key": key, "face": face, "reference": ref, **({"shape": shape} if shape != ref else {}),
            "weights": ctx.weights, "optimizers": cache.optimizers_of(ctx.embed_cfg, ctx.cfg)}
    npz.with_suffix(".json").unlink(missing_ok=True)
    image_io.save_png(layout.vis_mask(face, shape), inpainting.colourise(row["target"]))
    cache.save_labels(layout.alignment_labels(*a), row["target"])
    cache.save_latents_npz(npz, latent_in, row["structure_f"])
    image_io.save_png(npz.with_suffix(".png"), image_io.to_uint8(row["image"]))
    cache.save_json(npz.with_suffix(".json"), meta)
