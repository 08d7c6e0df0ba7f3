"""How a stage's items are cut into batches, and a long run into waves (pipeline side: the
stages see one batch at a time)."""
from __future__ import annotations

import logging
import time

from barbershop_jax.config import check_numbers

log = logging.getLogger("barbershop_jax")

def batches(items: list, batch_size: int, stage: str, *, pad: bool = False):
    """The batches of a stage, whose programs compile once per batch size. Yields (real,
    padded): `padded` repeats the last item until the batch has the size that runs, which
    this call's arguments alone decide:
    - items that fill more than one batch run every batch at batch_size (the short last one
      padded): one size compiled;
    - items that fit in one batch run as their own number, computing no padding (one
      transfer at batch size 4 runs as 1);
    - pad=True pads that one short batch to batch_size too: a process that runs many small
      runs in turn (a server, a loop over single transfers, the tests) compiles one size per
      stage, instead of one per item count.
    Not what ran earlier in the process: a run's numbers follow from its own inputs (XLA's
    CPU kernels may round one item apart in a batch of 3 and of 4: tests/conftest.py,
    batch_position_exact). `stage` names the stage in errors. Callers keep the results of
    `real` only."""
    check_numbers(stage, batch_size=batch_size)
    items = list(items)
    size = batch_size if pad or len(items) > batch_size else len(items)
    for i in range(0, len(items), batch_size):
        real = items[i:i + batch_size]
        yield real, real + [real[-1]] * (size - len(real))


def waves(n_items: int, wave: int, unit: str):
    """(start, stop) of each wave of a long run (embed_files, HairTransfer.transfer_files),
    with a line per wave when there are several (log_wave)."""
    check_numbers(f"waves of {unit}", wave=wave)
    started, n_waves = time.time(), -(-n_items // wave)
    for k, start in enumerate(range(0, n_items, wave), 1):
        stop = min(start + wave, n_items)
        if n_waves > 1:
            log_wave(k, n_waves, start + 1, stop, n_items, unit, started)
        yield start, stop


def log_wave(k: int, n_waves: int, first: int, last: int, total: int, unit: str, started: float):
    """One line per wave of a long run (the stage bars span one wave): its place, and from the
    second wave on the time left by the average wave so far (about: later waves find more of
    their images embedded already)."""
    left = ""
    if k > 1:
        seconds = (time.time() - started) / (k - 1) * (n_waves - k + 1)
        hours, minutes = divmod(round(seconds / 60), 60)
        left = f"; about {f'{hours} h ' if hours else ''}{minutes} min left"
    log.info("wave %d of %d: %s %d to %d of %d%s", k, n_waves, unit, first, last, total, left)
