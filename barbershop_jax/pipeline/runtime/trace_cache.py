"""The stage programs' traces kept on disk (`jax.export`), beside XLA's compilation cache: a
new process reads each stage program's StableHLO instead of tracing and lowering its Python
again (the warm 64 px demo on 2 CPU cores: 41 -> 33 s; the compiled programs themselves come
from compile_cache.py).

A trace is found by a key made here from public values only: the program's module and name,
its static arguments, its other arguments' tree (which names the models' configs), shapes and
dtypes, the source of this package, the versions of JAX, Flax, optax and NumPy, the JAX
settings, and the devices. Any change to the code makes every key new (the old traces age
out, below). A static argument without a text that is the same in every process (a closure,
an object printed with its address) is not kept: its program is traced as jax.jit does. Nor
are runs over several devices (their programs are sharded). Code patched at run time, not in
its files, is not seen: BARBERSHOP_JAX_TRACE_CACHE=off then.

A run calls a kept stage program through its export, whether it read the trace or made it, so
a first run and a later one compile and run the same program. That program is not jax.jit's
own (the export is a call inside it), so it is compiled apart from it; XLA inlines the call,
and the results have been the same bits as jax.jit's wherever compared (tests/test_trace_cache.py,
the demo, the suite's recorded results).

The folder is `traces/` inside the compilation cache's folder, on and off with it; it holds
at most MAX_FILES traces, the least recently used deleted first.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import logging
import os
import threading
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

from barbershop_jax.pipeline.runtime import stopping

log = logging.getLogger("barbershop_jax")
ENV = "BARBERSHOP_JAX_TRACE_CACHE"  # "off": trace every program in every process, as jax.jit does
FORMAT = 1          # of the files here: a header line of JSON, then jax.export's bytes
MAX_FILES = 2000    # a whole transfer's programs are about 12; the tests' runs, a few hundred
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")
# JAX settings that do not change a trace: where caches and logs go, and how errors print.
_UNRELATED = ("cache", "log", "dump", "traceback", "pgle", "explain", "transfer_guard", "pprint", "timeout",
              "source_url", "hlo_source_file", "captured_constants", "debug_leaked", "check_proxy", "visible_devices")


class Unkept(Exception):
    """This call's program cannot be kept (its reason): it is traced as jax.jit does."""


@functools.cache
def environment() -> str:
    """What every key shares: this package's source and the libraries' versions."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[2]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    for name in _PACKAGES:
        digest.update(f"{name}={metadata.version(name)}\0".encode())
    return digest.hexdigest()


def jax_settings() -> str:
    values = jax.config.values
    return repr(sorted((k, repr(v)) for k, v in values.items() if not any(word in k for word in _UNRELATED)))


def stable_text(value) -> str:
    """A text of a static argument that is the same in every process, or Unkept."""
    if isinstance(value, functools.partial):
        return f"partial({stable_text(value.func)}, {stable_text(value.args)}, {stable_text(value.keywords)})"
    if inspect.isfunction(value) or inspect.isclass(value):
        if "<" in value.__qualname__:  # a lambda or a closure: its text does not say what it holds
            raise Unkept(f"static argument {value.__qualname__}")
        return f"{value.__module__}:{value.__qualname__}"
    text = repr(value)
    if " at 0x" in text or "object at" in text:
        raise Unkept(f"static argument {text[:80]}")
    return text


def _aval(x) -> tuple:
    if isinstance(x, jax.Array):
        return x.shape, x.dtype.name, x.weak_type
    if isinstance(x, (np.ndarray, np.generic)):
        return x.shape, x.dtype.name, False
    return (), type(x).__name__, True  # a Python number: weakly typed


def _tree_spec(tree) -> object:
    """A JSON text of a pytree's structure (outputs: None, tuples, lists, dicts with string keys,
    named tuples), or Unkept."""
    leaf = jax.tree.structure(0)
    if tree == leaf:
        return "*"
    node_type, data = tree.node_data()
    children = [_tree_spec(child) for child in tree.children()]
    if node_type is type(None):
        return None
    if node_type in (tuple, list):
        return {"kind": node_type.__name__, "children": children}
    if node_type is dict and all(isinstance(k, str) for k in data):
        return {"kind": "dict", "keys": list(data), "children": children}
    if issubclass(node_type, tuple) and hasattr(node_type, "_fields") and "<" not in node_type.__qualname__:
        return {"kind": "namedtuple", "type": f"{node_type.__module__}:{node_type.__qualname__}", "children": children}
    raise Unkept(f"output node {node_type.__qualname__}")


def _example(spec):
    """An object with the structure _tree_spec wrote (its leaves are zeros)."""
    if spec == "*":
        return 0
    if spec is None:
        return None
    children = [_example(child) for child in spec["children"]]
    kind = spec["kind"]
    if kind == "tuple":
        return tuple(children)
    if kind == "list":
        return children
    if kind == "dict":
        return dict(zip(spec["keys"], children))
    module, name = spec["type"].split(":")
    node_type = functools.reduce(getattr, name.split("."), importlib.import_module(module))
    if not (isinstance(node_type, type) and issubclass(node_type, tuple) and hasattr(node_type, "_fields")):
        raise ValueError(f"{spec['type']} is not a named tuple")  # a damaged file: traced again
    return node_type(*children)


class Kept:
    """A stage program read from, or just written to, the folder: called with its arguments'
    leaves (static arguments are part of it), returning its outputs' leaves."""

    def __init__(self, name: str, exported, out_tree, donate: tuple[int, ...]):
        def run(*leaves):
            return exported.call(*leaves)

        run.__name__ = run.__qualname__ = name  # the compiled program's name, as jax.jit(fun) gives it
        # On the one device, said: otherwise an output of another program (on it, committed)
        # as an input makes jax.jit lower and compile the export a second time.
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        self.jitted = jax.jit(run, donate_argnums=donate, in_shardings=device)
        self.out_tree = out_tree

    def __call__(self, leaves):
        return jax.tree.unflatten(self.out_tree, self.jitted(*leaves))

    def lower(self, leaves):
        return self.jitted.lower(*leaves)


