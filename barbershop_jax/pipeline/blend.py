"""The blending stage: each triple's appearance blended from the face and the colour
reference over the aligned structure, batched, through the store (the pure stage:
stages/blend.py). Writes the Blend_{tag}/ entry and the result PNG (store/layout.py)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from barbershop_jax.pipeline import stage_runner
from barbershop_jax.pipeline.context import TransferContext
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.store import cache
from barbershop_jax.pipeline.store.layout import references
from barbershop_jax.pipeline.store.records import TransferResult
from barbershop_jax.stages import blend as blending


def blend(ctx: TransferContext, triples, embedded: dict, aligned: dict) -> dict:
    """{triple: TransferResult} of each (face, shape, color, structure) triple, found in the
    output folder or blended (and written); one that diverged is in ctx.failures instead."""
    cfg = ctx.cfg

    def result(t, row):
        face, shape, color, structure = t
        return TransferResult(face, shape, color, structure, image_io.to_uint8(row["image"]),
                              aligned[(face, shape, structure)].target, row["latent_in"], row["structure_f"],
                              row["face_mask"], row["hair_mask"], ctx.layout.result(t))

    stage = stage_runner.Stage(
        "Blend", "triple", cfg.blend_steps, "blending", "blend",
        lambda batch, hook, bar: _batch(ctx, batch, hook, embedded, aligned),
        key=ctx.blend_key, kind="blend", cached=lambda t, key: _cached(ctx, t, key, aligned),
        write=lambda t, key, row: _write(ctx, t, key, row), result=result, finite=("latent_in", "image"),
        diverged=lambda t: (t, f"{t[0]}, {references(t[1], t[3])}, {t[2]}: blending diverged (NaN or infinity); "
                               "nothing written"))
    return stage_runner.run(ctx, stage, triples)


def _cached(ctx: TransferContext, t, key, aligned) -> TransferResult | None:
    """The triple's result the output folder holds under `key`, or None (a damaged entry: one
    warning, and it is recomputed; cache.read_entry)."""
    path = ctx.layout.result(t)

    def read(npz_path):
        latent_in, structure_f = cache.load_latents_npz(npz_path, ctx.latent_shape, ctx.f_shape)
        image = image_io.load_rgb(path, exif=False)
        if image.shape != (ctx.size, ctx.size, 3):
            raise ValueError(f"{path}: {image.shape[1]}x{image.shape[0]}, not the generator's {ctx.size}x{ctx.size}")
        return latent_in, structure_f, image
    hit = cache.read_entry(ctx.layout.blend(t), key, read)
    if hit is None:
        return None
    # The blend masks are not stored: a cached result carries None for them.
    face, shape, color, structure = t
    return TransferResult(face, shape, color, structure, hit[2], aligned[(face, shape, structure)].target, hit[0],
                          hit[1], None, None, path)


def _batch(ctx: TransferContext, batch, hook, embedded, aligned) -> dict:
    """One batch of triples (the last ones may repeat one, to keep the compiled size)."""
    cfg = ctx.cfg
    small = {n: ctx.decoded.small(ctx.sources[n], cfg.loss_size) for f, _, c, _ in batch for n in (f, c)}

    def col(fn):
        return jnp.asarray(np.stack([fn(*t) for t in batch]))

    inputs = blending.BlendInputs(
        col(lambda f, s, c, st: embedded[f].latent_in), col(lambda f, s, c, st: embedded[c].latent_in),
        col(lambda f, s, c, st: aligned[(f, c, c)].structure_f),
        col(lambda f, s, c, st: aligned[(f, s, st)].structure_f),
        col(lambda f, s, c, st: small[f]), col(lambda f, s, c, st: small[c]),
        col(lambda f, s, c, st: ctx.region_of(ctx.parsed[f][1])),
        col(lambda f, s, c, st: ctx.region_of(ctx.parsed[c][1])),
        # The noise key of (face, shape, color): a structure reference changes the final F only.
        jnp.stack([ctx.noise_key(*t[:3]) for t in batch]), ctx.region_batch(len(batch)))
    result = blending.blend(ctx.models, inputs, cfg, hook=hook)
    return {"latent_in": result.latent_in, "structure_f": result.structure_f, "image": result.image,
            "face_mask": result.face_mask, "hair_mask": result.hair_mask}


def _write(ctx: TransferContext, t, key, row) -> None:
    """One blend's files and its result: the key last, so that a half-written entry has none."""
    face, shape, color, structure = t
    npz = ctx.layout.blend(t)
    meta = {"key": key, "face": face, "shape": shape, "color": color,
            **({"structure": structure} if structure != shape else {}), "weights": ctx.weights,
            "optimizers": cache.optimizers_of(ctx.embed_cfg, ctx.cfg)}
    npz.with_suffix(".json").unlink(missing_ok=True)
    cache.save_latents_npz(npz, row["latent_in"], row["structure_f"])
    render = image_io.save_png(npz.with_suffix(".png"), image_io.to_uint8(row["image"]))
    image_io.atomic_write(ctx.layout.result(t), lambda f: f.write(render.read_bytes()))  # the same PNG: encode once
    cache.save_json(npz.with_suffix(".json"), meta)
