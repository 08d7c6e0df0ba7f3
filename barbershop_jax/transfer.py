"""The complete hairstyle transfer, for one triple or thousands: files, caching and batches
around the pure stages (embedding.py, target_mask.py, alignment.py, blending.py).

For triples (face, shape, colour), or quadruples (face, shape, colour, structure) whose
structure reference differs from the shape reference:
1. every distinct image is embedded once, in W+ then FS (api.embed, through the cache);
2. every distinct alignment gets its target mask and alignment, batched: the face aligned to
   the shape reference (or to the structure reference, when one is given) under the target
   mask of (face, shape), and to the colour reference under that of (face, colour) (the
   official aligns (face, colour) only when colour != shape; an alignment two triples share
   is done once);
3. every triple is blended, batched over triples.
Everything is done for the transferred region (TransferConfig.region, hair by default).

Output layout under OUT (the official names, so the official code can read ours):

    W+/{name}.npy, FS/{name}.npz                        embeddings (cache.py)
    vis_mask_{face}_{shape}_{tag}.png                   the target mask, coloured
    Align_{tag}/{face}_{ref}.npz  (.png)                latent_in, latent_F (NCHW)
    Blend_{tag}/{face}_{shape}_{color}.npz  (.png)      latent_in, latent_F
    {face}_{shape}_{color}_{tag}.png                    the result

with tag = sign (official) for hair, {sign}_{region} otherwise (e.g. realistic_brows+eyes),
and {shape} written {shape}+{structure} where a structure reference is given (the target
mask stays the (face, shape) one). Ours beside them: Align_{tag}/{face}_{ref}_labels.png
(the target label map, 8-bit grey levels = class ids) and a JSON key beside each npz. As in
cache.py, an entry whose key matches (same images, weights and settings) is reused, so a
re-run skips finished work; arrays are written before their key, each atomically.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from barbershop_jax import (alignment, api, blending, compile_cache, embedding, face_crop, image_io, optimize,
                            resample, resume, target_mask)
from barbershop_jax import cache as cache_lib
from barbershop_jax.transfer_config import DEFAULT_REGION, Models, TransferConfig

log = logging.getLogger("barbershop_jax")

ALIGN_FIELDS = ("sign", "smooth", "learning_rate", "ce_lambda", "style_lambda", "inpaint_steps", "align_steps1",
                "align_steps2", "align_latents", "align_more_region", "parse_size", "loss_size", "guard_empty",
                "noise", "seed")
BLEND_FIELDS = ("learning_rate", "face_lambda", "hair_lambda", "blend_steps", "blend_smooth", "blend_parse_size",
                "parse_size", "loss_size", "guard_empty", "noise", "seed")
FEATHER = 0.025  # paste-back: the mask's soft edge, as a fraction of the result's side (25 px at 1024)
WAVE = 256  # triples per transfer_many call of HairTransfer.transfer_files (the command line's batch mode)


@dataclasses.dataclass
class TransferResult:
    """One triple's result and its intermediate results (numpy)."""
    face: str
    shape: str
    color: str
    structure: str              # the structure reference (the shape reference unless one is given)
    image: np.ndarray           # (size, size, 3) uint8: the result
    target_labels: np.ndarray   # (P, P) int32: the target mask of (face, shape)
    latent_in: np.ndarray       # (n_latent, d): the blended latents
    structure_f: np.ndarray     # (r, r, C): F aligned to the structure (= shape) reference
    face_mask: np.ndarray | None  # (L, L): the blend's face region (None when read from the cache)
    hair_mask: np.ndarray | None  # (L, L): the blend's colour-reference region (hair by default; likewise)
    path: Path                  # the result PNG
    pasted: np.ndarray | None = None    # with paste-back: the face's photo with the result in it
    pasted_path: Path | None = None     # ... and its PNG


@dataclasses.dataclass
class _Aligned:
    target: np.ndarray          # (P, P) int32
    structure_f: np.ndarray     # (r, r, C)


class _Done:
    """The future of a write done at once (outside a run's BackgroundWrites)."""

    @staticmethod
    def exception():
        return None


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _stage_key(kind, hashes, weights, embed_cfg, cfg, fields, edit: str = "") -> str:
    settings = {f: getattr(cfg, f) for f in fields}
    if cfg.region != DEFAULT_REGION:  # only then: the keys of hair transfers stay as they were
        settings["region"] = cfg.region
    embed_settings = {f: getattr(embed_cfg, f) for f in cache_lib.FS_FIELDS}
    blob = {"kind": kind, "images": list(hashes), "weights": weights, "embedding": embed_settings,
            "settings": settings}
    if edit:  # only when there is one, so that the keys of unedited runs stay as they were
        blob["edit"] = edit
    return _digest(json.dumps(blob, sort_keys=True))


