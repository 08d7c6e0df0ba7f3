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

Traced programs persist too. A new process would otherwise trace and lower every stage again
before the XLA cache can serve it (the host's work, whatever the device: at 1024 px, batch 8,
11.4 s for the five stage steps on 2 CPU cores). The stage functions are declared with `jit`
below instead of `jax.jit`: their first call exports the traced program (`jax.export`:
StableHLO, no pickle) into the cache folder's `programs/`, and a later process calls the
exported program, which lowers in a twentieth of the time (0.5 s for the five) and gives the
same numbers, bit for bit (tests/test_traced_programs.py checks the W+ step). The file's key
holds everything that can change a trace: the package's source, the versions of JAX and the
libraries whose code is traced, the backend, the arguments' shapes, dtypes and shardings, the
static arguments, JAX's trace-affecting settings and the BARBERSHOP_JAX_* variables. Whatever
has no stable text (a closure, an object known by its address) or fails to export runs as
plain `jax.jit`, and so does everything when this JAX lacks an API used here (the process
says so once). BARBERSHOP_JAX_TRACE_CACHE=off keeps the XLA cache and traces every run.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import math
import os
import re
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

ENV = "BARBERSHOP_JAX_COMPILE_CACHE"
MAX_GB_ENV = "BARBERSHOP_JAX_COMPILE_CACHE_MAX_GB"
DEFAULT_MAX_GB = 4.0  # a 1024 px stage program on a GPU is tens of MB; the tests' whole run, 0.5 GB
_OFF = {"off", "0", "false", "no", "none"}
_UNLIMITED = {"unlimited", "-1"}
TRACE_ENV = "BARBERSHOP_JAX_TRACE_CACHE"
log = logging.getLogger("barbershop_jax")
_programs_dir: Path | None = None  # where traced programs persist (None: plain jax.jit)


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
        if _programs_dir is None and Path(current).is_dir():  # not a bucket's URL
            _keep_programs(Path(current) / "programs")
        return Path(current)
    max_bytes = max_size_bytes()  # first: a bad setting stops the run before anything changes
    folder = Path(setting) if setting else default_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if jax.config.jax_compilation_cache_max_size == -1:  # JAX's default: not chosen by the user
        jax.config.update("jax_compilation_cache_max_size", max_bytes)
    if jax.config.jax_compilation_cache_max_size > 0:
        _give_access_times(folder)
    _keep_programs(folder / "programs")  # JAX's eviction looks at the top level only
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


# ----------------------------------------------------------------------------- traced programs
_MAGIC = b"barbershop-jax exported program 1\n"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # an object known by its address: no stable text
_TRACED_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy")  # whose code a trace runs
PROGRAMS_MAX_BYTES = 256 * 2**20  # a 1024 px stage step exports to about 0.2 MB


def _keep_programs(folder: Path) -> None:
    global _programs_dir
    if os.environ.get(TRACE_ENV, "").strip().lower() in _OFF:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        importlib.import_module("jax.export")
        importlib.import_module("jax._src.export.serialization")  # needs flatbuffers
    except (OSError, ImportError) as e:
        log.debug("traced programs are not kept: %s", e)
        return
    _programs_dir = folder


def jit(fun=None, *, static_argnames=(), donate_argnums=()):
    """`jax.jit` whose traced programs persist in the cache folder (module docstring). The
    static arguments are keywords; `.lower`, `.trace` and the rest are jax.jit's."""
    if fun is None:
        return functools.partial(jit, static_argnames=static_argnames, donate_argnums=donate_argnums)
    return _PersistentJit(fun, static_argnames, donate_argnums)


class _Program:
    """An exported program, called with the arguments' leaves. Compiled ahead of time, once:
    through jax.jit, a call with uncommitted arguments (fresh arrays) and one with committed
    ones (a chunk's outputs) lower the exported call differently, and each compiled anew."""

    def __init__(self, exported, out_tree, name, donate_leaves):
        def runner(*leaves):
            return exported.call(*leaves)
        runner.__name__ = runner.__qualname__ = name  # XLA's program keeps the stage's name
        self.jitted = jax.jit(runner, donate_argnums=donate_leaves)
        self.out_tree = out_tree
        self.compiled = None


