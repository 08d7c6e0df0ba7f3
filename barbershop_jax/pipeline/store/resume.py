"""Interrupted runs resume where they stopped.

- Every optimisation loop can keep its state (latents, optimiser moments, step number) in a
  `LoopCheckpoint`: an npz file (no pickle), written atomically every `every` steps (at chunk
  boundaries) and when the loop ends. A re-run of the same batch restores it and goes on
  from that step, with the same numbers as an uninterrupted run (the steps are the same
  compiled programs, and their noise keys depend on the step number only). The pipeline
  removes a batch's checkpoints once its results are written.
- SIGINT and SIGTERM (`handle_signals`, stopping.py) do not kill the process mid-step: the
  running loop finishes its chunk, writes its checkpoint and raises `Interrupted`; outside the
  loops the run stops at once (`Stopped`). The command line turns either into a message
  saying how to resume.

Layout: OUT/.resume/{stage}/{batch key}/[{loop}/]step_{n}.npz; the newest readable one wins.
Not orbax (which the weights use): its checkpointers synchronise every jax.distributed process
at each save, while here each process checkpoints its own batches on its own schedule.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from pathlib import Path

import jax
import numpy as np

from barbershop_jax.config import DEFAULT_CHECKPOINT_EVERY
from barbershop_jax.models.weights import ARRAY_FILE_ERRORS
from barbershop_jax.pipeline.runtime import stopping
from barbershop_jax.pipeline.files.image_files import atomic_write

log = logging.getLogger("barbershop_jax")

RESUME_DIR = ".resume"
SAVE_ATTEMPTS = 3  # a checkpoint write whose folder was removed meanwhile (see `clear`) is retried

# The stop state lives in stopping.py (atomic writes need it too, below this module); these
# names stay here for the loops and the command line.
request_stop = stopping.request_stop
stop_requested = stopping.stop_requested
clear_stop = stopping.clear_stop
stop_signal = stopping.stop_signal
handle_signals = stopping.handle_signals
Stopped = stopping.Stopped


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped a loop at a chunk boundary, after its checkpoint was written."""

    def __init__(self, where: str, done: int, total: int, saved: bool, signum: int | None = None):
        self.where, self.done, self.total, self.saved, self.signum = where, done, total, saved, signum
        state = "its state is saved" if saved else "no checkpoint (checkpointing is off)"
        super().__init__(f"interrupted in {where} at step {done} of {total}; {state}")


def batch_key(*parts) -> str:
    """A short stable name for a batch (from its items' cache keys)."""
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class LoopCheckpoint:
    """Where one optimisation loop of one batch keeps its state."""
    folder: Path
    every: int = DEFAULT_CHECKPOINT_EVERY

    def sub(self, name: str) -> "LoopCheckpoint":
        """The checkpoint of a loop inside this one's batch (stages with several loops)."""
        return dataclasses.replace(self, folder=self.folder / name)

    def _steps(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.glob("step_*.npz"):
            if p.stem[5:].isdigit():
                found.append((int(p.stem[5:]), p))
        return sorted(found)

    def restore(self, like_state):
        """(state, step) from the newest readable checkpoint whose arrays match `like_state`
        (structure, shapes, dtypes), or None."""
        leaves, treedef = jax.tree.flatten(like_state)
        for done, path in reversed(self._steps()):
            try:
                with np.load(path, allow_pickle=False) as z:
                    if len(z.files) != len(leaves):
                        continue  # another state's: try an older one, or start over
                    arrays = [z[f"leaf_{i:04d}"] for i in range(len(leaves))]
            except ARRAY_FILE_ERRORS as e:
                log.warning("%s: damaged checkpoint (%s: %s); not resumed from it", path, type(e).__name__, e)
                continue
            if any(a.shape != tuple(x.shape) or a.dtype != x.dtype for a, x in zip(arrays, leaves)):
                continue
            if not all(np.isfinite(a).all() for a in arrays if np.issubdtype(a.dtype, np.inexact)):
                log.warning("%s: damaged checkpoint (NaN or infinity); not resumed from it", path)
                continue
            return jax.tree.unflatten(treedef, arrays), done
        return None

    def save(self, state, done: int):
        """Write step `done` (one npz, atomically), then drop the older ones."""
        leaves = jax.tree.leaves(jax.device_get(state))
        arrays = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
        for attempt in range(SAVE_ATTEMPTS):
            try:
                atomic_write(self.folder / f"step_{done:07d}.npz", lambda f: np.savez(f, **arrays))
                break
            except FileNotFoundError:
                # `clear` of another batch (a writer thread, or another process in the same OUT)
                # removed the emptied stage folder between atomic_write's mkdir and its file.
                if attempt == SAVE_ATTEMPTS - 1:
                    raise
        for step, old in self._steps():
            if step < done:
                old.unlink(missing_ok=True)


def batch_checkpoint(out_dir, stage: str, keys, every: int | None) -> LoopCheckpoint | None:
    """The checkpoint of one batch of a stage, named after its items' cache keys:
    OUT/.resume/{stage}/{batch key}/ (None when checkpointing is off)."""
    if every is None:
        return None
    return LoopCheckpoint(Path(out_dir) / RESUME_DIR / stage / batch_key(*keys), every)


def clear(folder) -> None:
    """Remove a batch's checkpoints (after its results are written), and the folders above it
    up to OUT/.resume/ that this leaves empty: a finished run leaves no empty .resume/ behind.
    A folder that holds anything (another batch's checkpoints) stays."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if RESUME_DIR not in folder.parts[:-1]:
        return  # not under a .resume/ folder: remove nothing above it
    root = Path(*folder.parts[:len(folder.parts) - folder.parts[::-1].index(RESUME_DIR)])  # the last .resume/
    for parent in folder.parents:
        if not parent.is_relative_to(root):
            break
        try:
            parent.rmdir()  # only ever an empty folder
        except FileNotFoundError:  # another batch's clear was first: look further up
            continue
        except OSError:  # not empty: the folders above it hold something too
            break