@dataclasses.dataclass(frozen=True)
class TargetEdit:
    """A change to the target mask of a triple's (face, shape) pair.

    target: (P, P) class ids that replace the computed target mask (P: the parse size;
    target_mask.read_label_png reads and checks one from a file); shape_transform:
    (scale, dx, dy) applied to the shape reference's region (hair by default) before the
    merge (target_mask.move_region). Either may be None."""
    target: np.ndarray | None = None
    shape_transform: tuple | None = None

    def tag(self) -> str:
        """A digest of the edit, for cache keys ("" for no edit)."""
        parts = []
        if self.target is not None:
            parts.append(cache_lib.content_hash(np.asarray(self.target, np.int32)))
        if self.shape_transform is not None:
            parts.append(repr(tuple(float(v) for v in self.shape_transform)))
        return _digest(*parts) if parts else ""


def _save_labels(path: Path, labels):
    image_io.atomic_write(path, lambda f: Image.fromarray(np.asarray(labels, np.uint8), "L").save(f, format="PNG"))


def _read_labels(path: Path, size: int):
    try:
        with Image.open(path) as im:
            labels = np.asarray(im).astype(np.int32)
    except (OSError, ValueError):
        return None
    return labels if labels.shape == (size, size) else None


@compile_cache.jit(static_argnames=("size", "parse_size", "blend_parse_size"))
def _parse(parser, pixels_uint8, size, parse_size, blend_parse_size):
    """The official parse of real images: ToTensor ([0, 1]), bicubic down, clamp, normalise.
    Returns labels (B, P, P) at parse_size and (B, Q, Q) at blend_parse_size, int32."""
    image01 = pixels_uint8.astype(jnp.float32) / 255.0
    labels = parser.labels_of(image01, parse_size=parse_size)
    blend_labels = labels if blend_parse_size == parse_size else parser.labels_of(image01, parse_size=blend_parse_size)
    return labels, blend_labels


def _stack(items):
    return jax.tree.map(lambda *x: jnp.stack(x), *items)


def _batches(items, batch_size):
    for i in range(0, len(items), batch_size):
        yield items[i:i + batch_size]


