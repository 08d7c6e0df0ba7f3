"""The blending stage of a run: each triple blended, batched, through the store (the pure
stage: stages/blend.py)."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline import loop_hook
from barbershop_jax.pipeline.store import resume
from barbershop_jax.pipeline.runtime import progress as progress_lib
from barbershop_jax.pipeline.store import cache as cache_lib
from barbershop_jax.pipeline.runtime.batching import batches
from barbershop_jax.pipeline.store.records import TransferResult, references
from barbershop_jax.stages import blend as blending


class Blending:
    """Pipeline's blending stage (a part of pipeline/run.py's Pipeline)."""

    def blend_triples(self, triples, sources, embedded, aligned) -> list[TransferResult]:
        """triples: (face, shape, color, structure) each."""
        results = {}
        todo = []
        for t in triples:
            key, npz = self.blend_key(sources, t), self.blend_path(t)
            cached = self._cached_blend(t, key, npz, aligned)
            if cached is not None:
                results[t] = cached
                self.reuse.found("blend", key)
            else:
                todo.append((t, key, npz))
        self.reuse.making("blend", [key for _, key, _ in todo])
        with progress_lib.StageProgress("Blend", len(todo), self.batch_size, self.cfg.blend_steps,
                                        enabled=self.progress, unit="triple") as stage:
            for batch, padded in batches(todo, self.batch_size, "blend", pad=self.pad_batches):
                stage.next_batch()
                results.update(self._blend_batch(padded, sources, embedded, aligned, len(batch), stage))
        return [results.get(t) for t in triples]  # None: the triple's blend diverged

    def blend_key(self, sources, t) -> str:
        """The cache key of a triple's blend: its images, weights, settings and edits."""
        face, shape, color, _ = t
        edits = (self._edit(face, shape).tag(), self._edit(face, color).tag())
        return cache_lib.stage_key("Blend", self._triple_hashes(sources, t), self.weights, self.embed_cfg, self.cfg,
                                   cache_lib.ALIGN_FIELDS + cache_lib.BLEND_FIELDS,
                                   cache_lib.digest(*edits) if any(edits) else "")

    def blend_path(self, t) -> Path:
        return self.out / f"Blend_{self.tag}" / f"{self._triple_stem(t)}.npz"

    def _result_path(self, t) -> Path:
        return self.out / f"{self._triple_stem(t)}_{self.tag}.png"

    def _cached_blend(self, t, key, npz, aligned):
        """The triple's result the output folder holds under `key`, or None (a damaged entry:
        one warning, and it is recomputed; store.read_entry)."""
        if not self.reuse.allows(key):
            return None
        path = self._result_path(t)

        def read(npz_path):
            latent_in, structure_f = cache_lib.load_latents_npz(npz_path, self.latent_shape, self.f_shape)
            image = image_io.load_rgb(path, exif=False)
            if image.shape != (self.size, self.size, 3):
                raise ValueError(f"{path}: {image.shape[1]}x{image.shape[0]}, not the generator's "
                                 f"{self.size}x{self.size}")
            return latent_in, structure_f, image
        hit = cache_lib.read_entry(npz, key, read)
        if hit is None:
            return None
        # The blend masks are not stored: a cached result carries None for them.
        face, shape, color, structure = t
        return TransferResult(face, shape, color, structure, hit[2], aligned[(face, shape, structure)].target, hit[0],
                              hit[1], None, None, path)

    def _blend_batch(self, batch, sources, embedded, aligned, n_real, stage):
        cfg = self.cfg
        names = [n for t, _, _ in batch for n in (t[0], t[2])]
        with self._timed("parsing"):
            parsed = dict(zip(names, self._parsed_of([sources[n] for n in names])))
        small = {n: self.decoded.small(sources[n], cfg.loss_size) for n in names}
        col = lambda fn: jnp.asarray(np.stack([fn(*t) for t, _, _ in batch]))  # noqa: E731
        inputs = blending.BlendInputs(
            col(lambda f, s, c, st: embedded[f].latent_in), col(lambda f, s, c, st: embedded[c].latent_in),
            col(lambda f, s, c, st: aligned[(f, c, c)].structure_f),
            col(lambda f, s, c, st: aligned[(f, s, st)].structure_f),
            col(lambda f, s, c, st: small[f]), col(lambda f, s, c, st: small[c]),
            col(lambda f, s, c, st: self._region_of(parsed[f][1])),
            col(lambda f, s, c, st: self._region_of(parsed[c][1])),
            # The noise key of (face, shape, color): a structure reference changes the final F only.
            jnp.stack([self._key(tuple(sources[n].image_hash for n in t[:3])) for t, _, _ in batch]),
            self._region_batch(len(batch)))
        ckpt = resume.batch_checkpoint(self.out, "blend", [k for _, k, _ in batch], self.checkpoint_every)
        with self._timed("blending"):
            result = jax.block_until_ready(blending.blend(self.models, inputs, cfg,
                                                          hook=loop_hook.PipelineHook(stage, ckpt, self.devices)))
        latent_in, structure_f = np.asarray(result.latent_in), np.asarray(result.structure_f)
        images = image_io.to_uint8(np.asarray(result.image))
        out, written = {}, []
        for i, (t, key, npz) in enumerate(batch[:n_real]):
            face, shape, color, structure = t
            if not (np.isfinite(latent_in[i]).all() and np.isfinite(np.asarray(result.image[i])).all()):
                self.failures.append((t, f"{face}, {references(shape, structure)}, {color}: blending diverged "
                                         "(NaN or infinity); nothing written"))
                continue
            path = self._result_path(t)
            meta = {"key": key, "face": face, "shape": shape, "color": color,
                    **({"structure": structure} if structure != shape else {}), "weights": self.weights}
            written.append(self._write(self._write_blend, npz, path, latent_in[i], structure_f[i], images[i], meta))
            out[t] = TransferResult(face, shape, color, structure, images[i], aligned[(face, shape, structure)].target,
                                    latent_in[i], structure_f[i], np.asarray(result.face_mask[i]),
                                    np.asarray(result.hair_mask[i]), path)
        if ckpt is not None:
            self._write(resume.clear, ckpt.folder, after=written, cleanup=True)
        return out

    @staticmethod
    def _write_blend(npz, path, latent_in, structure_f, image, meta):
        npz.with_suffix(".json").unlink(missing_ok=True)
        cache_lib.save_latents_npz(npz, latent_in, structure_f)
        render = image_io.save_png(npz.with_suffix(".png"), image)
        image_io.atomic_write(path, lambda f: f.write(render.read_bytes()))  # the same PNG: encode once
        cache_lib.save_json(npz.with_suffix(".json"), meta)
