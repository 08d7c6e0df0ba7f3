"""The complete hairstyle transfer, for one triple or thousands: files, caching and batches
around the pure stages (stages/: embed, target_mask, align, blend).

For triples (face, shape, colour), or quadruples (face, shape, colour, structure) whose
structure reference differs from the shape reference:
1. every distinct image is embedded once, in W+ then FS (pipeline/embed.py, through the store);
2. every distinct alignment gets its target mask and alignment, batched: the face aligned to
   the shape reference (or to the structure reference, when one is given) under the target
   mask of (face, shape), and to the colour reference under that of (face, colour) (the
   official aligns (face, colour) only when colour != shape; an alignment two triples share
   is done once);
3. every triple is blended, batched over triples.
Everything is done for the transferred region (TransferConfig.region, hair by default).

Output layout under OUT (the official names, so the official code can read ours):

    W+/{name}.npy, FS/{name}.npz                        embeddings (store.py)
    vis_mask_{face}_{shape}_{tag}.png                   the target mask, coloured
    Align_{tag}/{face}_{ref}.npz  (.png)                latent_in, latent_F (NCHW)
    Blend_{tag}/{face}_{shape}_{color}.npz  (.png)      latent_in, latent_F
    {face}_{shape}_{color}_{tag}.png                    the result

with tag = sign (official) for hair, {sign}_{region} otherwise (e.g. realistic_brows+eyes),
and {shape} written {shape}+{structure} where a structure reference is given (the target
mask stays the (face, shape) one). Ours beside them: Align_{tag}/{face}_{ref}_labels.png
(the target label map, 8-bit grey levels = class ids) and a JSON key beside each npz. As in
store.py, an entry whose key matches (same images, weights and settings) is reused, so a
re-run skips finished work; arrays are written before their key, each atomically.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax import config as config_lib
from barbershop_jax.config import DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_EVERY, DEFAULT_REGION, FEATHER
from barbershop_jax.config import EmbedConfig, TransferConfig, check_numbers
from barbershop_jax.models.bundle import Models
from barbershop_jax.ops import resample
from barbershop_jax.pipeline import embed as embed_lib
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.files import sources as sources_lib
from barbershop_jax.pipeline.store import cache as cache_lib
from barbershop_jax.pipeline.align import Aligning
from barbershop_jax.pipeline.blend import Blending
from barbershop_jax.pipeline.store.records import TargetEdit, TransferResult, alignments, references
from barbershop_jax.stages.loop import image_key
from barbershop_jax.stages.parse import parse_images

log = logging.getLogger("barbershop_jax")


class _Done:
    """The future of a write done at once (outside a run's BackgroundWrites)."""

    @staticmethod
    def exception():
        return None


def _batches(items, batch_size):
    for i in range(0, len(items), batch_size):
        yield items[i:i + batch_size]


class Pipeline(Aligning, Blending):
    """Runs triples through every stage with one set of models, settings and output folder.

    Internally a triple is (face, shape, color, structure), structure = shape unless given; an
    alignment is (face, mask reference, latent reference): the face aligned to the latent
    reference under the target mask of (face, mask reference)."""

    def __init__(self, models: Models, out_dir, embed_cfg: EmbedConfig, cfg: TransferConfig, *,
                 batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True, devices=None,
                 checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY, reuse: cache_lib.Reuse | None = None,
                 pad_batches: bool = False):
        check_numbers("Pipeline", batch_size=batch_size)
        if embed_cfg.fs_block != cfg.fs_block:
            raise ValueError(f"the embedding's F is at block {embed_cfg.fs_block}, the transfer's at {cfg.fs_block}: "
                             "give fs_block to both (HairTransfer(fs_block=...) does)")
        self.models = models
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
        self.pad_batches = pad_batches  # a stage's one short batch padded too (batching.batches)
        self.weights = cache_lib.transfer_weights(models)
        g = models.generator.config
        self.latent_shape = (g.n_latent, g.style_dim)
        self.f_shape = config_lib.f_shape(g, self.cfg.fs_block)
        self.timings: dict[str, float] = {}
        # Which finished entries of OUT this run may use (reuse.fresh: only its own), and which it used.
        self.reuse = cache_lib.Reuse() if reuse is None else reuse.share()
        self._parsed: dict[str, tuple] = {}
        self.sources: dict[str, sources_lib.ImageSource] = {}  # every input of `run`, by name
        self.decoded = sources_lib.DecodedImages(self.size)  # each image decoded once for the run
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
            pixels = np.stack([self.decoded.pixels(s) for s in batch])
            # Every batch padded to batch_size (a forward pass): one compilation.
            pad = self.batch_size - len(batch)
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)]) if pad > 0 else pixels
            labels, blend_labels = parse_images(self.models.parser, jnp.asarray(pixels), self.size, self.cfg.parse_size,
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
        return image_key(self.cfg.seed, cache_lib.digest(*hashes))

    def _edit(self, face, ref) -> TargetEdit:
        return self.pair_edits.get((face, ref)) or TargetEdit()

    @staticmethod
    def _stem(face, shape, ref) -> str:
        """{face}_{shape}, or {face}_{shape}+{ref} for an alignment to another latent reference."""
        return f"{face}_{references(shape, ref)}"

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
        failed = []
        with self._timed("embedding"):
            # Every image of this process's triples, also under jax.distributed (where embed
            # would embed only this process's share of them).
            done = embed_lib.embed(sources, self.out, self.models, self.embed_cfg, batch_size=self.batch_size,
                                   progress=self.progress, devices=self.devices,
                                   checkpoint_every=self.checkpoint_every, failures=failed, split_processes=False,
                                   decoded=self.decoded, reuse=self.reuse, pad_batches=self.pad_batches)
        self.failures += failed
        return {e.name: e for e in done}

    def _write(self, fn, *args, after=(), cleanup: bool = False):
        """fn(*args) on the run's writer threads (image_io.BackgroundWrites: `after`, `cleanup`),
        or now outside a run."""
        if self._writes is None:
            if not any(f.exception() is not None for f in after):
                fn(*args)
            return _Done()
        return self._writes.submit(fn, *args, after=after, cleanup=cleanup)

    def paste_back(self, results: list[TransferResult], feather: float = FEATHER) -> list[TransferResult]:
        """Each result pasted into the photo its face crop was cut from (face_crop.paste_back),
        over the union of the old and new hair with the face, feathered by `feather` times the
        result's side. Writes {face}_{shape}_{color}_{tag}_pasted.png."""
        label_map = self.models.parser.labels
        with self._timed("paste-back"):
            after = self._parsed_of([sources_lib.as_source(r.image, name=f"result:{r.path.name}") for r in results
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
    def inputs(self, triples, edits=None):
        """The inputs of `run` read, named and checked: (triples of names as given, quadruples
        (face, shape, color, structure) of names, {name: sources.ImageSource}); the edits
        registered by (face, shape) pair. plan.py counts a run's work from them."""
        given = [tuple(t[:3]) if len(t) == 4 and t[3] is None else tuple(t) for t in triples]
        for t in given:
            if len(t) not in (3, 4) or any(x is None for x in t):
                raise ValueError(f"a triple of {len(t)} images with {sum(x is None for x in t)} missing: give "
                                 "(face, shape, color) or (face, shape, color, structure)")
        # Files read in parallel, each decoded once for the hash and every stage of the run.
        flat = iter(self.decoded.adopt(s) for s in sources_lib.as_sources([x for t in given for x in t], self.progress,
                                                                          keep_pixels=True))
        named = [tuple(next(flat) for _ in t) for t in given]
        sources = {s.name: s for s in sources_lib.identify([s for t in named for s in t])}
        self.sources.update(sources)
        given = [tuple(s.name for s in t) for t in named]
        quads = [(*t[:3], t[3] if len(t) == 4 else t[1]) for t in given]
        self._check_name_lengths(quads, sources)
        for t, edit in zip(quads, edits or ()):
            if edit is None or (edit.target is None and edit.shape_transform is None):
                continue
            pair = (t[0], t[1])
            if pair in self.pair_edits and self.pair_edits[pair].tag() != edit.tag():
                raise ValueError(f"{t[0]} with {t[1]}: two different target-mask edits for one pair (one per "
                                 "(face, shape) pair per run)")
            self.pair_edits[pair] = edit
        return given, quads, sources

    def _check_name_lengths(self, quads, sources):
        """A triple's result file joins its image names: one too long to write is refused
        before any work, naming the images, rather than failing when the result is written."""
        for t in quads:
            longest = f".{self._triple_stem(t)}_{self.tag}_pasted.png.{'x' * 8}.tmp"  # the pasted result's temp file
            if len(os.fsencode(longest)) > sources_lib.NAME_MAX:
                files = ", ".join(image_io.shown_path(sources[n].path or n) for n in dict.fromkeys(t))
                raise ValueError(f"{files}: the result's file name would be {len(os.fsencode(longest))} bytes, over "
                                 f"the {sources_lib.NAME_MAX} a file name may have; shorten the image names")

    def run(self, triples, edits=None) -> list[TransferResult]:
        """triples: [(face, shape, color)] or [(face, shape, color, structure)] of paths, PIL
        images, arrays or sources.ImageSource (structure None or absent: the shape reference).
        edits: None, or one TargetEdit (or None) per triple, for its (face, shape) pair."""
        given, quads, sources = self.inputs(triples, edits)
        embedded = self.embed(list(sources.values()))
        # A failed image (its optimisation diverged) fails its triples only; the rest go on.
        live = [t for t in quads if all(n in embedded for n in t)]
        pairs = list(dict.fromkeys(a for t in live for a in alignments(t)))
        with self._timed("parsing"):
            needed = {n for a in pairs for n in a}
            self._parsed_of([s for name, s in sources.items() if name in needed])
        # Results are written on background threads while the next batch runs; all are on
        # disk when run returns (or raises).
        with image_io.BackgroundWrites() as self._writes:
            try:
                aligned = self.align_pairs(pairs, sources, embedded)
                live = [t for t in live if all(a in aligned for a in alignments(t))]
                blended = dict(zip(live, self.blend_triples(live, sources, embedded, aligned)))
            finally:
                self._writes = None
        results = [blended.get(t) for t in quads]
        self.triple_failures = [(t, self._reason(q)) for t, q, r in zip(given, quads, results) if r is None]
        return results

    def _reason(self, t) -> str:
        """Why triple t (face, shape, color, structure) has no result: the first failure of its
        images, alignments or itself."""
        related = {t, *t, *alignments(t)}
        return next((reason for item, reason in self.failures if item in related), "failed")
