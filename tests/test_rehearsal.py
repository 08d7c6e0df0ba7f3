"""The rehearsal (stages/rehearsal.py): a run's stage programs compiled ahead on other threads,
the run's results the same bit for bit, nothing written by it."""
import json
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from barbershop_jax.pipeline.runtime import compile_ahead
from barbershop_jax.stages import rehearsal
from conftest import BATCH_TRIPLES, NAMES, count_compilations, is_stage_program, rehearsed_run, rehearsed_transfer
from conftest import tiny_transfer


@rehearsal.program(static_argnames="n")
def _power(x, y, n):
    for _ in range(n):
        x = x * y
    return {"x": x, "sum": jnp.sum(x)}


@rehearsal.program
def _outer(x):
    return _power(x, x, n=2)["sum"]  # a program called inside another is part of it


def test_a_program_is_jit_outside_a_rehearsal_and_compiles_ahead_inside_one():
    x = jnp.arange(6.0).reshape(2, 3)
    assert float(_power(x, x, n=3)["sum"]) == float(np.sum(np.arange(6.0) ** 4))
    compiler = compile_ahead.CompilerThreads(workers=1)
    with rehearsal.rehearsing(compiler):
        assert rehearsal.active()
        out = _power(x, 2 * x, n=5)
        outer = _outer(x)
    compiler.wait()
    assert not rehearsal.active()
    assert isinstance(out["x"], np.ndarray) and out["x"].shape == (2, 3) and not out["x"].any()
    assert out["sum"].shape == () and outer.shape == ()
    assert compiler.programs == ["_power", "_outer"]  # _outer's _power was traced into it, not handed over
    with count_compilations() as compiled:  # compiled ahead: the calls compile nothing
        assert float(_power(x, 2 * x, n=5)["sum"]) == float(np.sum(np.arange(6.0) * 2 ** 5 * np.arange(6.0) ** 5))
        _outer(x)
    assert compiled == []
    compiler.close()
    with rehearsal.rehearsing(compiler), pytest.raises(compile_ahead.Stopped):  # closed: it ends at its next program
        _power(x, x, n=6)


def test_other_threads_do_not_rehearse():
    seen = []
    with rehearsal.rehearsing(compile_ahead.CompilerThreads(workers=1)):
        t = threading.Thread(target=lambda: seen.append(rehearsal.active()))
        t.start()
        t.join()
    assert seen == [False]


def _rehearsed_here(models, images, folder):
    """A triple's transfer with the rehearsal into folder/out, at batch 5, which no other test
    runs: programs another worker put in the suite's persistent cache would be read at once on
    the run's thread, which could then outrun the rehearsal. (triples, batch size, [thread,
    program] of each compile.)"""
    batch, triples = 5, [tuple(images[:3])]
    jax.clear_caches()  # nothing compiled before, in this process
    return triples, batch, rehearsed_transfer(models, triples, folder / "out", batch_size=batch)


def _arrays(path):
    if path.suffix == ".png":
        return {"": np.asarray(Image.open(path))}
    if path.suffix == ".npy":
        return {"": np.load(path)}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_a_transfer_compiles_its_programs_ahead_with_the_same_results(models, images, tmp_path):
    """The stage programs of a rehearsed run compile on the rehearsal's compiler threads, past
    the first ones none on the run's thread (in a process that had compiled no stage), and its
    files are those of a run without a rehearsal, bit for bit: the rehearsal writes no file and
    changes no number. The rehearsed run: the one conftest's pytest_sessionstart made before the
    workers started (test_transfer's batch run, on the suite's persistent cache, new or kept
    from an earlier run), else one here."""
    rehearsed = rehearsed_run()
    if rehearsed is not None:
        where = json.loads((rehearsed / "compiled.json").read_text())
        path = {n: rehearsed / "in" / f"{n}.png" for n in NAMES}
        triples, batch = [tuple(path[n] for n in t) for t in BATCH_TRIPLES], 2
    else:
        rehearsed = tmp_path / "rehearsed"
        triples, batch, where = _rehearsed_here(models, images, rehearsed)
    stage_programs = [(thread, name, read) for thread, name, read in where if is_stage_program(name)]
    ahead_of_time = [name for thread, name, _ in stage_programs if thread.startswith(compile_ahead.THREAD_PREFIX)]
    in_the_run = [(name, read) for thread, name, read in stage_programs
                  if not thread.startswith(compile_ahead.THREAD_PREFIX)]
    assert set(ahead_of_time) >= {"jit(_run_chunk)", "jit(_between_steps)", "jit(blend_masks)", "jit(_final_render)"}
    # The rehearsal and the run start together: the run may get to its first programs (the W+
    # targets' and the W+ loop's) before the rehearsal hands them over, and compiles none after.
    # Programs the suite's kept cache holds from an earlier run take the run's thread a fraction
    # of a second to read instead, so there it may read a few more before the rehearsal, which
    # traces every stage, gets ahead (seen: a third, a second loop's chunk).
    compiled_in_the_run = [name for name, read in in_the_run if not read]
    assert len(ahead_of_time) >= 12 and len(compiled_in_the_run) <= 2, (ahead_of_time, in_the_run)
    assert len(in_the_run) <= 4, (ahead_of_time, in_the_run)

    plain = tmp_path / "plain"
    tiny_transfer(models, plain, batch_size=batch, compile_ahead=False).transfer_many(triples)
    files = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert files(rehearsed / "out") == files(plain)
    compared = [f for f in files(plain) if f.suffix in (".png", ".npy", ".npz")]
    assert any(f.suffix == ".npz" for f in compared) and any(f.suffix == ".png" for f in compared)
    for f in compared:
        ahead, alone = _arrays(rehearsed / "out" / f), _arrays(plain / f)
        assert ahead.keys() == alone.keys(), f
        for k in ahead:
            assert np.array_equal(ahead[k], alone[k]), (f, k)
