"""How a run runs, apart from what it computes: the settings that change neither a result nor
a cache key (a triple gives the same result in any batch, on any device)."""
from __future__ import annotations

import dataclasses
import os

from barbershop_jax.config import DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_EVERY, check_numbers

COMPILE_AHEAD_ENV = "BARBERSHOP_JAX_COMPILE_AHEAD"


def compile_ahead_default() -> bool:
    """RunSettings.compile_ahead unless given: on, unless $BARBERSHOP_JAX_COMPILE_AHEAD says off."""
    return os.environ.get(COMPILE_AHEAD_ENV, "").strip().lower() not in ("0", "off", "no", "false")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """batch_size: items per batch of every stage (its programs compile once per size);
    progress: progress bars on stderr; devices: the devices a batch is sharded over (None: all
    local ones); checkpoint_every: each optimisation loop saves its state every so many steps
    under OUT/.resume/, so that an interrupted run resumes mid-stage (store/resume.py; None:
    never); pad_batches: a stage whose items fit in one short batch runs it at batch_size too
    (batching.batches' `pad`), for a process that runs many small runs in turn; compile_ahead:
    a rehearsal of the run on another thread compiles every stage's programs while the first
    stages run (stages/rehearsal.py), which moves work and changes no result; on unless
    $BARBERSHOP_JAX_COMPILE_AHEAD is off (0, off, no, false)."""
    batch_size: int = DEFAULT_BATCH_SIZE
    progress: bool = True
    devices: tuple | None = None
    checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY
    pad_batches: bool = False
    compile_ahead: bool = dataclasses.field(default_factory=compile_ahead_default)

    def __post_init__(self):
        check_numbers("the run's settings", batch_size=self.batch_size,
                      **({} if self.checkpoint_every is None else {"checkpoint_every": self.checkpoint_every}))
