"""The one loop every batched stage runs through: the entries the output folder holds are
reused, the others computed batch by batch under a progress bar, each batch's optimisation
loops checkpointed (store/resume.py) so that an interrupted run resumes mid-stage, an item
whose result holds NaN or infinity failed alone (nothing written for it), and the results
written on the run's writer threads while the next batch runs; a batch's checkpoint is
cleared once its results are on disk. In a rehearsal (stages/rehearsal.py) a stage reads
nothing from the folder, runs its first batch only, which compiles its programs, and writes
nothing."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import jax
import numpy as np

from barbershop_jax.pipeline import loop_hook
from barbershop_jax.pipeline.context import RunContext
from barbershop_jax.pipeline.runtime import progress as progress_lib
from barbershop_jax.pipeline.runtime.batching import batches
from barbershop_jax.pipeline.store import resume
from barbershop_jax.stages import rehearsal


@dataclasses.dataclass(frozen=True)
class Stage:
    """A batched stage, as its runner (embed.py, target_mask.py, align.py, blend.py) gives it.

    Items are hashable (an image name, an alignment, a triple); a batch's outputs are a
    dict of arrays whose first axis is the batch."""
    name: str                       # its progress bar and measured step times ("W+ embedding")
    unit: str                       # what an item is, for the bar ("image", "pair", "triple")
    steps: int                      # optimisation steps per batch
    timing: str                     # its row in the end-of-run table ("embedding")
    checkpoint: str                 # its folder under OUT/.resume/ (and the batches' compile name)
    compute: Callable               # (padded items, hook, bar) -> {field: (B, ...) array}
    key: Callable | None = None     # item -> cache key (None: nothing cached, nothing written)
    kind: str = ""                  # its name in store.Reuse's counts ("W+", "alignment", ...)
    cached: Callable | None = None  # (item, key) -> the result the folder holds, or None
    write: Callable | None = None   # (item, key, outputs of the item) -> None, on a writer thread
    result: Callable = lambda item, row: row  # (item, outputs of the item) -> its result
    finite: tuple = ()              # the output fields that must be finite (the rest may not be)
    diverged: Callable | None = None  # item -> (what failed, reason): its failure


def lookup(ctx: RunContext, stage: Stage, items) -> tuple[dict, list]:
    """({item: result} of the entries the output folder holds and `ctx.reuse` allows, the
    other items): the stage's cache check, counted in ctx.reuse. A rehearsal reads nothing
    (every item is to do): reading an entry has effects (a damaged one loses its key)."""
    if rehearsal.active():
        return {}, list(items)
    found, todo = {}, []
    for item in items:
        key = stage.key(item)
        hit = stage.cached(item, key) if ctx.reuse.allows(key) else None
        if hit is not None:
            found[item] = hit
            ctx.reuse.found(stage.kind, key)
        else:
            todo.append(item)
    return found, todo


def run(ctx: RunContext, stage: Stage, items) -> dict:
    """{item: result} of each item: found in the output folder, or computed (and written).
    An item that diverged has none: its failure is added to ctx.failures."""
    found, todo = lookup(ctx, stage, items) if stage.cached is not None else ({}, list(items))
    return {**found, **compute(ctx, stage, todo)}


def progress(ctx: RunContext, name: str, unit: str, n_items: int, steps: int) -> progress_lib.StageProgress:
    """The bar of a stage (or of stages that share one) over n_items in batches of `steps`."""
    return progress_lib.StageProgress(name, n_items, ctx.settings.batch_size, steps, enabled=ctx.settings.progress,
                                      unit=unit)


def compute(ctx: RunContext, stage: Stage, items, bar: progress_lib.StageProgress | None = None) -> dict:
    """The items computed batch by batch (none looked up), written when the stage writes; on
    `bar` when given (a bar that stages share), else on a bar of the stage's own."""
    settings = ctx.settings
    keys = {item: stage.key(item) for item in items} if stage.key is not None else {}
    if stage.kind:
        ctx.reuse.making(stage.kind, keys.values())
    results = {}
    own = progress(ctx, stage.name, stage.unit, len(items), stage.steps) if bar is None else None
    rehearsing = rehearsal.active()
    with own or contextlib.nullcontext(bar) as bar:
        for batch, padded in batches(items, settings.batch_size, stage.checkpoint, pad=settings.pad_batches):
            if rehearsing and results:  # every batch runs at the first one's size: its programs are compiled
                results.update({item: next(iter(results.values())) for item in batch})
                continue
            bar.next_batch()
            checkpoint = resume.batch_checkpoint(ctx.layout.root, stage.checkpoint,
                                                 [keys.get(item, str(item)) for item in padded],
                                                 settings.checkpoint_every)
            hook = (loop_hook.PipelineHook(bar, checkpoint, settings.devices) if not rehearsing
                    else loop_hook.DevicesHook(settings.devices))
            with ctx.timed(stage.timing):  # blocked inside: the device's work counts here
                outputs = jax.tree.map(np.asarray, stage.compute(padded, hook, bar))
            written = []
            for i, item in enumerate(batch):
                row = {field: value[i] for field, value in outputs.items()}
                if not all(np.isfinite(row[field]).all() for field in stage.finite):
                    ctx.failures.append(stage.diverged(item))
                    continue
                if stage.write is not None:
                    written.append(ctx.write(stage.write, item, keys[item], row))
                results[item] = stage.result(item, row)
            if checkpoint is not None and stage.write is not None:  # once the batch's results are on disk
                ctx.write(resume.clear, checkpoint.folder, after=written, cleanup=True)
    return results
