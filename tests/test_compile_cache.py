"""The persistent compilation cache's bound (compile_cache.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from barbershop_jax.pipeline.runtime import compile_cache

# Compiles the small programs argv[2] .. argv[3] - 1 with the cache in folder argv[1].
COMPILE = """
import sys, warnings
# A failed cache read or write is only a warning in JAX: fail on it (and on nothing else).
warnings.filterwarnings("error", message=".*persistent compilation cache")
from barbershop_jax.pipeline.runtime import compile_cache
import jax, jax.numpy as jnp, numpy as np
compile_cache.enable(sys.argv[1])
for k in range(int(sys.argv[2]), int(sys.argv[3])):
    f = jax.jit(lambda x, k=k: jnp.tanh(x @ x.T + k) @ x * k)
    f(np.ones((64 + k, 32), np.float32)).block_until_ready()
"""


def _compile(folder, start, stop, max_gb):
    env = dict(os.environ, BARBERSHOP_JAX_COMPILE_CACHE_MAX_GB=str(max_gb),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    done = subprocess.run([sys.executable, "-c", COMPILE, str(folder), str(start), str(stop)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


def _entries(folder):
    return sorted(folder.glob("*-cache"))


def test_the_bound_evicts_the_oldest_and_adopts_unbounded_entries(tmp_path):
    folder = tmp_path / "xla"
    _compile(folder, 0, 3, "unlimited")  # as an earlier version wrote: no access-time files
    old = _entries(folder)
    assert len(old) >= 3 and not list(folder.glob("*-atime"))
    bound = sum(p.stat().st_size for p in old)
    # The same bound, three new programs: the old ones make way. Without the access times given
    # to the old entries, every write here would fail (a warning, an error in the script).
    _compile(folder, 3, 6, bound / 2**30)
    now = _entries(folder)
    assert sum(p.stat().st_size for p in now) <= bound
    assert set(old) - set(now), "nothing was evicted"
    assert set(now) - set(old), "nothing new was written"
    for entry in now:
        assert entry.with_name(entry.name.replace("-cache", "-atime")).exists()


def test_max_size_setting(monkeypatch):
    var = compile_cache.MAX_GB_ENV
    monkeypatch.delenv(var, raising=False)
    assert compile_cache.max_size_bytes() == 4 * 2**30
    monkeypatch.setenv(var, "unlimited")
    assert compile_cache.max_size_bytes() == -1
    monkeypatch.setenv(var, " 0.5 ")
    assert compile_cache.max_size_bytes() == 2**29
    for bad in ["0", "-2", "inf", "nan", "4GB"]:
        monkeypatch.setenv(var, bad)
        with pytest.raises(ValueError, match=var):
            compile_cache.max_size_bytes()


def test_a_bad_bound_stops_the_command_with_one_line(tmp_path):
    env = dict(os.environ, BARBERSHOP_JAX_COMPILE_CACHE_MAX_GB="4GB",
               BARBERSHOP_JAX_COMPILE_CACHE=str(tmp_path / "xla"))
    done = subprocess.run([sys.executable, "-m", "barbershop_jax.cli", "align-faces", str(tmp_path / "a.png"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "barbershop-jax: error: BARBERSHOP_JAX_COMPILE_CACHE_MAX_GB='4gb': expected a size in GiB above 0, "
        "or 'unlimited'"]
    assert not Path(tmp_path / "xla").exists()
