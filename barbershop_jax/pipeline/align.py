"""The alignment stage of a run: the target mask and the alignment of each distinct (face,
shape, reference) alignment, batched, through the store (the pure stages:
stages/target_mask.py and stages/align.py)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline import loop_hook
from barbershop_jax.pipeline.store import resume
from barbershop_jax.pipeline.runtime import progress as progress_lib
from barbershop_jax.pipeline.store import cache as cache_lib
from barbershop_jax.pipeline.runtime.batching import batches
from barbershop_jax.pipeline.store.records import references
from barbershop_jax.stages import align as alignment
from barbershop_jax.stages import target_mask


@dataclasses.dataclass
class _Aligned:
    target: np.ndarray          # (P, P) int32
    structure_f: np.ndarray     # (r, r, C)


def _stack(items):
    return jax.tree.map(lambda *x: jnp.stack(x), *items)


class Aligning:
    """Pipeline's alignment stage (a part of pipeline/run.py's Pipeline)."""

    def align_pairs(self, alignments, sources, embedded) -> dict:
        """Target mask and alignment of each distinct (face, shape, ref) alignment, cached.
        -> {alignment: _Aligned}"""
        out, todo = {}, []
        for face, shape, ref in alignments:
            key = self.align_key(sources, face, shape, ref)
            hit = self._cached_alignment(face, shape, ref, key) if self.reuse.allows(key) else None
            if hit is not None:
                out[(face, shape, ref)] = hit
                self.reuse.found("alignment", key)
            else:
                todo.append((face, shape, ref, key))
        self.reuse.making("alignment", [key for *_, key in todo])
        cfg = self.cfg
        with progress_lib.StageProgress("Alignment", len(todo), self.batch_size,
                                        2 * cfg.inpaint_steps + cfg.align_steps1 + cfg.align_steps2,
                                        enabled=self.progress, unit="pair") as stage:
            for batch, padded in batches(todo, self.batch_size, "align", pad=self.pad_batches):
                stage.next_batch()
                out.update(self._align_batch(padded, sources, embedded, len(batch), stage))
        if self.save_target_masks:
            folder = self.out / f"target_masks{self.region_suffix}"
            n_classes = len(self.models.parser.labels.names)
            for (face, shape, _), a in out.items():  # one target mask per (face, shape)
                cache_lib.save_label_png(folder / f"{face}_{shape}.png", a.target, n_classes)
            if out:
                cache_lib.save_json(folder / "legend.json", target_mask.legend(self.models.parser.labels))
        return out

    def _cached_alignment(self, face, shape, ref, key) -> _Aligned | None:
        """The alignment the output folder holds under `key` (its F and target labels), or None
        (a damaged entry: one warning, and it is recomputed; store.read_entry)."""
        npz, labels_png = self._align_paths(face, shape, ref)
        n_classes = len(self.models.parser.labels.names)

        def read(path):
            _, structure_f = cache_lib.load_latents_npz(path, self.latent_shape, self.f_shape)
            return _Aligned(cache_lib.load_labels(labels_png, self.cfg.parse_size, n_classes), structure_f)
        return cache_lib.read_entry(npz, key, read)

    def align_key(self, sources, face, shape, ref) -> str:
        """The cache key of an alignment: its images, weights, settings and target-mask edit."""
        return cache_lib.stage_key("Align", self._align_hashes(sources, face, shape, ref), self.weights,
                                   self.embed_cfg, self.cfg, cache_lib.ALIGN_FIELDS, self._edit(face, shape).tag())

    def _align_batch(self, batch, sources, embedded, n_real, stage):
        """One batch of alignments (the last n - n_real repeat one, to keep the compiled size);
        stage: the alignment stage's progress.StageProgress."""
        cfg, labels_map = self.cfg, self.models.parser.labels
        with self._timed("parsing"):
            names = [n for f, s, r, _ in batch for n in (f, s, r)]
            parsed = dict(zip(names, self._parsed_of([sources[n] for n in names])))
        # The noise key is the (face, shape) pair's, whatever the latent reference: a structure
        # reference changes neither the target mask nor the face's side of the alignment.
        keys = [self._key((sources[f].image_hash, sources[s].image_hash)) for f, s, _, _ in batch]
        ckpt = resume.batch_checkpoint(self.out, "align", [k for _, _, _, k in batch], self.checkpoint_every)
        hook = loop_hook.PipelineHook(stage, ckpt, self.devices)
        edits = [self._edit(f, s) for f, s, _, _ in batch]
        bg = labels_map.id("background")

        def shape_labels(s, edit):
            if edit.shape_transform is None:
                return parsed[s][0]
            return target_mask.move_region(parsed[s][0], self.region, bg, *edit.shape_transform)

        with self._timed("target mask"):
            if all(e.target is not None for e in edits):  # every mask given: no GAN inpainting
                target = jnp.asarray(np.stack([e.target for e in edits]), jnp.int32)
                stage.skip(2 * cfg.inpaint_steps)
            else:
                inputs = _stack([target_mask.prepare(parsed[f][0], shape_labels(s, e), labels_map, k, self.region)
                                 for (f, s, _, _), k, e in zip(batch, keys, edits)])
                target = target_mask.gan_inpaint(self.models, inputs, cfg, hook=hook.within("mask"))
                if any(e.target is not None for e in edits):  # the given masks replace the computed ones
                    given = np.stack([np.zeros(target.shape[1:], np.int32) if e.target is None
                                      else np.asarray(e.target, np.int32) for e in edits])
                    use = np.array([e.target is not None for e in edits])[:, None, None]
                    target = jnp.where(use, given, target)
        region = lambda n: self._region_of(parsed[n][0])  # noqa: E731
        e = lambda n, field: getattr(embedded[n], field)  # noqa: E731
        align_inputs = alignment.AlignInputs(*[jnp.asarray(np.stack(x)) for x in (
            [e(f, "w_plus") for f, _, _, _ in batch], [e(f, "latent_in") for f, _, _, _ in batch],
            [e(f, "structure_f") for f, _, _, _ in batch], [e(r, "w_plus") for _, _, r, _ in batch],
            [e(r, "latent_in") for _, _, r, _ in batch], [e(r, "structure_f") for _, _, r, _ in batch])],
            target, jnp.asarray(np.stack([region(f) for f, _, _, _ in batch])),
            jnp.asarray(np.stack([region(r) for _, _, r, _ in batch])), jnp.stack(keys),
            self._region_batch(len(batch)))
        with self._timed("alignment"):  # blocked inside: the device's work counts here, not after
            result = jax.block_until_ready(alignment.align(self.models, align_inputs, cfg, hook=hook.within("align")))
        target = np.asarray(target)
        structure_f, images = np.asarray(result.structure_f), image_io.to_uint8(np.asarray(result.image))
        out, written = {}, []
        for i, (face, shape, ref, key) in enumerate(batch[:n_real]):
            if not (np.isfinite(structure_f[i]).all() and np.isfinite(np.asarray(result.image[i])).all()):
                self.failures.append(((face, shape, ref), f"{face} with {references(shape, ref)}: alignment "
                                                          "diverged (NaN or infinity); nothing written"))
                continue
            npz, labels_png = self._align_paths(face, shape, ref)
            meta = {"key": key, "face": face, "reference": ref, **({"shape": shape} if shape != ref else {}),
                    "weights": self.weights}
            written.append(self._write(self._write_alignment, npz, labels_png,
                                       self.out / f"vis_mask_{face}_{shape}_{self.tag}.png", target[i],
                                       embedded[face].latent_in, structure_f[i], images[i], meta))
            out[(face, shape, ref)] = _Aligned(target[i], structure_f[i])
        if ckpt is not None:  # once the batch's results are on disk
            self._write(resume.clear, ckpt.folder, after=written, cleanup=True)
        return out

    @staticmethod
    def _write_alignment(npz, labels_png, vis_png, target, latent_in, structure_f, image, meta):
        """One alignment's files: the key last, so that a half-written entry has none."""
        npz.with_suffix(".json").unlink(missing_ok=True)
        image_io.save_png(vis_png, target_mask.colourise(target))
        cache_lib.save_labels(labels_png, target)
        cache_lib.save_latents_npz(npz, latent_in, structure_f)
        image_io.save_png(npz.with_suffix(".png"), image)
        cache_lib.save_json(npz.with_suffix(".json"), meta)