class Store:
    """The traces in `folder`: find(...) gives a call's Kept program, made on the first call."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._kept: dict = {}
        # One Kept per program, also for a rehearsal's thread (stages/rehearsal.py): the run
        # then calls the very jitted function whose compilation the rehearsal started. A lock
        # per program, so that one thread's export never holds up another's of another program.
        self._locks: dict = {}
        self._locks_lock = threading.Lock()

    def find(self, fun, jit_options: dict, args, kwargs):
        """(Kept, the leaves to call it with) for fun(*args, **kwargs) as jax.jit(fun,
        **jit_options) would run it; None where it cannot be kept (it then runs as before)."""
        if jax.device_count() > 1 or jax.config.jax_disable_jit:
            return None
        try:
            static, dynamic, donated = _split(fun, jit_options, args, kwargs)
            leaves, in_tree = jax.tree.flatten(dynamic)
            avals = tuple(map(_aval, leaves))
            settings = jax_settings()  # in the key in memory too: a setting changed within a process
            memo = (fun, tuple(static.items()), in_tree, avals, settings)
            kept = self._kept.get(memo)
            if kept is None:
                with self._locks_lock:
                    lock = self._locks.setdefault(memo, threading.Lock())
                with lock:
                    kept = self._kept.get(memo)
                    if kept is None:
                        kept = self._kept[memo] = self._load_or_export(fun, static, donated, in_tree, leaves,
                                                                       (avals, settings))
        except (Unkept, TypeError) as e:  # TypeError: an unhashable static argument (jax.jit says which)
            log.debug("not keeping the trace of %s: %s", fun.__name__, e)
            return None
        return kept, leaves

    def _load_or_export(self, fun, static, donated, in_tree, leaves, described: tuple) -> Kept:
        """described: (the leaves' avals, the JAX settings), as find's memory has them."""
        name = fun.__name__
        tree_text = str(in_tree)
        if " at 0x" in tree_text:
            raise Unkept("an argument's tree prints an address")
        devices = [(str(d), d.device_kind) for d in jax.devices()]
        key = hashlib.sha256(repr((FORMAT, environment(), devices, fun.__module__, fun.__qualname__,
                                   {k: stable_text(v) for k, v in static.items()}, tree_text, described,
                                   donated)).encode()).hexdigest()
        path = self.folder / f"{name}-{key[:40]}.trace"
        found = _read(path)
        if found is not None:
            exported, out_tree = found
            return Kept(name, exported, out_tree, donated)
        out_trees = []

        def flat(*flat_leaves):
            out = fun(**jax.tree.unflatten(in_tree, flat_leaves), **static)
            out_leaves, out_tree = jax.tree.flatten(out)
            out_trees.append(out_tree)
            return out_leaves

        flat.__name__ = flat.__qualname__ = name
        try:
            exported = jax.export.export(jax.jit(flat))(*leaves)
            payload = exported.serialize()
        except Exception as e:  # noqa: BLE001 (what export cannot write, jax.jit runs; its own errors, it raises)
            raise Unkept(f"jax.export: {type(e).__name__}: {e}") from e
        header = {"format": FORMAT, "program": f"{fun.__module__}:{fun.__qualname__}",
                  "out_tree": _tree_spec(out_trees[-1])}
        self._write(path, header, payload)
        return Kept(name, exported, out_trees[-1], donated)

    def _write(self, path: Path, header: dict, payload: bytes) -> None:
        """Atomically (stopping.atomic_write), then the least recently used traces past
        MAX_FILES deleted; a folder that cannot be written is left as it is."""
        try:
            stopping.atomic_write(path, lambda f: f.write(json.dumps(header).encode() + b"\n" + bytes(payload)))
            trim(self.folder, "*.trace", max_files=MAX_FILES, keep=path)
        except OSError as e:
            log.debug("could not keep the trace %s: %s", path.name, e)


def trim(folder: Path, pattern: str, *, max_files: int | None = None, max_bytes: int | None = None,
         keep: Path | None = None) -> None:
    """Delete the least recently used files of `folder` matching `pattern` (by modification
    time, which a read renews) past `max_files` files or `max_bytes` bytes; never `keep`, the
    file just written. The traces here and the initialisations (init_cache.py) share it."""
    found = []
    for file in folder.glob(pattern):
        try:
            found.append((file.stat(), file))
        except OSError:
            pass  # gone meanwhile: another process trimmed it
    total = 0
    for n, (stat, file) in enumerate(sorted(found, key=lambda f: f[0].st_mtime, reverse=True)):
        total += stat.st_size
        over = (max_files is not None and n >= max_files) or (max_bytes is not None and total > max_bytes)
        if over and file != keep:
            file.unlink(missing_ok=True)


def _read(path: Path):
    """(jax.export.Exported, its outputs' tree) from a trace file, its use time renewed; None
    where it is missing or cannot be read (an unreadable one is traced again, and rewritten)."""
    try:
        data = path.read_bytes()
        line, payload = data.split(b"\n", 1)
        header = json.loads(line)
        if header.get("format") != FORMAT:
            return None
        out_tree = jax.tree.structure(_example(header["out_tree"]))
        exported = jax.export.deserialize(bytearray(payload))
        os.utime(path)
    except Exception as e:  # noqa: BLE001 (a damaged file raises whatever its parser meets)
        if path.exists():
            log.debug("could not read the trace %s: %s", path.name, e)
        return None
    return exported, out_tree


@functools.cache
def _signature(fun) -> inspect.Signature:
    return inspect.signature(fun)


def _split(fun, jit_options: dict, args, kwargs):
    """(static arguments by name, the others by name, the leaves to donate) of one call."""
    if set(jit_options) - {"static_argnames", "donate_argnums"}:
        raise Unkept(f"jit options {sorted(jit_options)}")
    static_names = jit_options.get("static_argnames") or ()
    static_names = (static_names,) if isinstance(static_names, str) else tuple(static_names)
    donate = jit_options.get("donate_argnums") or ()
    donate = (donate,) if isinstance(donate, int) else tuple(donate)
    signature = _signature(fun)
    donated_names = {list(signature.parameters)[i] for i in donate}
    bound = signature.bind(*args, **kwargs).arguments
    static = {k: v for k, v in bound.items() if k in static_names}
    dynamic = {k: v for k, v in bound.items() if k not in static_names}
    mask = jax.tree.leaves({k: jax.tree.map(lambda _, d=k in donated_names: d, v) for k, v in dynamic.items()})
    return static, dynamic, tuple(i for i, d in enumerate(mask) if d)