class _PersistentJit:
    def __init__(self, fun, static_argnames, donate_argnums):
        static_argnames = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
        self.jitted = jax.jit(fun, static_argnames=static_argnames, donate_argnums=donate_argnums)
        functools.update_wrapper(self, fun)
        self._fun, self._static, self._donate = fun, frozenset(static_argnames), tuple(donate_argnums)
        self._programs = {}  # per call signature: a _Program, or None to run as plain jax.jit

    def __getattr__(self, name):  # lower, trace, eval_shape, ...: jax.jit's
        return getattr(self.jitted, name)

    def __call__(self, *args, **kwargs):
        program, leaves = self._resolve(args, kwargs)
        if program is None:
            return self.jitted(*args, **kwargs)
        return jax.tree.unflatten(program.out_tree, program.compiled(*leaves))

    def compiled(self, *args, **kwargs):
        """The compiled program that a call with these arguments runs (for benchmarks: its
        memory analysis and HLO text name what a profile of the call shows)."""
        program, _ = self._resolve(args, kwargs)
        return program.compiled if program is not None else self.jitted.lower(*args, **kwargs).compile()

    def _resolve(self, args, kwargs):
        global _programs_dir
        if _programs_dir is None:
            return None, None
        try:
            return self._resolve_exported(args, kwargs)
        except (AttributeError, ImportError, NotImplementedError) as e:  # another JAX's internals
            log.warning("traced programs are not kept in this process (%s: %s); every stage is traced",
                        type(e).__name__, e)
            _programs_dir = None
            return None, None

    def _resolve_exported(self, args, kwargs):
        """(the exported program for these arguments, compiled; or None for plain jax.jit,
        the arguments' leaves)."""
        from jax._src import config, core

        if not self._static.issuperset(kwargs) or not core.trace_state_clean():
            return None, None
        leaves, in_tree = jax.tree.flatten(args)
        avals = _avals(leaves)
        if avals is None:  # a tracer or a Python scalar among the arguments
            return None, None
        key = (in_tree, avals, tuple(sorted(kwargs.items())), config.trace_context())
        if key not in self._programs:
            self._programs[key] = self._program(args, kwargs, leaves, in_tree, avals)
        program = self._programs[key]
        if program is not None and program.compiled is None:
            try:  # before anything runs: a program that XLA refuses is traced as plain jax.jit
                program.compiled = program.jitted.lower(*leaves).compile()
            except Exception as e:  # noqa: BLE001
                log.warning("%s: the exported program failed (%s: %s); tracing it instead",
                            self._fun.__name__, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                program = self._programs[key] = None
        return program, leaves

    def _program(self, args, kwargs, leaves, in_tree, avals):
        name = self._fun.__name__
        key = _disk_key(self._fun, in_tree, avals, kwargs)
        path = _programs_dir / f"{key}.jaxexport" if key else None
        loaded = _read(path) if path is not None else None
        if loaded is None:
            try:
                loaded = self._export(leaves, in_tree, kwargs)
            except Exception as e:  # noqa: BLE001 (plain jax.jit then reports any real error)
                log.debug("%s: not exported (%s: %s); plain jax.jit", name, type(e).__name__, e)
                return None
            if path is not None:
                _write(path, *loaded)
        counts = [len(jax.tree.leaves(a)) for a in args]
        starts = np.cumsum([0] + counts)
        donate_leaves = tuple(int(i) for a in self._donate if a < len(args) for i in range(starts[a], starts[a + 1]))
        return _Program(*loaded, name, donate_leaves)

    def _export(self, leaves, in_tree, kwargs):
        out_trees = []

        def flat(*flat_args):
            out = self.jitted(*jax.tree.unflatten(in_tree, flat_args), **kwargs)
            out_leaves, out_tree = jax.tree.flatten(out)
            out_trees.append(out_tree)
            return out_leaves

        flat.__name__ = self._fun.__name__
        exported = jax.export.export(jax.jit(flat))(*leaves)
        return exported, out_trees[0]


def _avals(leaves):
    """(shape, dtype, weak type, sharding) of each leaf; None unless all are concrete arrays."""
    from jax._src.core import Tracer
    avals = []
    for leaf in leaves:
        if isinstance(leaf, Tracer):
            return None
        if isinstance(leaf, jax.Array):
            avals.append((leaf.shape, leaf.dtype, leaf.weak_type, leaf.sharding))
        elif isinstance(leaf, (np.ndarray, np.generic)):
            avals.append((leaf.shape, leaf.dtype, False, None))
        else:
            return None
    return tuple(avals)


def _disk_key(fun, in_tree, avals, kwargs) -> str | None:
    """The program file's name: a hash of everything that can change the trace, or None when
    some part has no text that is the same in every process."""
    from jax._src import config

    def sharding_text(s):
        if s is None or isinstance(s, jax.sharding.SingleDeviceSharding):
            return "one device"
        if isinstance(s, jax.sharding.NamedSharding):
            return f"{dict(s.mesh.shape)} {s.spec}"
        return f"{type(s).__name__} at 0x"  # a kind not handled here: no stable text

    def context_value(name, value):
        if name == "axis_env_state":  # an object, but its state is these sizes and names
            return repr((value.axis_sizes, value.spmd_axis_names, value.explicit_mesh_axis_names))
        return repr(value)

    try:
        names = config.trace_context_names()
    except (NotImplementedError, AttributeError):  # an older jaxlib: no names to key on
        return None
    context = {n: context_value(n, v) for n, v in zip(names, config.trace_context())}
    device = jax.devices()[0]
    parts = {
        "function": _function_text(fun),
        "source": _source_hash(),
        "libraries": _library_versions(),
        "backend": [device.platform, device.device_kind],
        "in_tree": str(in_tree),
        "avals": [[list(shape), str(dtype), weak, sharding_text(s)] for shape, dtype, weak, s in avals],
        "static": {k: _function_text(v) if callable(v) and not isinstance(v, type) else repr(v)
                   for k, v in sorted(kwargs.items())},
        "context": context,
        "environment": {k: v for k, v in sorted(os.environ.items())
                        if k.startswith("BARBERSHOP_JAX_") and k not in _NOT_TRACED_ENV},
    }
    text = json.dumps(parts, sort_keys=True, default=repr)
    if _ADDRESS.search(text) or "<locals>" in text or "<lambda>" in text:
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:40]


