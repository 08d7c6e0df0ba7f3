"""How a stage's items are cut into batches, and a long run into waves (pipeline side: the
stages see one batch at a time)."""
from __future__ import annotations

import logging
import time

from barbershop_jax.config import check_numbers

log = logging.getLogger("barbershop_jax")

_RAN_BATCH_SIZES: set = set()  # (stage, batch size) run in this process: their programs are compiled


def batches(items: list, batch_size: int, stage: str):
    """The batches of a stage whose programs compile once per batch size. Yields (real,
    padded): `padded` repeats the last item until the batch has the size that runs. That is
    batch_size when the items fill more than one batch, or when a batch of that size has run
    before in this process (a short last batch, or a later single item, then reuses the
    compiled programs instead of compiling new ones); otherwise the items' own number (a
    single small run computes no padding). Callers keep the results of `real` only."""
    check_numbers(stage, batch_size=batch_size)
    items = list(items)
    for i in range(0, len(items), batch_size):
        real = items[i:i + batch_size]
        size = len(real)
        if size < batch_size and (len(items) > batch_size or (stage, batch_size) in _RAN_BATCH_SIZES):
            size = batch_size
        _RAN_BATCH_SIZES.add((stage, size))
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