class Pipeline:
    """Runs triples through every stage with one set of models, settings and output folder.

    Internally a triple is (face, shape, color, structure), structure = shape unless given; an
    alignment is (face, mask reference, latent reference): the face aligned to the latent
    reference under the target mask of (face, mask reference)."""

    def __init__(self, models: Models, pca, out_dir, embed_cfg: embedding.EmbedConfig, cfg: TransferConfig, *,
                 batch_size: int = 4, progress: bool = True, devices=None,
                 checkpoint_every: int | None = resume.DEFAULT_EVERY):
        optimize.check_counts("Pipeline", 1, batch_size=batch_size)
        self.models, self.pca = models, pca
        self.out = Path(out_dir)
        self.size = models.generator.config.size
        self.embed_cfg = embed_cfg
        self.cfg = cfg.resolve(self.size)
        self.region = self.cfg.region_ids(models.parser.labels)  # checks the names before any work
        self.region_classes = self.cfg.region_classes(models.parser.labels)  # the region as the stages take it
        # File names: the official ones for hair, the region appended to the sign otherwise.
        self.region_suffix = "" if self.cfg.region == DEFAULT_REGION else "_" + self.cfg.region.replace(",", "+")
        self.tag = self.cfg.sign + self.region_suffix
        self.batch_size, self.progress, self.devices = batch_size, progress, devices
        self.weights = cache_lib.tree_fingerprint((models, pca))
        g = models.generator.config
        self.latent_shape = (g.n_latent, g.style_dim)
        self.f_shape = (32, 32, g.channels(32))
        self.timings: dict[str, float] = {}
        self._parsed: dict[str, tuple] = {}
        self.sources: dict[str, api.ImageSource] = {}  # every input of `run`, by name
        self.checkpoint_every = checkpoint_every
        self.failures: list = []  # (item: an image name, an alignment or a triple, reason), this run
        self.triple_failures: list = []  # (triple of names, reason): the triples without a result
        self.pair_edits: dict = {}  # (face, shape) -> TargetEdit
        self._writes = None  # image_io.BackgroundWrites during run
        self.save_target_masks = False  # also write OUT/target_masks{region_suffix}/{face}_{ref}.png + legend.json

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _timed(self, stage):
        """Adds the block's wall time to timings[stage] (the end-of-run table)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    def _parsed_of(self, sources):
        """(labels at parse_size, labels at blend_parse_size) per source, parsed once each."""
        todo = list({s.name: s for s in sources if s.name not in self._parsed}.values())
        for batch in _batches(todo, self.batch_size):
            pixels = np.stack([api.fit_to_size(s.load(), self.size, s.path or s.name) for s in batch])
            # Every batch padded to batch_size (a forward pass): one compilation.
            pad = self.batch_size - len(batch)
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)]) if pad > 0 else pixels
            labels, blend_labels = _parse(self.models.parser, jnp.asarray(pixels), self.size, self.cfg.parse_size,
                                          self.cfg.blend_parse_size)
            for s, lab, blend_lab in zip(batch, np.asarray(labels), np.asarray(blend_labels)):
                self._parsed[s.name] = (lab, blend_lab)
        return [self._parsed[s.name] for s in sources]

    def _region_batch(self, n) -> jax.Array:
        """The region as the stages take it (a class mask), for a batch of n."""
        return jnp.asarray(np.stack([self.region_classes] * n))

    def _region_of(self, labels) -> np.ndarray:
        """The transferred region of a label map, float 0/1."""
        return np.isin(labels, self.region).astype(np.float32)

    def _key(self, hashes):
        return optimize.image_key(self.cfg.seed, _digest(*hashes))

    def _edit(self, face, ref) -> TargetEdit:
        return self.pair_edits.get((face, ref)) or TargetEdit()

    @staticmethod
    def _stem(face, shape, ref) -> str:
        """{face}_{shape}, or {face}_{shape}+{ref} for an alignment to another latent reference."""
        return f"{face}_{_references(shape, ref)}"

    def _align_hashes(self, sources, face, shape, ref) -> tuple:
        """The images an alignment depends on (the official pair, or all three)."""
        names = (face, ref) if ref == shape else (face, shape, ref)
        return tuple(sources[n].image_hash for n in names)

    def _align_paths(self, face, shape, ref):
        d, stem = self.out / f"Align_{self.tag}", self._stem(face, shape, ref)
        return d / f"{stem}.npz", d / f"{stem}_labels.png"

    def _triple_stem(self, t) -> str:
        face, shape, color, structure = t
        return f"{self._stem(face, shape, structure)}_{color}"

    def _triple_hashes(self, sources, t) -> tuple:
        face, shape, color, structure = t
        names = (face, shape, color) if structure == shape else t
        return tuple(sources[n].image_hash for n in names)

    # ------------------------------------------------------------------ stages
    def embed(self, sources):
        consts = embedding.Consts(self.models.generator, self.models.vgg, self.pca)
        failed = []
        with self._timed("embedding"):
            # Every image of this process's triples, also under jax.distributed (where api.embed
            # would embed only this process's share of them).
            done = api.embed(sources, self.out, consts, self.embed_cfg, batch_size=self.batch_size,
                             progress=self.progress, devices=self.devices, checkpoint_every=self.checkpoint_every,
                             failures=failed, split_processes=False)
        self.failures += failed
        return {e.name: e for e in done}

    def align_pairs(self, alignments, sources, embedded) -> dict:
        """Target mask and alignment of each distinct (face, shape, ref) alignment, cached.
        -> {alignment: _Aligned}"""
        out, todo = {}, []
        for face, shape, ref in alignments:
            key = _stage_key("Align", self._align_hashes(sources, face, shape, ref), self.weights,
                             self.embed_cfg, self.cfg, ALIGN_FIELDS, self._edit(face, shape).tag())
            npz, labels_png = self._align_paths(face, shape, ref)
            hit = cache_lib.read_latents_npz(npz, self.latent_shape, self.f_shape) if cache_lib.key_matches(npz, key) else None
            labels = _read_labels(labels_png, self.cfg.parse_size) if hit is not None else None
            if labels is not None:
                out[(face, shape, ref)] = _Aligned(labels, hit[1])
            else:
                todo.append((face, shape, ref, key))
        cfg = self.cfg
        with optimize.StageProgress("Alignment", len(todo), self.batch_size,
                                    2 * cfg.inpaint_steps + cfg.align_steps1 + cfg.align_steps2,
                                    enabled=self.progress, unit="pair") as stage:
            for batch, padded in optimize.batches(todo, self.batch_size, "align"):
                stage.next_batch()
                out.update(self._align_batch(padded, sources, embedded, len(batch), stage))
        if self.save_target_masks:
            folder = self.out / f"target_masks{self.region_suffix}"
            n_classes = len(self.models.parser.labels.names)
            for (face, shape, _), a in out.items():  # one target mask per (face, shape)
                target_mask.save_label_png(folder / f"{face}_{shape}.png", a.target, n_classes)
            if out:
                cache_lib.save_json(folder / "legend.json", target_mask.legend(self.models.parser.labels))
        return out

    def _align_batch(self, batch, sources, embedded, n_real, stage):
        """One batch of alignments (the last n - n_real repeat one, to keep the compiled size);
        stage: the alignment stage's optimize.StageProgress."""
        cfg, labels_map = self.cfg, self.models.parser.labels
        with self._timed("parsing"):
            names = [n for f, s, r, _ in batch for n in (f, s, r)]
            parsed = dict(zip(names, self._parsed_of([sources[n] for n in names])))
        # The noise key is the (face, shape) pair's, whatever the latent reference: a structure
        # reference changes neither the target mask nor the face's side of the alignment.
        keys = [self._key((sources[f].image_hash, sources[s].image_hash)) for f, s, _, _ in batch]
        ckpt = resume.batch_checkpoint(self.out, "align", [k for _, _, _, k in batch], self.checkpoint_every)
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
                target = target_mask.gan_inpaint(self.models, inputs, cfg, progress=stage,
                                                 devices=self.devices, checkpoint=ckpt and ckpt.sub("mask"))
                target = jnp.asarray(np.stack([np.asarray(e.target, np.int32) if e.target is not None else t
                                               for e, t in zip(edits, np.asarray(target))]))
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
            result = jax.block_until_ready(alignment.align(self.models, align_inputs, cfg, progress=stage,
                                                           devices=self.devices, checkpoint=ckpt and ckpt.sub("align")))
        target = np.asarray(target)
        structure_f, images = np.asarray(result.structure_f), image_io.to_uint8(np.asarray(result.image))
        out, written = {}, []
        for i, (face, shape, ref, key) in enumerate(batch[:n_real]):
            if not (np.isfinite(structure_f[i]).all() and np.isfinite(np.asarray(result.image[i])).all()):
                self.failures.append(((face, shape, ref), f"{face} with {_references(shape, ref)}: alignment "
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
            self._write(resume.clear, ckpt.folder, after=written)
        return out

    @staticmethod
    def _write_alignment(npz, labels_png, vis_png, target, latent_in, structure_f, image, meta):
        """One alignment's files: the key last, so that a half-written entry has none."""
        npz.with_suffix(".json").unlink(missing_ok=True)
        image_io.save_png(vis_png, target_mask.colourise(target))
        _save_labels(labels_png, target)
        cache_lib.save_latents_npz(npz, latent_in, structure_f)
        image_io.save_png(npz.with_suffix(".png"), image)
        cache_lib.save_json(npz.with_suffix(".json"), meta)

    def _write(self, fn, *args, after=()):
        """fn(*args) on the run's writer threads (image_io.BackgroundWrites), or now outside a run."""
        if self._writes is None:
            if not any(f.exception() is not None for f in after):
                fn(*args)
            return _Done()
        return self._writes.submit(fn, *args, after=after)

    def blend_triples(self, triples, sources, embedded, aligned) -> list[TransferResult]:
        """triples: (face, shape, color, structure) each."""
        results = {}
        todo = []
        for t in triples:
            face, shape, color, _ = t
            key = _stage_key("Blend", self._triple_hashes(sources, t), self.weights, self.embed_cfg,
                             self.cfg, ALIGN_FIELDS + BLEND_FIELDS,
                             _digest(self._edit(face, shape).tag(), self._edit(face, color).tag())
                             if self._edit(face, shape).tag() or self._edit(face, color).tag() else "")
            npz = self.out / f"Blend_{self.tag}" / f"{self._triple_stem(t)}.npz"
            cached = self._cached_blend(t, key, npz, aligned)
            if cached is not None:
                results[t] = cached
            else:
                todo.append((t, key, npz))
        with optimize.StageProgress("Blend", len(todo), self.batch_size, self.cfg.blend_steps,
                                    enabled=self.progress, unit="triple") as stage:
            for batch, padded in optimize.batches(todo, self.batch_size, "blend"):
                stage.next_batch()
                results.update(self._blend_batch(padded, sources, embedded, aligned, len(batch), stage))
        return [results.get(t) for t in triples]  # None: the triple's blend diverged

    def _result_path(self, t) -> Path:
        return self.out / f"{self._triple_stem(t)}_{self.tag}.png"

    def _cached_blend(self, t, key, npz, aligned):
        hit = cache_lib.read_latents_npz(npz, self.latent_shape, self.f_shape) if cache_lib.key_matches(npz, key) else None
        path = self._result_path(t)
        if hit is None or not path.is_file():
            return None
        try:
            image = image_io.load_rgb(path)
        except image_io.ImageError:
            return None
        # The blend masks are not stored: a cached result carries None for them.
        face, shape, color, structure = t
        return TransferResult(face, shape, color, structure, image, aligned[(face, shape, structure)].target, hit[0],
                              hit[1], None, None, path)

    def _blend_batch(self, batch, sources, embedded, aligned, n_real, stage):
        cfg, size = self.cfg, self.size
        names = [n for t, _, _ in batch for n in (t[0], t[2])]
        with self._timed("parsing"):
            parsed = dict(zip(names, self._parsed_of([sources[n] for n in names])))
        small = {}
        for n in names:
            pixels = api.fit_to_size(sources[n].load(), size, sources[n].path or n)
            small[n] = resample.uint8_to_signed(resample.lanczos_resize(pixels, cfg.loss_size))
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
            result = jax.block_until_ready(blending.blend(self.models, inputs, cfg, progress=stage,
                                                          devices=self.devices, checkpoint=ckpt))
        latent_in, structure_f = np.asarray(result.latent_in), np.asarray(result.structure_f)
        images = image_io.to_uint8(np.asarray(result.image))
        out, written = {}, []
        for i, (t, key, npz) in enumerate(batch[:n_real]):
            face, shape, color, structure = t
            if not (np.isfinite(latent_in[i]).all() and np.isfinite(np.asarray(result.image[i])).all()):
                self.failures.append((t, f"{face}, {_references(shape, structure)}, {color}: blending diverged "
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
            self._write(resume.clear, ckpt.folder, after=written)
        return out

    @staticmethod
    def _write_blend(npz, path, latent_in, structure_f, image, meta):
        npz.with_suffix(".json").unlink(missing_ok=True)
        cache_lib.save_latents_npz(npz, latent_in, structure_f)
        render = image_io.save_png(npz.with_suffix(".png"), image)
        image_io.atomic_write(path, lambda f: f.write(render.read_bytes()))  # the same PNG: encode once
        cache_lib.save_json(npz.with_suffix(".json"), meta)

    def paste_back(self, results: list[TransferResult], feather: float = FEATHER) -> list[TransferResult]:
        """Each result pasted into the photo its face crop was cut from (face_crop.paste_back),
        over the union of the old and new hair with the face, feathered by `feather` times the
        result's side. Writes {face}_{shape}_{color}_{tag}_pasted.png."""
        label_map = self.models.parser.labels
        with self._timed("paste-back"):
            after = self._parsed_of([api.as_source(r.image, name=f"result:{r.path.name}") for r in results
                                     if r is not None])
            after = iter(after)
            after = [next(after) if r is not None else (None, None) for r in results]
            out = []
            for r, (labels_after, _) in zip(results, after):
                if r is None:
                    out.append(None)
                    continue
                face = self.sources[r.face]
                transform = face_crop.read_transform(face.path)
                photo = face_crop.load_source_photo(transform, what=str(face.path))
                region = face_crop.edited_region(label_map, self._parsed[r.face][0], labels_after)
                res = r.image.shape[0]
                region = np.asarray(resample.nearest_resize(jnp.asarray(region[None], jnp.float32), res)[0]) > 0
                alpha = face_crop.feathered_alpha(region, feather * res)
                pasted = face_crop.paste_back(photo, r.image, transform, alpha)
                path = image_io.save_png(r.path.with_name(r.path.stem + "_pasted.png"), pasted)
                out.append(dataclasses.replace(r, pasted=pasted, pasted_path=path))
        return out

    # ------------------------------------------------------------------ all
    def run(self, triples, edits=None) -> list[TransferResult]:
        """triples: [(face, shape, color)] or [(face, shape, color, structure)] of paths, PIL
        images, arrays or api.ImageSource (structure None or absent: the shape reference).
        edits: None, or one TargetEdit (or None) per triple, for its (face, shape) pair."""
        given = [tuple(t[:3]) if len(t) == 4 and t[3] is None else tuple(t) for t in triples]
        for t in given:
            if len(t) not in (3, 4) or any(x is None for x in t):
                raise ValueError(f"a triple of {len(t)} images with {sum(x is None for x in t)} missing: give "
                                 "(face, shape, color) or (face, shape, color, structure)")
        flat = iter(api.as_sources([x for t in given for x in t], self.progress))  # files read in parallel
        named = [tuple(next(flat) for _ in t) for t in given]
        sources = {s.name: s for s in api.identify([s for t in named for s in t])}
        self.sources.update(sources)
        given = [tuple(s.name for s in t) for t in named]
        quads = [(*t[:3], t[3] if len(t) == 4 else t[1]) for t in given]
        for t, edit in zip(quads, edits or ()):
            if edit is None or (edit.target is None and edit.shape_transform is None):
                continue
            pair = (t[0], t[1])
            if pair in self.pair_edits and self.pair_edits[pair].tag() != edit.tag():
                raise ValueError(f"{t[0]} with {t[1]}: two different target-mask edits for one pair (one per "
                                 "(face, shape) pair per run)")
            self.pair_edits[pair] = edit
        embedded = self.embed(list(sources.values()))
        # A failed image (its optimisation diverged) fails its triples only; the rest go on.
        live = [t for t in quads if all(n in embedded for n in t)]
        alignments = list(dict.fromkeys(a for t in live for a in _alignments(t)))
        with self._timed("parsing"):
            needed = {n for a in alignments for n in a}
            self._parsed_of([s for name, s in sources.items() if name in needed])
        # Results are written on background threads while the next batch runs; all are on
        # disk when run returns (or raises).
        with image_io.BackgroundWrites() as self._writes:
            try:
                aligned = self.align_pairs(alignments, sources, embedded)
                live = [t for t in live if all(a in aligned for a in _alignments(t))]
                blended = dict(zip(live, self.blend_triples(live, sources, embedded, aligned)))
            finally:
                self._writes = None
        results = [blended.get(t) for t in quads]
        self.triple_failures = [(t, self._reason(q)) for t, q, r in zip(given, quads, results) if r is None]
        return results

    def _reason(self, t) -> str:
        """Why triple t (face, shape, color, structure) has no result: the first failure of its
        images, alignments or itself."""
        related = {t, *t, *_alignments(t)}
        return next((reason for item, reason in self.failures if item in related), "failed")


def _references(shape, structure) -> str:
    """The shape and structure references in file names and messages: shape, or shape+structure."""
    return shape if structure == shape else f"{shape}+{structure}"


def _alignments(t) -> tuple:
    """The two alignments a triple (face, shape, color, structure) needs: the face to the
    structure reference under the (face, shape) target mask, and to the colour reference."""
    face, shape, color, structure = t
    return (face, shape, structure), (face, color, color)


SUMMARY_ROWS = 20  # results listed at the end of a run; the rest are in results.csv


def summary(results: list[TransferResult], timings: dict[str, float], listed: str | None = None) -> str:
    """The end-of-run table: time per stage, then each triple's output (the first
    SUMMARY_ROWS when `listed` names a file that lists them all)."""
    lines = ["| stage | seconds |", "| --- | ---: |"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()]
    lines += [f"| total | {sum(timings.values()):.1f} |", "", "| face | shape | color | result |",
              "| --- | --- | --- | --- |"]
    shown = results[:SUMMARY_ROWS] if listed else results
    lines += [f"| {r.face} | {_references(r.shape, r.structure)} | {r.color} | {r.path} |" for r in shown]
    if len(shown) < len(results):
        lines += ["", f"... and {len(results) - len(shown)} more: every result is listed in {listed}"]
    return "\n".join(lines)


def load_models(weights=None, dtype: str = "float32", parser_dtype: str = "float32"):
    """(Models, p-norm statistics) from a converted weights directory (stylegan2/, bisenet/,
    vgg16/), or the embedded default (tiny random models) when `weights` is None. dtype: the
    generator's and VGG16's compute dtype (api.with_dtype); parser_dtype: the face parser's,
    apart because its labels are the target masks themselves."""
    if weights is None:
        from barbershop_jax import demo
        parser = demo.embedded_parser()
    else:
        from barbershop_jax.models import bisenet
        parser = bisenet.load(weights)
    consts = api.load_models(weights, dtype)
    return Models(consts.generator, api.with_dtype(parser, parser_dtype), consts.vgg), consts.pca


_EMBED_FIELDS = {f.name for f in dataclasses.fields(embedding.EmbedConfig)}
_TRANSFER_FIELDS = {f.name for f in dataclasses.fields(TransferConfig)}


def split_options(options: dict):
    """Keyword options -> (EmbedConfig overrides, TransferConfig overrides). Names both know
    (learning_rate, noise, seed, chunk) go to both, as the official's one set of flags does."""
    unknown = set(options) - _EMBED_FIELDS - _TRANSFER_FIELDS
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return ({k: v for k, v in options.items() if k in _EMBED_FIELDS},
            {k: v for k, v in options.items() if k in _TRANSFER_FIELDS})


class HairTransfer:
    """The Python API.

        ht = HairTransfer("weights/")           # or HairTransfer() for the embedded tiny models
        result = ht.transfer("face.png", "shape.png", "color.png", sign="fidelity")
        result.image                            # (1024, 1024, 3) uint8
        results = ht.transfer_many([(f, s, c), ...])

    Images: paths, PIL images or uint8 arrays (H, W, 3) at the generator's size (others are
    resized with a warning). Options: any TransferConfig or EmbedConfig field (sign, smooth,
    seed, blend_steps, w_steps, ...), given here as defaults or per call. Outputs go to
    `out_dir` in the official layout (default: a temporary folder that lives as long as this
    object); embeddings and alignments are cached there, so no image is embedded twice.
    compile_cache: use XLA's persistent compilation cache (compile_cache.py), on by default.
    checkpoint_every: the optimisation loops save their state every so many steps under
    OUT/.resume/, so an interrupted run resumes mid-stage (resume.py); None turns it off.
    dtype: "bfloat16" runs the generator's and VGG16's convolutions in bfloat16 (faster on
    GPUs and TPUs; see api.with_dtype); the default "float32" matches the official code.
    parser_dtype: "bfloat16" runs the face parser in bfloat16 (the segmentation and alignment
    losses and the masks read from it); float32 by default.
    """

    def __init__(self, weights=None, out_dir=None, *, batch_size: int = 4, progress: bool = True, devices=None,
                 compile_cache: bool = True, checkpoint_every: int | None = resume.DEFAULT_EVERY,
                 dtype: str = "float32", parser_dtype: str = "float32", **options):
        import tempfile

        # The settings are checked before minutes of loading models.
        optimize.check_counts("HairTransfer", 1, batch_size=batch_size)
        embed_overrides, overrides = split_options(options)
        embedding.EmbedConfig(**embed_overrides)  # each raises a ValueError naming a bad setting
        TransferConfig(**overrides)
        if compile_cache:
            from barbershop_jax import compile_cache as cc
            cc.enable()
        self.models, self.pca = load_models(weights, dtype, parser_dtype)
        if out_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="barbershop-jax-")
            out_dir = self._tmp.name
        self.out_dir = Path(out_dir)
        self.batch_size, self.progress, self.devices = batch_size, progress, devices
        self.checkpoint_every = checkpoint_every
        self.failures: list = []  # of the last transfer_many: (triple, reason) of those without a result
        self.options = options
        self.timings: dict[str, float] = {}

    def pipeline(self, **options) -> Pipeline:
        embed_overrides, overrides = split_options({**self.options, **options})
        consts = embedding.Consts(self.models.generator, self.models.vgg, self.pca)
        return Pipeline(self.models, self.pca, self.out_dir, api.default_embed_config(consts, **embed_overrides),
                        TransferConfig(**overrides), batch_size=self.batch_size, progress=self.progress,
                        devices=self.devices, checkpoint_every=self.checkpoint_every)

    def transfer_many(self, triples, *, align=None, paste_back: bool = False, feather: float = FEATHER,
                      edits=None, regions=None, save_target_masks: bool = False, **options) -> list[TransferResult]:
        """Transfer every (face, shape, color) triple, or (face, shape, color, structure)
        quadruple (structure: the reference whose aligned F gives the region's structure;
        None or absent: the shape reference, as the official); batched, cached, in input
        order. A triple whose optimisation diverged (NaN or infinity) gives None, with its
        reason in `self.failures`; the others are unaffected.

        align: ordinary photos in, FFHQ crops made first (face_crop.Aligner; True for the
        default one, landmarks from a sidecar JSON or dlib); the crops go to OUT/aligned/.
        paste_back: each result is also pasted into the face's photo (the face must be a
        file whose crop transform {stem}.crop.json lies beside it, as align writes it).
        edits: one TargetEdit (or None) per triple: its (face, shape) pair's target mask given
        (an array, or an indexed PNG path) or its shape reference's region moved and scaled.
        regions: one region (or None: the `region` option, hair by default) per triple, e.g.
        "lips" or "brows,eyes"; the triples of each region run as one batch run.
        save_target_masks: also write OUT/target_masks/{face}_{ref}.png (indexed: values are
        class ids, in the label colours) and legend.json, to edit and give back (the folder
        is target_masks_{region} for a region other than hair)."""
        triples = list(triples)
        if align:
            aligner = align if isinstance(align, face_crop.Aligner) else face_crop.Aligner()
            triples, failures = align_inputs(triples, self.out_dir / "aligned",
                                             dataclasses.replace(aligner, size=self.models.generator.config.size))
            if failures:
                raise failures[0][1]
        if paste_back:
            for t in triples:  # before any optimisation: a face without a transform fails now
                face = t[0].path if isinstance(t[0], api.ImageSource) else t[0]
                if not isinstance(face, (str, Path)):
                    raise face_crop.FaceCropError("paste-back needs the face as a file with its crop transform "
                                                  "(from align-faces), not an in-memory image")
                face_crop.read_transform(face)
        regions = list(regions) if regions is not None else [None] * len(triples)
        if len(regions) != len(triples):
            raise ValueError(f"{len(regions)} regions for {len(triples)} triples: give one (or None) per triple")
        # One pipeline per region (its settings and file names), each checked before any work.
        groups = {}
        for i, region in enumerate(regions):
            groups.setdefault(region or None, []).append(i)
        pipelines = {region: self.pipeline(**{**options, **({"region": region} if region else {})})
                     for region in groups}
        labels = self.models.parser.labels
        size = next((pipeline.cfg.parse_size for pipeline in pipelines.values()), None)  # the same for every region
        edits = [None if e is None else dataclasses.replace(e, target=None if e.target is None else (
            target_mask.read_label_png(e.target, labels, size) if isinstance(e.target, (str, Path))
            else target_mask.check_target(e.target, labels, size))) for e in (edits or [])]
        if edits and len(edits) != len(triples):
            raise ValueError(f"{len(edits)} edits for {len(triples)} triples: give one (or None) per triple")
        results = [None] * len(triples)
        self.timings, self.failures = {}, []
        for region, indices in groups.items():
            pipeline = pipelines[region]
            pipeline.save_target_masks = save_target_masks
            try:
                done = pipeline.run([triples[i] for i in indices], [edits[i] for i in indices] if edits else None)
                if paste_back:
                    done = pipeline.paste_back(done, feather)
            finally:
                for stage, seconds in pipeline.timings.items():
                    self.timings[stage] = self.timings.get(stage, 0.0) + seconds
                self.failures += pipeline.triple_failures
            for i, r in zip(indices, done):
                results[i] = r
        return results

    def transfer_files(self, triples, *, wave: int = WAVE, edits=None, regions=None,
                       **kwargs) -> list[TransferResult | None]:
        """transfer_many for runs of any length, as the command line's batch mode runs them:
        `wave` triples at a time, each result kept as its names and file paths only (its
        arrays dropped: they are on disk), so that memory stays flat. At 1024 px a result and
        its alignments hold about 12 MB, more with a pasted photo, and transfer_many keeps
        them all until it returns: 10,000 triples would need over 100 GB. A later wave reads
        the embeddings and alignments that an earlier one made from the output folder.
        timings and failures add up over the waves."""
        triples = list(triples)
        out, timings, failures = [], {}, []
        for start, stop in optimize.waves(len(triples), wave, "triples"):
            part = slice(start, stop)
            results = self.transfer_many(triples[part], edits=edits[part] if edits else None,
                                         regions=regions[part] if regions is not None else None, **kwargs)
            for stage, seconds in self.timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
            failures += self.failures
            out += [None if r is None else dataclasses.replace(
                r, image=None, target_labels=None, latent_in=None, structure_f=None, face_mask=None, hair_mask=None,
                pasted=None) for r in results]
        self.timings, self.failures = timings, failures
        return out

    def transfer(self, face, shape, color, *, structure=None, target_mask=None, shape_transform=None,
                 **options) -> TransferResult:
        """One triple: the face with the region (hair by default; `region="lips"` etc.) shaped
        as in `shape`, structured as in `structure` (default: `shape`) and coloured as in
        `color`. target_mask (array or indexed PNG path) and shape_transform ((scale, dx, dy))
        edit the target mask (TargetEdit); takes transfer_many's other options too."""
        edit = TargetEdit(target_mask, shape_transform) if target_mask is not None or shape_transform else None
        result = self.transfer_many([(face, shape, color, structure)], edits=[edit], **options)[0]
        if result is None:
            raise api.NonFiniteError(self.failures[0][1])
        return result


def align_inputs(triples, out_dir, aligner: face_crop.Aligner, roles=None):
    """Replace the images at `roles` (0 face, 1 shape, 2 colour, 3 structure; None: all) of
    each triple by their FFHQ crops, each distinct photo aligned once. Returns (triples,
    [(triple, error)]): a triple whose photo has no usable face fails alone."""
    from barbershop_jax.landmarks import LandmarkError, LandmarkModelError

    crops, good, failures = {}, [], []
    for t in triples:
        new, error = list(t), None
        for i in (range(len(t)) if roles is None else roles):
            if t[i] is None:  # no structure reference
                continue
            photo = t[i].path if isinstance(t[i], api.ImageSource) else t[i]
            if not isinstance(photo, (str, Path)):
                error = error or face_crop.FaceCropError("alignment needs image files, not in-memory images")
                continue
            if str(photo) not in crops:
                try:
                    crops[str(photo)] = aligner.align_one(photo, out_dir).crop_path
                except LandmarkModelError:
                    raise  # no photo can succeed: stop here
                except (face_crop.FaceCropError, LandmarkError, image_io.ImageError) as e:
                    crops[str(photo)] = e
            if isinstance(crops[str(photo)], Exception):
                error = error or crops[str(photo)]
            else:
                new[i] = crops[str(photo)]
        if error is not None:
            failures.append((t, error))
        else:
            good.append(tuple(new))
    return good, failures


def check_triples(triples, size: int | None = None, progress: bool = False):
    """Split triples into those whose images all read and those that do not (batch mode goes
    on without the latter). Returns (good triples, [(triple, one-line reason)]); in the good
    ones every file is an api.ImageSource, read and hashed here once, in parallel
    (api.read_sources; its pixels are not kept). `size`: refuse images that are not size x
    size (otherwise they are resized, with a warning)."""
    good, failures = [], []
    checked = api.read_sources([x for t in triples for x in t if isinstance(x, (str, Path))], progress)
    for path, source in checked.items():
        if isinstance(source, image_io.ImageError):
            checked[path] = str(source)
        elif size is not None and source.shape[:2] != (size, size):
            h, w = source.shape[:2]
            checked[path] = f"{path}: {w}x{h}, not the generator's {size}x{size} (refused by --no-resize)"
    for t in triples:
        reason, sources = None, []
        for image in t:
            if isinstance(image, (str, Path)):
                image = checked[str(image)]
                if isinstance(image, str):
                    reason = reason or image
            sources.append(image)
        if reason:
            failures.append((t, reason))
        else:
            good.append(tuple(sources))
    return good, failures


def parts_by_face(faces: list[str], n_parts: int) -> list[int]:
    """The part (0 .. n_parts - 1) of each row, for `transfer --part K/N` on N hosts that share
    no coordinator: the rows of one face stay together, because every alignment and blend of
    a row is the face's (with its shape or colour reference), so no part redoes another's; the
    faces go, most rows first, to the part with the fewest rows so far. The same rows give the
    same parts on every host."""
    counts = collections.Counter(faces)
    load, part_of = [0] * n_parts, {}
    for face in sorted(counts, key=lambda f: (-counts[f], f)):
        part = min(range(n_parts), key=lambda k: (load[k], k))
        part_of[face] = part
        load[part] += counts[face]
    return [part_of[face] for face in faces]


INPUT_COLUMNS = ("face", "shape", "color", "structure")


def _write_csv(path: Path, header, rows) -> Path:
    """A CSV file written whole or not at all; each row's missing middle cells (a triple
    without a structure reference) left empty: rows are (inputs, then the other cells)."""
    import csv
    import io

    n_inputs = len(header) - len(rows[0][1]) if rows else 0
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for inputs, rest in rows:
        writer.writerow([*(str(x) for x in inputs), *[""] * (n_inputs - len(inputs)), *rest])
    return image_io.atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def write_results(out_dir, done, name: str = "results.csv") -> Path:
    """OUT/results.csv (or `name`): a row per result, in the input's order: its input files
    (structure where any triple has one), region (empty: the run's), the result PNG and, with
    paste-back, the pasted photo. done: [(triple of paths or api.ImageSource, region, result)]."""
    columns = INPUT_COLUMNS[:max([3, *(len(t) for t, _, _ in done)])]
    rows = [([getattr(x, "path", None) or getattr(x, "name", x) for x in t],
             [region or "", str(r.path), str(r.pasted_path or "")]) for t, region, r in done]
    return _write_csv(Path(out_dir) / name, [*columns, "region", "result", "pasted"], rows)


def write_failures(out_dir, failures, columns=None, name: str = "failures.csv") -> Path:
    """OUT/failures.csv (or `name`): the columns of each failed item (empty where it has fewer),
    then the error. columns: default face, shape, color (and structure where an item has one)."""
    if columns is None:
        columns = INPUT_COLUMNS[:max([3, *(len(item) for item, _ in failures)])]
    rows = [(item, [str(reason)]) for item, reason in failures]
    return _write_csv(Path(out_dir) / name, [*columns, "error"], rows)
