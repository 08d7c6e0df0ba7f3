"""Traced programs kept across processes (compile_cache.jit: jax.export into the cache folder)."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from barbershop_jax import compile_cache, embedding, optimize
from test_embedding import _known_w_plus, _targets, make_consts

TRACES = []


def _counted_w_plus_step(consts, state, data, i, cfg):
    TRACES.append(1)  # runs when the step is traced, never when a compiled program runs
    return embedding._w_plus_step(consts, state, data, i, cfg)


def _scale(x, *, factor):
    TRACES.append(1)
    return {"y": x * factor, "sums": (jnp.sum(x), None)}


@pytest.fixture
def programs(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "_programs_dir", tmp_path)
    TRACES.clear()
    return tmp_path


def _new_process_jit(fun, **options):
    """The function as a new process has it: nothing held in memory."""
    return compile_cache.jit(fun, **options)


def _loading_jit(fun, exports, **options):
    """A new process's function that records each export it makes (none: it read the file)."""
    jitted = compile_cache.jit(fun, **options)
    export = jitted._export
    jitted._export = lambda *args: exports.append(args) or export(*args)
    return jitted


def test_a_new_process_runs_the_stored_step_with_the_same_bits(programs):
    consts = make_consts()
    targets = _targets(consts, _known_w_plus(consts, 2))
    cfg = embedding.EmbedConfig(lpips_size=32)
    state = embedding._adam_state(consts.generator.mean_w_plus(2), cfg)
    data = (targets, embedding.target_units(consts.vgg, targets.small))
    static = dict(step=_counted_w_plus_step, cfg=cfg.step_config(), length=2)
    run_chunk = optimize._run_chunk.__wrapped__
    options = dict(static_argnames=("step", "cfg", "length", "unroll"), donate_argnums=(1,))

    def run(fn):
        out = fn(consts, jax.tree.map(jnp.array, state), data, jnp.int32(0), jnp.int32(3), **static)
        return jax.tree.leaves(out)

    before = set(programs.glob("*.jaxexport"))
    TRACES.clear()
    first = run(_new_process_jit(run_chunk, **options))
    assert len(TRACES) == 1
    written = set(programs.glob("*.jaxexport")) - before
    assert len(written) == 1
    exports = []
    second = run(_loading_jit(run_chunk, exports, **options))
    assert exports == [] and len(TRACES) == 1, "the second process traced the step again"
    plain = run(jax.jit(run_chunk, **options))
    for a, b, c in zip(plain, first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_outputs_keep_their_structure_and_python_calls_stay_plain(programs):
    x = jnp.arange(6.0).reshape(2, 3)
    out = _new_process_jit(_scale, static_argnames="factor")(x, factor=2.0)
    exports = []
    again = _loading_jit(_scale, exports, static_argnames="factor")(x, factor=2.0)
    assert exports == []
    assert jax.tree.structure(again) == jax.tree.structure(out) == jax.tree.structure(_scale(x, factor=2.0))
    np.testing.assert_array_equal(again["y"], x * 2)
    np.testing.assert_array_equal(again["sums"][0], 15.0)
    # A Python scalar argument, or a call under another trace, runs as plain jax.jit: no file.
    files = set(programs.glob("*"))
    np.testing.assert_array_equal(_new_process_jit(_scale, static_argnames="factor")(1.5, factor=2.0)["y"], 3.0)
    inner = jax.jit(lambda v: _new_process_jit(_scale, static_argnames="factor")(v, factor=2.0)["y"])(x + 1)
    np.testing.assert_array_equal(inner, (x + 1) * 2)
    assert set(programs.glob("*")) == files


def test_what_changes_a_trace_changes_the_program_file(monkeypatch):
    x = jnp.ones((2, 3))
    tree, avals = jax.tree.structure((x,)), compile_cache._avals([x])

    def key(fun=_scale, avals=avals, **static):
        return compile_cache._disk_key(fun, tree, avals, static)

    base = key(factor=2.0)
    assert base == key(factor=2.0)
    assert base != key(factor=3.0)
    assert base != key(avals=compile_cache._avals([x.astype(jnp.bfloat16)]), factor=2.0)
    assert base != key(avals=compile_cache._avals([jnp.ones((3, 2))]), factor=2.0)
    assert base != key(fun=_counted_w_plus_step, factor=2.0)
    with jax.default_matmul_precision("highest"):  # one of JAX's trace-affecting settings
        assert base != key(factor=2.0)
    monkeypatch.setenv("BARBERSHOP_JAX_CPU_CONV", "plain")  # ours: changes the models' convolutions
    assert base != key(factor=2.0)
    monkeypatch.setenv(compile_cache.ENV, "/somewhere/else")  # where the caches are: not traced
    monkeypatch.delenv("BARBERSHOP_JAX_CPU_CONV")
    assert base == key(factor=2.0)
    # No text that every process shares: a closure, an object known by its address.
    assert key(factor=lambda v: v) is None
    assert key(factor=object()) is None


def test_output_structures_round_trip_through_text():
    state = optax.adam(0.1).init({"w": jnp.zeros(3)})
    for value in [state, {"b": 1, "a": [2, None, (3,)]}, embedding.FSParams(1, 2), 5, None, ()]:
        tree = jax.tree.structure(value)
        assert compile_cache._tree_from_json(compile_cache._tree_to_json(tree)) == tree
    with pytest.raises(TypeError):
        compile_cache._tree_to_json(jax.tree.structure(make_consts().generator))


def test_a_damaged_file_is_exported_again_and_a_failing_program_runs_plain(programs, caplog):
    x = jnp.arange(4.0)
    _new_process_jit(_scale, static_argnames="factor")(x, factor=3.0)
    (path,) = programs.glob("*.jaxexport")
    path.write_bytes(b"half a program")
    exports = []
    out = _loading_jit(_scale, exports, static_argnames="factor")(x, factor=3.0)
    np.testing.assert_array_equal(out["y"], x * 3)
    assert path.read_bytes().startswith(compile_cache._MAGIC) and len(exports) == 1
    # A stored program that XLA cannot take (here: exported for other shapes) is dropped for
    # plain jax.jit after one warning line, and the call still gives the right numbers.
    other = _new_process_jit(_scale, static_argnames="factor")
    wrong = other._export([jnp.ones(7)], jax.tree.structure((x,)), {"factor": 3.0})
    other._programs.clear()
    path.write_bytes(b"")  # so that reading fails and the export below is the one used
    compile_cache._write(path, *wrong)
    with caplog.at_level(logging.WARNING, logger="barbershop_jax"):
        out = other(x, factor=3.0)
    np.testing.assert_array_equal(out["y"], x * 3)
    assert "_scale: the exported program failed" in caplog.text


def test_the_programs_folder_is_bounded(tmp_path):
    for i in range(5):  # 100 bytes each, used at times 0 .. 4
        (tmp_path / f"{i}.jaxexport").write_bytes(bytes(100))
        os.utime(tmp_path / f"{i}.jaxexport", (i, i))
    compile_cache._evict(tmp_path, 250)
    assert sorted(p.name for p in tmp_path.glob("*.jaxexport")) == ["3.jaxexport", "4.jaxexport"]


def test_the_trace_cache_can_be_turned_off_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "_programs_dir", None)
    monkeypatch.setenv(compile_cache.TRACE_ENV, "off")
    compile_cache._keep_programs(tmp_path / "programs")
    assert compile_cache._programs_dir is None and not (tmp_path / "programs").exists()
    monkeypatch.delenv(compile_cache.TRACE_ENV)
    compile_cache._keep_programs(tmp_path / "programs")
    assert compile_cache._programs_dir == tmp_path / "programs"


def test_a_jax_without_the_apis_used_here_runs_everything_plain(programs, monkeypatch, caplog):
    def missing(leaves):
        raise AttributeError("module 'jax.core' has no attribute 'Tracer'")  # as a JAX could say

    monkeypatch.setattr(compile_cache, "_avals", missing)
    x = jnp.arange(3.0)
    with caplog.at_level(logging.WARNING, logger="barbershop_jax"):
        out = _new_process_jit(_scale, static_argnames="factor")(x, factor=2.0)
    np.testing.assert_array_equal(out["y"], x * 2)
    assert "traced programs are not kept in this process" in caplog.text
    assert compile_cache._programs_dir is None and not list(programs.glob("*.jaxexport"))
