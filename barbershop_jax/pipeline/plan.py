"""A run's plan, told before any work: how many images it embeds, pairs it aligns and
triples it blends (each distinct one once; those the output folder holds are reused), in how
many batches of how many steps, and how long the steps will take, predicted from the steps
this machine measured in earlier runs (step_times.py). Batch runs and grids print it first."""
from __future__ import annotations

import dataclasses
import math

from barbershop_jax.pipeline.store import step_times
from barbershop_jax.pipeline.store import cache as cache_lib
from barbershop_jax.pipeline.store.records import alignments

# The stages as their progress bars name them (step_times keys), with their work's unit.
STAGES = (("W+ embedding", "image"), ("FS embedding", "image"), ("Alignment", "pair"), ("Blend", "triple"))


@dataclasses.dataclass
class StagePlan:
    stage: str
    unit: str
    total: int             # distinct items of the run
    todo: int              # those the output folder does not hold
    steps: int             # per batch
    batch_size: int
    seconds_per_step: float | None = None  # measured here before, at this batch size

    @property
    def batches(self) -> int:
        return math.ceil(self.todo / self.batch_size)

    @property
    def seconds(self) -> float | None:
        if not self.todo or not self.steps:
            return 0.0
        return None if self.seconds_per_step is None else self.batches * self.steps * self.seconds_per_step


@dataclasses.dataclass
class Plan:
    transfers: int
    stages: list            # of StagePlan
    title: str = ""         # e.g. "3 faces x 3 hairstyles"

    def stage(self, name) -> StagePlan:
        return next(s for s in self.stages if s.stage == name)

    @property
    def seconds(self) -> float | None:
        """Predicted seconds of all the steps, None while a stage with work was never measured."""
        parts = [s.seconds for s in self.stages]
        return None if any(p is None for p in parts) else sum(parts)

    def describe(self) -> str:
        lines = [f"plan: {self.title + ' = ' if self.title else ''}{self.transfers} transfer"
                 f"{'s' if self.transfers != 1 else ''}"]
        for s in self.stages:
            found = f"{s.total - s.todo} found in the output folder, " if s.total - s.todo else ""
            work = (f"{s.batches} batch{'es' if s.batches != 1 else ''} of up to {s.batch_size} x {s.steps} steps"
                    if s.todo and s.steps else "nothing to run")
            rate = "" if s.seconds is None or not s.todo else f": about {duration(s.seconds)}"
            lines.append(f"  {s.stage}: {s.total} {s.unit}{'s' if s.total != 1 else ''} ({found}{work}){rate}")
        unmeasured = [s.stage for s in self.stages if s.seconds is None]
        if unmeasured:
            lines.append(f"  predicted time: not known yet ({', '.join(unmeasured)} never measured on this machine "
                         "at this size and batch size; this run measures them)")
        else:
            lines.append(f"  predicted time: about {duration(self.seconds)} of optimisation steps, from the steps "
                         "measured here before (compilation not counted)")
        return "\n".join(lines)


def duration(seconds: float) -> str:
    """A predicted time as people say it: "40 s", "12 min", "2.5 h"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def plan(pipelines: dict, triples, edits=None, regions=None, *, dtype="float32", title="") -> Plan:
    """The plan of HairTransfer.transfer_many(triples, edits=edits, regions=regions):
    pipelines is {region or None: its run.Pipeline} (their inputs are read here: give
    sources.ImageSource items to read nothing). No model runs."""
    regions = list(regions) if regions is not None else [None] * len(triples)
    edits = list(edits) if edits else [None] * len(triples)
    ctx = next(iter(pipelines.values())).context
    images, counts = {}, {"Alignment": [0, 0], "Blend": [0, 0]}
    for region, pipeline in pipelines.items():
        rows = [i for i, r in enumerate(regions) if (r or None) == region]
        if rows:
            _, quads = pipeline.inputs([triples[i] for i in rows], [edits[i] for i in rows])
            images.update(pipeline.context.sources)
            _count_transfers(pipeline.context, quads, counts)
    store = cache_lib.EmbeddingCache(ctx.layout.root, cache_lib.embedding_weights(ctx.models))
    embed_cfg = ctx.embed_cfg

    def todo(path_of, key_of):  # --fresh: only what this run makes is reused, so every entry is to do
        return sum(not ctx.reuse.finds(path_of(s.name), key_of(s.image_hash, embed_cfg)) for s in images.values())
    counts.update({"W+ embedding": (len(images), todo(ctx.layout.w_plus, store.w_key)),
                   "FS embedding": (len(images), todo(ctx.layout.fs, store.fs_key))})
    return predict(counts, stage_steps(embed_cfg, ctx.cfg), ctx.size, dtype, ctx.settings.batch_size,
                   transfers=len(triples), title=title)


def stage_steps(embed_cfg, cfg) -> dict:
    """The optimisation steps of one batch of each stage (STAGES' names) under these configs
    (EmbedConfig, TransferConfig)."""
    return {"W+ embedding": embed_cfg.w_steps, "FS embedding": embed_cfg.fs_steps,
            "Alignment": 2 * cfg.inpaint_steps + cfg.align_steps1 + cfg.align_steps2,  # with the target mask
            "Blend": cfg.blend_steps}


def predict(counts: dict, steps: dict, size: int, dtype: str, batch_size: int, *, transfers: int,
            title: str = "") -> Plan:
    """The plan of work counted beforehand: counts {stage: (total, todo)} of distinct items,
    steps {stage: steps per batch} (stage_steps), timed from the steps this machine measured
    before for a `size` px generator computing in `dtype` at `batch_size` (step_times.py)."""
    measured, where = step_times.read(), step_times.context(size, dtype, batch_size)
    return Plan(transfers, [StagePlan(name, unit, *counts[name], steps[name], batch_size,
                                      step_times.seconds_per_step(measured, where, name)) for name, unit in STAGES],
                title)


def distinct_work(triples) -> dict:
    """{stage: distinct items} of transferring `triples` of image names, (face, shape, color)
    or with a structure reference (default: the shape), as a run counts them: each image
    embedded once, each alignment and each triple done once however many triples share it."""
    quads = [(*t[:3], t[3] if len(t) == 4 and t[3] is not None else t[1]) for t in triples]
    images = {name for t in quads for name in t}
    return {"W+ embedding": len(images), "FS embedding": len(images),
            "Alignment": len({a for t in quads for a in alignments(t)}), "Blend": len(set(quads))}


def _count_transfers(ctx, quads, counts):
    """Adds the distinct alignments and triples of a region's run, and those to compute, to
    counts[stage] = [total, todo]."""
    layout, found = ctx.layout, ctx.reuse.finds
    for a in dict.fromkeys(a for t in quads for a in alignments(t)):
        counts["Alignment"][0] += 1
        counts["Alignment"][1] += not (found(layout.alignment(*a), ctx.align_key(*a))
                                       and layout.alignment_labels(*a).is_file())
    for t in dict.fromkeys(quads):
        counts["Blend"][0] += 1
        counts["Blend"][1] += not (found(layout.blend(t), ctx.blend_key(t)) and layout.result(t).is_file())
