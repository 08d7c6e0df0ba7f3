"""The models' random initialisations kept on disk, beside the stage programs' traces: a new
process reads the embedded models' (and the tests' and benchmarks') random weights instead of
drawing them again. Drawing them costs each process about 4 s on 2 CPU cores (the embedded
generator 1.8 s, face parser 1.1 s, VGG16 0.7 s: tracing, reading their compiled programs from
XLA's cache and running them); reading them, a few tenths.

A file holds the arrays one drawing gave (numpy's .npz, read without pickle), found by a key
of public values only: the drawing function, its config's text and the random key's bits, the
package's source and the libraries' versions, the JAX settings (trace_cache.py's), the
devices, and this CPU's instruction sets (XLA compiles the drawing for them). So what is read
is what this process would have drawn, bit for bit. The structure (the model's tree) comes
from jax.eval_shape of the drawing, so a file holds arrays only, and a file whose arrays do
not fit it is drawn again and rewritten.

The folder is `initialisations/` inside the compilation cache's folder, on and off with it
and with the traces (BARBERSHOP_JAX_TRACE_CACHE=off); it holds at most MAX_BYTES, the least
recently used files deleted first.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path

import jax
import numpy as np

from barbershop_jax.pipeline.runtime import stopping, trace_cache

log = logging.getLogger("barbershop_jax")
FORMAT = 1
MAX_BYTES = 2**30  # the embedded VGG16 is 59 MB; a 1024 px generator 120 MB


@functools.cache
def _cpu() -> str:
    """This CPU's architecture and instruction sets (the flags line of /proc/cpuinfo, where
    there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{' '.join(sorted(flags.split(':', 1)[-1].split()))}"


def _key_bits(key) -> tuple:
    data = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    return str(key.dtype), data.shape, data.tobytes().hex()


class Store:
    """The initialisations in `folder`: initialised(draw, config, key) reads or draws them."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def initialised(self, draw, config, key):
        """draw(config, key), read from the folder where a process made it before, else drawn
        and written there."""
        if isinstance(key, jax.core.Tracer):  # drawn inside a program: part of it
            return draw(config, key)
        try:
            text = repr((FORMAT, trace_cache.environment(), trace_cache.jax_settings(), _cpu(),
                         [(str(d), d.device_kind) for d in jax.devices()], trace_cache.stable_text(draw),
                         trace_cache.stable_text(config), _key_bits(key)))
        except trace_cache.Unkept as e:
            log.debug("not keeping the initialisation of %s: %s", draw.__qualname__, e)
            return draw(config, key)
        digest = hashlib.sha256(text.encode()).hexdigest()[:40]
        path = self.folder / f"{draw.__module__.rsplit('.', 1)[-1]}-{digest}.npz"
        if path.exists():  # (a first drawing does without the structure)
            shapes, tree = _structure(draw, config, key)
            leaves = _read(path, shapes)
            if leaves is not None:
                return jax.tree.unflatten(tree, [jax.device_put(leaf) for leaf in leaves])
        model = draw(config, key)
        self._write(path, jax.tree.leaves(model))
        return model

    def _write(self, path: Path, leaves) -> None:
        """Atomically (stopping.atomic_write), then the least recently used files past
        MAX_BYTES deleted; a folder that cannot be written is left as it is."""
        arrays = [np.asarray(leaf) for leaf in leaves]
        if any(a.dtype.kind not in "biuf" for a in arrays):
            return  # numpy's files hold numpy's own dtypes only (not bfloat16, whose kind is "V")
        try:
            stopping.atomic_write(path, lambda f: np.savez(f, *arrays))
            trace_cache.trim(self.folder, "*.npz", max_bytes=MAX_BYTES, keep=path)
        except OSError as e:
            log.debug("could not keep the initialisation %s: %s", path.name, e)


def _structure(draw, config, key):
    """(the leaves' shapes and dtypes, the tree) of draw(config, key), traced, not run. Without
    jit inside (the drawings compile with compiler_options, which a nested jit may not take),
    and with the key as a constant (the face parser's drawing reads it with numpy)."""
    with jax.disable_jit():
        return jax.tree.flatten(jax.eval_shape(lambda: draw(config, key)))


def _read(path: Path, shapes) -> list | None:
    """The arrays of a file, its use time renewed, where each has the shape and dtype of
    `shapes` (jax.ShapeDtypeStruct); None where it is missing, damaged or does not fit."""
    try:
        with np.load(path, allow_pickle=False) as z:
            leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
        os.utime(path)
    except Exception as e:  # noqa: BLE001 (a damaged file raises whatever numpy's reader meets)
        log.debug("could not read the initialisation %s: %s", path.name, e)
        return None
    if [(a.shape, a.dtype) for a in leaves] != [(s.shape, s.dtype) for s in shapes]:
        log.debug("the initialisation %s does not fit its model: drawn again", path.name)
        return None
    return leaves
