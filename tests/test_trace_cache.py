"""The stage programs' traces kept across processes (pipeline/runtime/trace_cache.py): a new
process (here a new Store, whose memory is empty) reads a program's trace instead of tracing
its Python, and gets the same bits as jax.jit."""
import os
import re
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from barbershop_jax.pipeline.runtime import trace_cache
from barbershop_jax.stages import rehearsal

TRACED = []  # one entry each time step's Python runs: each trace


class State(NamedTuple):
    latent: jax.Array
    moments: dict


def step(models, state, data, i, *, cfg, rule):
    TRACED.append(cfg)
    grad = jnp.tanh(data @ models["w"] + state.latent * cfg) + i
    moments = {"m": 0.9 * state.moments["m"] + grad, "v": None}
    return State(state.latent - 0.1 * moments["m"], moments), (jnp.sum(grad ** 2), [grad.mean()])


OPTIONS = {"static_argnames": ("cfg", "rule"), "donate_argnums": (1,)}


def _args(n=4, seed=0):
    key = jax.random.PRNGKey(seed)
    models = {"w": jax.random.normal(key, (3, n))}
    state = State(jnp.ones((2, n)), {"m": jnp.zeros((2, n)), "v": None})
    return models, state, jax.random.normal(jax.random.fold_in(key, 1), (2, 3)), 3


def _call(store, cfg=0.5, rule=step, **shape):
    models, state, data, i = _args(**shape)
    found = store.find(step, OPTIONS, (models, state, data, i), {"cfg": cfg, "rule": rule})
    if found is None:
        return None
    kept, leaves = found
    return kept(leaves)


def _plain(cfg=0.5, rule=step, **shape):
    return jax.jit(step, **OPTIONS)(*_args(**shape), cfg=cfg, rule=rule)


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_a_new_process_reads_the_trace_and_gets_jits_bits(tmp_path):
    TRACED.clear()
    first = _call(trace_cache.Store(tmp_path))
    assert TRACED == [0.5] and len(list(tmp_path.glob("step-*.trace"))) == 1
    again = _call(trace_cache.Store(tmp_path))  # a new process: the trace read, step not run
    assert TRACED == [0.5]
    _assert_same(first, again)
    _assert_same(first, _plain())
    assert isinstance(again[0], State) and again[0].moments["v"] is None


def test_each_static_argument_and_shape_is_a_trace_of_its_own(tmp_path):
    store = trace_cache.Store(tmp_path)
    TRACED.clear()
    _call(store)
    _call(store)                 # the same program: from memory
    _call(store, cfg=0.25)       # another config
    _call(store, n=5)            # another shape
    assert TRACED == [0.5, 0.25, 0.5]
    assert len(list(tmp_path.glob("*.trace"))) == 3
    _assert_same(_call(trace_cache.Store(tmp_path), cfg=0.25), _plain(cfg=0.25))


def test_a_static_argument_without_a_stable_text_is_not_kept(tmp_path):
    store = trace_cache.Store(tmp_path)
    assert _call(store, rule=lambda x: x) is None           # a lambda: its text says nothing of it
    assert _call(store, rule=object()) is None              # printed with its address
    assert not list(tmp_path.glob("*.trace"))


def test_a_damaged_trace_is_traced_again_and_rewritten(tmp_path):
    _call(trace_cache.Store(tmp_path))
    [path] = tmp_path.glob("*.trace")
    path.write_bytes(path.read_bytes()[:200])
    TRACED.clear()
    _assert_same(_call(trace_cache.Store(tmp_path)), _plain())
    assert TRACED[0] == 0.5  # traced again (the plain call after it traced too)
    TRACED.clear()
    _call(trace_cache.Store(tmp_path))
    assert TRACED == []


