"""XLA's persistent compilation cache, on by default for the command line and HairTransfer:
the stages' programs compile once per machine, not once per run (at 1024 px a stage's step
takes tens of seconds to compile; a re-run, or a second process, reads it from disk).

BARBERSHOP_JAX_COMPILE_CACHE: a folder to use instead of the default
($XDG_CACHE_HOME or ~/.cache)/barbershop-jax/xla, or "off". `barbershop-jax
--no-compile-cache ...` and `HairTransfer(compile_cache=False)` turn it off for one run. A
cache folder set through JAX's own `jax_compilation_cache_dir` is left as it is.

The folder is bounded: past BARBERSHOP_JAX_COMPILE_CACHE_MAX_GB (default 4 GiB; "unlimited"
for no bound) the least recently used programs are deleted. A bound also makes JAX take a file
lock around each read and write, so that processes sharing the folder (parallel runs, test
workers) never read a program another one is still writing; without one JAX writes in place.

The stage programs' traces are kept beside the programs, in its folder's traces/
(trace_cache.py): a new process reads them rather than tracing and lowering the stages again.
So are the models' random initialisations, in initialisations/ (init_cache.py): the embedded
models' weights are read rather than drawn again. BARBERSHOP_JAX_TRACE_CACHE=off keeps the
compiled programs only.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import jax

from barbershop_jax import models
from barbershop_jax.pipeline.runtime import init_cache, trace_cache
from barbershop_jax.stages import rehearsal

ENV = "BARBERSHOP_JAX_COMPILE_CACHE"
MAX_GB_ENV = "BARBERSHOP_JAX_COMPILE_CACHE_MAX_GB"
DEFAULT_MAX_GB = 4.0  # a 1024 px stage program on a GPU is tens of MB; the tests' whole run, 0.5 GB
TRACES = "traces"  # the folder of the stage programs' traces (trace_cache.py), inside the cache's
INITIALISATIONS = "initialisations"  # the models' random weights (init_cache.py), inside it too
_OFF = {"off", "0", "false", "no", "none"}
_UNLIMITED = {"unlimited", "-1"}
log = logging.getLogger("barbershop_jax")


def default_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "barbershop-jax" / "xla"


def cache_dir(path=None) -> Path | None:
    """The folder enable(path) uses (this creates nothing): JAX's own setting where one was made,
    else `path` or $BARBERSHOP_JAX_COMPILE_CACHE, else default_dir(); None when that is "off"."""
    setting = str(path) if path is not None else os.environ.get(ENV, "")
    if setting.strip().lower() in _OFF:
        return None
    current = jax.config.jax_compilation_cache_dir
    return Path(current) if current else Path(setting) if setting else default_dir()


def enable(path=None) -> Path | None:
    """Turn the cache on (idempotent). Returns its folder, or None when it is off."""
    folder = cache_dir(path)
    if folder is None or jax.config.jax_compilation_cache_dir:
        return folder
    max_bytes = max_size_bytes()  # first: a bad setting stops the run before anything changes
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if os.environ.get(trace_cache.ENV, "").strip().lower() not in _OFF:
        rehearsal.keep_traces(trace_cache.Store(folder / TRACES))
        models.keep_initialisations(init_cache.Store(folder / INITIALISATIONS))
    if jax.config.jax_compilation_cache_max_size == -1:  # JAX's default: not chosen by the user
        jax.config.update("jax_compilation_cache_max_size", max_bytes)
    if jax.config.jax_compilation_cache_max_size > 0:
        _give_access_times(folder)
    return folder


def _give_access_times(folder: Path) -> None:
    """Give each program written while the folder was unbounded (by an earlier version, or with
    MAX_GB=unlimited) the access-time file that JAX's eviction reads: without one, every later
    write fails with a warning. Its file's modification time stands in for the last use."""
    try:
        for entry in folder.glob("*-cache"):
            stamp = entry.with_name(entry.name.removesuffix("-cache") + "-atime")
            if not stamp.exists():
                stamp.write_bytes(entry.stat().st_mtime_ns.to_bytes(8, "little"))
    except OSError:
        pass  # a read-only or vanishing folder: JAX's own error handling takes it from here


def max_size_bytes() -> int:
    """The cache's bound from BARBERSHOP_JAX_COMPILE_CACHE_MAX_GB, in bytes (-1: no bound)."""
    setting = os.environ.get(MAX_GB_ENV, "").strip().lower()
    if not setting:
        return int(DEFAULT_MAX_GB * 2**30)
    if setting in _UNLIMITED:
        return -1
    try:
        gib = float(setting)
    except ValueError:
        gib = float("nan")
    if not (gib > 0 and math.isfinite(gib)):
        raise ValueError(f"{MAX_GB_ENV}={setting!r}: expected a size in GiB above 0, or 'unlimited'")
    return max(int(gib * 2**30), 1)
