"""The pipeline's side of the stages' loops (stages/loop.py): a progress bar, checkpoints
and stop requests, attached through one LoopHook per batch, so that the stages stay pure."""
from __future__ import annotations

import dataclasses
import logging
import time

import jax

from barbershop_jax.pipeline.runtime import progress as progress_lib
from barbershop_jax.pipeline.store import resume
from barbershop_jax.pipeline.runtime import stopping
from barbershop_jax.stages.loop import Loop, LoopHook

log = logging.getLogger("barbershop_jax")


@dataclasses.dataclass
class PipelineHook(LoopHook):
    """progress: a progress_lib.StageProgress (the bar of the stage the loops belong to), True
    for a bar per loop, or False. checkpoint: a resume.LoopCheckpoint for the batch (each loop
    keeps its own below it, named by its part), or None. With one, a loop starts from its
    newest saved step (when its arrays match), saves every `checkpoint.every` steps and at the
    end, and a stop request (SIGINT/SIGTERM, resume.handle_signals) saves and raises
    resume.Interrupted at the next chunk boundary (from begin to end, a signal only asks:
    stopping.loop_started). devices: the devices to shard over."""
    progress: object = False
    checkpoint: resume.LoopCheckpoint | None = None
    devices: object = None

    def __post_init__(self):
        self._open = {}  # loop -> [bar, steps done, step saved, dispatch start, steps in all]

    def within(self, part: str) -> "PipelineHook":
        return dataclasses.replace(self, checkpoint=self.checkpoint and self.checkpoint.sub(part))

    def _checkpoint(self, loop: Loop):
        return self.checkpoint.sub(loop.part) if self.checkpoint is not None and loop.part else self.checkpoint

    def begin(self, loop: Loop, state, n_steps: int):
        checkpoint, done = self._checkpoint(loop), 0
        if checkpoint is not None:
            restored = checkpoint.restore(state)
            if restored is not None:
                state, done = restored[0], min(restored[1], n_steps)
                log.info("%s: resumed at step %d of %d from %s", loop.desc or "loop", done, n_steps, checkpoint.folder)
        if resume.stop_requested():  # asked between two loops: the earlier ones are saved, this one starts over
            raise resume.Interrupted(loop.desc or "a loop", done, n_steps, saved=checkpoint is not None,
                                     signum=resume.stop_signal())
        if isinstance(self.progress, progress_lib.StageProgress):
            bar = self.progress.loop(loop.desc, done)
        elif self.progress:
            bar = progress_lib.progress_bar(n_steps, loop.desc, jax.tree.leaves(state)[0].shape[0], initial=done)
        else:
            bar = None
        self._open[loop] = [bar, done, done, None, n_steps]
        stopping.loop_started()  # from here, a signal waits for the chunk boundary
        return state, done

    def before_chunk(self, loop: Loop) -> None:
        self._open[loop][3] = time.time()

    def after_chunk(self, loop: Loop, state_of, done: int, n_steps: int, metrics) -> None:
        entry = self._open[loop]
        bar, before, saved, called = entry[:4]
        dispatch = (called, time.time())  # tracing, reading and compiling, when this chunk's call did them
        entry[1] = done
        if bar is not None:  # the metrics wait for the chunk, so the bar moves when its steps are done
            bar.advance(done - before, progress_lib.loss_summary(jax.device_get(metrics)), excluded=dispatch)
        checkpoint = self._checkpoint(loop)
        stop = resume.stop_requested()
        if checkpoint is not None and (done - saved >= checkpoint.every or done == n_steps or stop):
            checkpoint.save(state_of(), done)
            entry[2] = done
        if stop and done < n_steps:
            raise resume.Interrupted(loop.desc or "a loop", done, n_steps, saved=checkpoint is not None,
                                     signum=resume.stop_signal())

    def end(self, loop: Loop) -> None:
        entry = self._open.pop(loop, None)
        if entry is None:  # begin raised
            return
        bar, done, saved, n_steps = entry[0], entry[1], entry[2], entry[4]
        stopping.loop_ended()
        if bar is not None:
            bar.close()
        # A stop that came during the last chunk ends the run here rather than at the next loop:
        # the work between two loops belongs to none. Only for a finished loop with its last step
        # saved: one that raised (its own stop, an error) keeps its exception.
        checkpoint = self._checkpoint(loop)
        if done >= n_steps and (checkpoint is None or saved >= n_steps) and resume.stop_requested():
            raise resume.Interrupted(loop.desc or "a loop", done, n_steps, saved=checkpoint is not None,
                                     signum=resume.stop_signal())



@dataclasses.dataclass
class DevicesHook(LoopHook):
    """The loops of a rehearsal (stages/rehearsal.py): sharded over the run's devices, with no
    bar, checkpoint or stop request, which belong to the run itself."""
    devices: object = None