def test_the_least_recently_used_traces_go_past_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_cache, "MAX_FILES", 2)
    store = trace_cache.Store(tmp_path)
    for n, cfg in enumerate((0.1, 0.2, 0.3)):
        _call(store, cfg=cfg)
        for path in tmp_path.glob("*.trace"):  # each older than the next, whatever the clock's grain
            os.utime(path, (path.stat().st_atime, path.stat().st_mtime - 10))
    assert len(list(tmp_path.glob("*.trace"))) == 2
    TRACED.clear()
    fresh = trace_cache.Store(tmp_path)
    _call(fresh, cfg=0.3), _call(fresh, cfg=0.2), _call(fresh, cfg=0.1)
    assert TRACED == [0.1]


@rehearsal.program(static_argnames=("cfg",))
def _program(x, *, cfg):
    TRACED.append(cfg)
    return {"y": jnp.sin(x) * cfg, "n": (jnp.sum(x),)}


def test_a_rehearsal_compiles_the_kept_program_the_run_then_calls(tmp_path):
    before = rehearsal._traces
    compiled = []
    try:
        rehearsal.keep_traces(trace_cache.Store(tmp_path))
        x = jnp.arange(6.0)
        with rehearsal.rehearsing(lambda name, lowered: compiled.append((name, lowered.compile()))):
            zeros = _program(x, cfg=3.0)
        assert [name for name, _ in compiled] == ["_program"]
        assert jax.tree.structure(zeros) == jax.tree.structure({"y": 0, "n": (0,)})
        assert not np.any(zeros["y"]) and zeros["y"].shape == (6,)
        TRACED.clear()
        _assert_same(_program(x, cfg=3.0), _program.jitted(x, cfg=3.0))
        assert TRACED == [3.0]  # jax.jit's own trace only: the run's call found the kept program
        TRACED.clear()
        _program.lower(x, cfg=4.0).compile()  # what a benchmark compiles: the program a call runs
        _program(x, cfg=4.0)
        assert TRACED == [4.0]
    finally:
        rehearsal.keep_traces(before)


def test_the_setting_turns_traces_off_and_the_cache_turns_them_on(tmp_path):
    """The traces and the models' initialisations (init_cache.py) alike."""
    script = ("import sys; from barbershop_jax.pipeline.runtime import compile_cache; "
              "from barbershop_jax import models; from barbershop_jax.stages import rehearsal; "
              "compile_cache.enable(sys.argv[1]); "
              "print(*[f'{type(s).__name__} {getattr(s, \"folder\", \"\")}' for s in (rehearsal._traces, models._kept)])")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    on = f"Store {tmp_path / 'xla' / 'traces'} Store {tmp_path / 'xla' / 'initialisations'}"
    for setting, expected in (("", on), ("off", "NoneType  NoneType")):
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "xla")], capture_output=True, text=True,
                              env={**env, trace_cache.ENV: setting})
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == expected


@pytest.mark.parametrize("tree", [None, (1, [2, {"b": 3, "a": None}]), State(1, {"m": 2, "v": None}), {}])
def test_output_trees_round_trip(tree):
    structure = jax.tree.structure(tree)
    assert jax.tree.structure(trace_cache._example(trace_cache._tree_spec(structure))) == structure


def test_a_trace_naming_anything_but_a_named_tuple_is_traced_again(tmp_path):
    _call(trace_cache.Store(tmp_path))
    [path] = tmp_path.glob("*.trace")
    header, payload = path.read_bytes().split(b"\n", 1)
    header, n = re.subn(rb'"type": "[^"]*:State"', b'"type": "os:getcwd"', header)
    assert n == 1
    path.write_bytes(header + b"\n" + payload)
    TRACED.clear()
    _assert_same(_call(trace_cache.Store(tmp_path)), _plain())
    assert TRACED[0] == 0.5


def _with_callback(x, *, cfg):
    jax.debug.callback(lambda v: None, x)
    return x * cfg


def test_a_program_export_cannot_write_runs_as_jit(tmp_path):
    store = trace_cache.Store(tmp_path)
    assert store.find(_with_callback, {"static_argnames": ("cfg",)}, (jnp.ones(3),), {"cfg": 2.0}) is None
    assert not list(tmp_path.glob("*.trace"))
