"""The complete hairstyle transfer of a batch of triples, stage by stage through the output
folder (its layout: store/layout.py):

1. embed.py: every distinct image embedded once, in W+ then FS;
2. parse.py: the face parser's labels of every image the alignments use;
3. target_mask.py: each distinct alignment's target mask, of its (face, shape) pair;
4. align.py: each alignment: the face aligned to the shape reference (or to the structure
   reference, when one is given) under that mask, and to the colour reference under the mask
   of (face, colour) (the official aligns (face, colour) only when colour != shape; an
   alignment two triples share is done once);
5. blend.py: every triple blended;
and, when asked, paste_back.py: each result pasted into its face's photo.

Everything is done for the transferred region (TransferConfig.region, hair by default). An
entry whose key matches (same images, weights and settings) is reused, so a re-run skips
finished work (store/cache.py); a failure (an optimisation that diverged) fails its triples
only.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import threading

import jax
import numpy as np

from barbershop_jax.config import FEATHER, EmbedConfig, TransferConfig
from barbershop_jax.models.bundle import Models
from barbershop_jax.pipeline import align as align_stage
from barbershop_jax.pipeline import blend as blend_stage
from barbershop_jax.pipeline import embed as embed_stage
from barbershop_jax.pipeline import paste_back as paste_back_stage
from barbershop_jax.pipeline import target_mask as target_mask_stage
from barbershop_jax.pipeline.context import TransferContext
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.files import sources as sources_lib
from barbershop_jax.pipeline.parse import parse
from barbershop_jax.pipeline.runtime import compile_ahead
from barbershop_jax.pipeline.runtime.settings import RunSettings
from barbershop_jax.pipeline.store import cache
from barbershop_jax.pipeline.store.layout import Layout
from barbershop_jax.pipeline.store.records import TransferResult, alignments
from barbershop_jax.stages import rehearsal

log = logging.getLogger("barbershop_jax")


class Pipeline:
    """Runs triples through every stage with one set of models, settings and output folder
    (a TransferContext that its stages share)."""

    def __init__(self, models: Models, out_dir, embed_cfg: EmbedConfig, cfg: TransferConfig,
                 settings: RunSettings = RunSettings(), *, reuse: cache.Reuse | None = None):
        if embed_cfg.fs_block != cfg.fs_block:
            raise ValueError(f"the embedding's F is at block {embed_cfg.fs_block}, the transfer's at {cfg.fs_block}: "
                             "give fs_block to both (HairTransfer(fs_block=...) does)")
        cfg = cfg.resolve(models.generator.config.size)
        # Which finished entries of OUT this run may use (reuse.fresh: only its own), and which it used.
        self.context = TransferContext(layout=Layout(out_dir, cfg.sign, cfg.region), settings=settings,
                                       reuse=cache.Reuse() if reuse is None else reuse.share(), models=models,
                                       embed_cfg=embed_cfg, cfg=cfg)
        self.triple_failures: list = []  # (triple of names, reason): the triples without a result
        self.save_target_masks = False  # also write OUT/target_masks{region}/{face}_{ref}.png + legend.json

    def run(self, triples, edits=None) -> list[TransferResult | None]:
        """triples: [(face, shape, color)] or [(face, shape, color, structure)] of paths, PIL
        images, arrays or sources.ImageSource (structure None or absent: the shape reference).
        edits: None, or one TargetEdit (or None) per triple, for its (face, shape) pair."""
        ctx = self.context
        given, quads = self.inputs(triples, edits)
        # Results are written on background threads while the next batch runs; all are on
        # disk when run returns (or raises).
        with self._rehearsal(quads), image_io.BackgroundWrites() as ctx.writes:
            try:
                blended = self.run_stages(quads)
            finally:
                ctx.writes = None
        results = [blended.get(t) for t in quads]
        self.triple_failures = [(t, self._reason(q)) for t, q, r in zip(given, quads, results) if r is None]
        return results

    def run_stages(self, quads) -> dict:
        """{quadruple: TransferResult} of each one that did not fail: every stage in turn, on
        quadruples of names whose sources the context holds (`inputs`)."""
        ctx = self.context
        embedded = self.embed(list(ctx.sources.values()))
        live = [t for t in quads if all(n in embedded for n in t)]
        pairs = list(dict.fromkeys(a for t in live for a in alignments(t)))
        with ctx.timed("parsing"):
            parse(ctx, [ctx.sources[n] for n in dict.fromkeys(n for a in pairs for n in a)])
        aligned, todo = align_stage.found(ctx, pairs)
        with align_stage.progress(ctx, todo) as bar:  # one bar, "Alignment", over both stages
            targets = target_mask_stage.target_masks(ctx, todo, bar)
            aligned.update(align_stage.align(ctx, todo, embedded, targets, bar))
        if self.save_target_masks:
            target_mask_stage.save_target_masks(ctx, aligned)
        live = [t for t in live if all(a in aligned for a in alignments(t))]
        return blend_stage.blend(ctx, live, embedded, aligned)

    @contextlib.contextmanager
    def _rehearsal(self, quads):
        """The run's rehearsal (stages/rehearsal.py) on a thread of its own while the block
        runs: the same stages on zeros of the same shapes, nothing read from the output folder
        or written to it (stage_runner.py). Not when the folder holds every blend of the run
        (their JSON keys read first: nothing to compile), under jax.distributed (each
        process's programs are collective), or with compile_ahead off."""
        ctx = self.context
        if (not ctx.settings.compile_ahead or jax.process_count() > 1
                or all(ctx.reuse.finds(ctx.layout.blend(t), ctx.blend_key(t)) for t in quads)):
            yield
            return
        compiler = compile_ahead.CompilerThreads()
        stand_in = self._stand_in()

        def rehearse():
            try:
                with rehearsal.rehearsing(compiler):
                    stand_in.run_stages(quads)
            except Exception as e:  # the run meets any real error itself
                log.debug("the rehearsal stopped: %r", e)
        # Not a daemon: a thread killed at exit in the middle of an XLA compilation aborts the process.
        thread = threading.Thread(target=rehearse, name="barbershop-jax-rehearsal")
        thread.start()
        try:
            yield
        finally:
            compiler.close()

    def _stand_in(self) -> Pipeline:
        """This pipeline as a rehearsal runs it: its sources' pixels zeros, no progress bars,
        checkpoints or writes, nothing reused from the output folder, a context of its own."""
        ctx = self.context
        zeros = np.zeros((ctx.size, ctx.size, 3), np.uint8)  # one array for every image
        stand_in = copy.copy(self)
        stand_in.save_target_masks = False
        stand_in.context = dataclasses.replace(
            ctx, settings=dataclasses.replace(ctx.settings, progress=False, checkpoint_every=None),
            reuse=cache.Reuse(), decoded=None, timings={}, failures=[],
            writes=None, sources={n: dataclasses.replace(s, pixels=zeros) for n, s in ctx.sources.items()},
            edits=dict(ctx.edits), parsed={})
        return stand_in

    def compile_ahead(self, triples) -> compile_ahead.CompilerThreads:
        """The programs a run of `triples` would compile, handed to compiler threads by a
        rehearsal on this thread (seconds: nothing is computed, read or written); returns the
        compiler, whose `futures` end as the compilations do. A later run of triples of the
        same shapes and settings, in this process, then compiles nothing (a web server does
        this at start-up, so that its first request does not wait for XLA)."""
        compiler = compile_ahead.CompilerThreads()
        _, quads = self.inputs(triples)
        with rehearsal.rehearsing(compiler):
            self._stand_in().run_stages(quads)
        return compiler

    def embed(self, sources) -> dict:
        """{name: embed.EmbeddedImage} of each source: every image of this process's triples,
        also under jax.distributed (where `embed.embed` embeds this process's share only)."""
        ctx = self.context
        return {e.name: e for e in embed_stage.embed_images(ctx, ctx.models, ctx.embed_cfg, sources)}

    def parse(self, sources) -> list:
        """(labels at parse_size, labels at blend_parse_size) of each source (parse.py)."""
        return parse(self.context, sources)

    def paste_back(self, results: list, feather: float = FEATHER) -> list[TransferResult | None]:
        """Each result pasted into the photo its face crop was cut from (paste_back.py)."""
        with self.context.timed("paste-back"):
            return paste_back_stage.paste_back(self.context, results, feather)

    def inputs(self, triples, edits=None):
        """The inputs of `run` read, named and checked: (triples of names as given, quadruples
        (face, shape, color, structure) of names); their sources and the edits registered in
        the context, by name and by (face, shape) pair. plan.py counts a run's work from them."""
        ctx = self.context
        given = [tuple(t[:3]) if len(t) == 4 and t[3] is None else tuple(t) for t in triples]
        for t in given:
            if len(t) not in (3, 4) or any(x is None for x in t):
                raise ValueError(f"a triple of {len(t)} images with {sum(x is None for x in t)} missing: give "
                                 "(face, shape, color) or (face, shape, color, structure)")
        # Files read in parallel, each decoded once for the hash and every stage of the run.
        flat = iter(ctx.decoded.adopt(s) for s in sources_lib.as_sources([x for t in given for x in t],
                                                                         ctx.settings.progress, keep_pixels=True))
        named = [tuple(next(flat) for _ in t) for t in given]
        ctx.sources.update({s.name: s for s in sources_lib.identify([s for t in named for s in t])})
        given = [tuple(s.name for s in t) for t in named]
        quads = [(*t[:3], t[3] if len(t) == 4 else t[1]) for t in given]
        self._check_name_lengths(quads)
        for t, edit in zip(quads, edits or ()):
            if edit is None or (edit.target is None and edit.shape_transform is None):
                continue
            pair = (t[0], t[1])
            if pair in ctx.edits and ctx.edits[pair].tag() != edit.tag():
                raise ValueError(f"{t[0]} with {t[1]}: two different target-mask edits for one pair (one per "
                                 "(face, shape) pair per run)")
            ctx.edits[pair] = edit
        return given, quads

    def _check_name_lengths(self, quads):
        """A triple's result file joins its image names: one too long to write is refused
        before any work, naming the images, rather than failing when the result is written."""
        for t in quads:
            longest = f".{self.context.layout.pasted(t).name}.{'x' * 8}.tmp"  # the pasted result's temp file
            if len(os.fsencode(longest)) > sources_lib.NAME_MAX:
                files = ", ".join(image_io.shown_path(self.context.sources[n].path or n) for n in dict.fromkeys(t))
                raise ValueError(f"{files}: the result's file name would be {len(os.fsencode(longest))} bytes, over "
                                 f"the {sources_lib.NAME_MAX} a file name may have; shorten the image names")

    def _reason(self, t) -> str:
        """Why triple t (face, shape, color, structure) has no result: the first failure of its
        images, alignments or itself."""
        related = {t, *t, *alignments(t)}
        return next((reason for item, reason in self.context.failures if item in related), "failed")
