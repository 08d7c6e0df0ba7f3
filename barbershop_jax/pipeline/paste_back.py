"""Paste-back: each result put back into the photo its face crop was cut from, over the
union of the old and new region with the face, feathered (faces/crop.py does the geometry)."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from barbershop_jax.ops import resample
from barbershop_jax.pipeline.context import TransferContext
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.files import sources as sources_lib
from barbershop_jax.pipeline.parse import parse
from barbershop_jax.pipeline.store.records import TransferResult


def paste_back(ctx: TransferContext, results: list, feather: float) -> list[TransferResult | None]:
    """Each result (None stays None) pasted into its face's photo, feathered by `feather`
    times the result's side; writes {face}_{shape}_{color}_{tag}_pasted.png."""
    label_map = ctx.models.parser.labels
    done = [r for r in results if r is not None]
    after = iter(parse(ctx, [sources_lib.as_source(r.image, name=f"result:{r.path.name}") for r in done]))
    out = []
    for r in results:
        if r is None:
            out.append(None)
            continue
        labels_after, _ = next(after)
        face = ctx.sources[r.face]
        transform = face_crop.read_transform(face.path)
        photo = face_crop.load_source_photo(transform, what=str(face.path))
        region = face_crop.edited_region(label_map, ctx.parsed[r.face][0], labels_after)
        res = r.image.shape[0]
        region = np.asarray(resample.nearest_resize(jnp.asarray(region[None], jnp.float32), res)[0]) > 0
        alpha = face_crop.feathered_alpha(region, feather * res)
        pasted = face_crop.paste_back(photo, r.image, transform, alpha)
        path = image_io.save_png(ctx.layout.pasted((r.face, r.shape, r.color, r.structure)), pasted)
        out.append(dataclasses.replace(r, pasted=pasted, pasted_path=path))
    return out