_NOT_TRACED_ENV = {ENV, MAX_GB_ENV, TRACE_ENV}  # where the caches are: no part of any program


def _function_text(fun) -> str:
    module, name = getattr(fun, "__module__", None), getattr(fun, "__qualname__", None)
    return f"{module}.{name}" if module and name else f"{type(fun).__name__} at 0x"


@functools.cache
def _source_hash() -> str:
    """The package's code: an edited stage (an editable install, a new version) traces anew."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def _library_versions() -> dict:
    versions = {}
    for name in _TRACED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
    return versions


def _read(path: Path):
    """(exported, out_tree) from a program file, or None (absent, damaged, another format)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("not a program file")
        start = len(_MAGIC) + 8
        size = int.from_bytes(data[len(_MAGIC):start], "little")
        header = json.loads(data[start:start + size])
        out_tree = _tree_from_json(header["out_tree"])
        exported = jax.export.deserialize(bytearray(data[start + size:]))
    except Exception as e:  # noqa: BLE001 (a damaged file is a miss: exported again, rewritten)
        log.debug("%s: unreadable (%s: %s)", path, type(e).__name__, e)
        return None
    try:
        os.utime(path)  # its last use, for the eviction
    except OSError:
        pass
    return exported, out_tree


def _write(path: Path, exported, out_tree) -> None:
    from barbershop_jax import image_io

    try:
        header = json.dumps({"function": exported.fun_name, "out_tree": _tree_to_json(out_tree)}).encode()
    except TypeError as e:  # an output node that has no text: kept in this process only
        log.debug("%s: not written (%s)", path.name, e)
        return
    blob = bytes(exported.serialize())
    try:
        image_io.atomic_write(path, lambda f: f.write(_MAGIC + len(header).to_bytes(8, "little") + header + blob))
        _evict(path.parent, PROGRAMS_MAX_BYTES)
    except OSError as e:  # a full or read-only disk: the run goes on without the file
        log.debug("%s: not written (%s)", path, e)


def _evict(folder: Path, max_bytes: int) -> None:
    """Delete the least recently used programs until the folder holds at most max_bytes."""
    files = []
    for path in folder.glob("*.jaxexport"):
        try:
            st = path.stat()
        except OSError:
            continue
        files.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size


# An output's structure as JSON: tuples, lists, dicts with string keys, None and named tuples
# (by module and name); anything else has no text here, and its program stays in the process.
_BUILTIN_NODES = {"tuple": tuple, "list": list, "None": type(None)}


def _tree_to_json(tree):
    node = tree.node_data()
    if node is None:
        return "*"
    kind, aux = node
    children = [_tree_to_json(c) for c in tree.children()]
    if kind is dict and all(isinstance(k, str) for k in aux):
        return ["dict", list(aux), children]
    if aux is None and kind in _BUILTIN_NODES.values():
        return [{v: k for k, v in _BUILTIN_NODES.items()}[kind], None, children]
    if aux is None and issubclass(kind, tuple) and hasattr(kind, "_fields") and "<locals>" not in kind.__qualname__:
        return [f"{kind.__module__}:{kind.__qualname__}", None, children]
    raise TypeError(f"no text for a pytree node of type {kind.__name__}")


def _tree_from_json(data):
    from jax.tree_util import PyTreeDef, default_registry

    if data == "*":
        return jax.tree.structure(0)
    name, aux, children = data
    if name == "dict":
        kind = dict
    elif name in _BUILTIN_NODES:
        kind = _BUILTIN_NODES[name]
    else:
        module, qualname = name.split(":")
        kind = importlib.import_module(module)
        for part in qualname.split("."):
            kind = getattr(kind, part)
        if not (isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields")):
            raise ValueError(f"{name} is not a named tuple")
    return PyTreeDef.from_node_data_and_children(default_registry, (kind, aux),
                                                 [_tree_from_json(c) for c in children])
