"""XLA's persistent compilation cache, on by default for the command line and HairTransfer:
the stages' programs compile once per machine, not once per run (at 1024 px a stage's step
takes tens of seconds to compile; a re-run, or a second process, reads it from disk).

BARBERSHOP_JAX_COMPILE_CACHE: a folder to use instead of the default
($XDG_CACHE_HOME or ~/.cache)/barbershop-jax/xla, or "off". `barbershop-jax
--no-compile-cache ...` and `HairTransfer(compile_cache=False)` turn it off for one run. A
cache folder set through JAX's own `jax_compilation_cache_dir` is left as it is.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax

ENV = "BARBERSHOP_JAX_COMPILE_CACHE"
_OFF = {"off", "0", "false", "no", "none"}


def default_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "barbershop-jax" / "xla"


def enable(path=None) -> Path | None:
    """Turn the cache on (idempotent). Returns its folder, or None when it is off."""
    setting = str(path) if path is not None else os.environ.get(ENV, "")
    if setting.strip().lower() in _OFF:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    folder = Path(setting) if setting else default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
