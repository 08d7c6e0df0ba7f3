"""Seconds per optimisation step, as the progress bars measure them (compilation left out),
kept per machine so that a run's plan (plan.py) can say how long it will take before it
starts. One small JSON file: {context: {stage: [steps, seconds]}}, the newest measurement of
each stage replacing the last; a context is the backend, the generator's size, the compute
dtype and the batch size, the things a step's time depends on."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import jax

from barbershop_jax.pipeline.runtime import compile_cache
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.runtime import progress as progress_lib

log = logging.getLogger("barbershop_jax")

ENV = "BARBERSHOP_JAX_STEP_TIMES"  # the file (default: beside the XLA cache); "off": neither read nor written


def path() -> Path | None:
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in ("off", "0", "none"):
        return None
    return Path(setting) if setting else compile_cache.default_dir().parent / "step_times.json"


def context(size: int, dtype: str, batch_size: int) -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind}|{size}px|{dtype}|batch {batch_size}"


def read() -> dict:
    """{context: {stage: [steps, seconds]}} from the file. Entries of another form (a damaged
    or hand-edited file) are left out, so the plan says their time is not known and the next
    measurement replaces them; a file that does not read at all is named in one warning."""
    file = path()
    if file is None or not file.exists():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        if file not in _warned:
            _warned.add(file)
            log.warning("%s: unreadable step times (%s); they are measured again", file, e)
        return {}
    if not isinstance(data, dict):
        return {}
    return {ctx: {stage: [m[0], m[1]] for stage, m in stages.items() if _is_measurement(m)}
            for ctx, stages in data.items() if isinstance(stages, dict)}


_warned: set = set()  # the unreadable files already named (read() runs once per plan and per save)


def _is_measurement(m) -> bool:
    return (isinstance(m, list) and len(m) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         and math.isfinite(v) and v >= 0 for v in m))


def seconds_per_step(measured: dict, ctx: str, stage: str) -> float | None:
    steps, seconds = (measured.get(ctx) or {}).get(stage) or (0, 0.0)
    return seconds / steps if steps > 0 and seconds > 0 else None


def save_measured(size: int, dtype: str) -> dict:
    """Merge the steps the progress bars of this process measured since the last call into
    the file (written atomically; a read-only home is skipped). Returns what was measured:
    {context: {stage: [steps, seconds]}}."""
    new: dict = {}
    for (stage, batch_size), (steps, seconds) in progress_lib.take_measured().items():
        new.setdefault(context(size, dtype, batch_size), {})[stage] = [steps, seconds]
    file = path()
    if new and file is not None:
        data = read()
        for ctx, stages in new.items():
            data.setdefault(ctx, {}).update(stages)
        text = json.dumps(data, indent=1, sort_keys=True).encode()
        try:
            image_io.atomic_write(file, lambda f: f.write(text))
        except OSError:
            pass
    return new
