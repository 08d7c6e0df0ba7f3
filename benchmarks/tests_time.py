"""Where the test suite's time goes, per test file: its tests' wall time (setup, call and
teardown together) and what XLA did meanwhile in the worker's process: programs compiled and
their seconds, programs read from the persistent cache, tracing and lowering seconds. What a
test's subprocesses do (the command-line tests, the device script's dry run) counts in its wall
time only. Each worker's files are listed in the order it ran them, with when each started and
ended, so that a worker left idle while the other works shows.

    python benchmarks/tests_time.py                           # the suite as scripts/test.sh runs it
    python benchmarks/tests_time.py -- -n 0 tests/test_web.py  # any pytest arguments

Writes benchmarks/results/tests-time_{config}_{date}_{machine}.json and .md (config: the
number of workers). As a pytest plugin (`-p tests_time`, with benchmarks/ on the path and
$TESTS_TIME_DIR set) it writes one JSON line per test to $TESTS_TIME_DIR/{worker}.jsonl.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIR_ENV = "TESTS_TIME_DIR"
COMPILE, TRACE, LOWER = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_trace_duration",
                         "/jax/core/compile/jaxpr_to_mlir_module_duration")
CACHE_HIT = "/jax/compilation_cache/cache_hits"
# The suite as scripts/test.sh runs it (two workers, a file each, in conftest's order).
SUITE_ARGS = ["-q", "-n", "2", "--dist", "loadfile", "--no-loadscope-reorder", "-p", "no:cacheprovider"]


# ------------------------------------------------------------------ the plugin, in each pytest process
class _Recorder:
    """JAX's compile, trace and lowering events while a test runs. A compile event after a cache
    hit on the same thread was a read from the persistent cache, not a compilation."""

    def __init__(self):
        self.lock, self.local, self.totals = threading.Lock(), threading.local(), collections.Counter()

    def on_event(self, event, **kwargs):
        if event == CACHE_HIT:
            self.local.hit = True

    def on_duration(self, event, seconds, **kwargs):
        if event == COMPILE:
            kind = "cache_read" if getattr(self.local, "hit", False) else "compile"
            self.local.hit = False
        else:
            kind = {TRACE: "trace", LOWER: "lower"}.get(event)
        if kind is not None:
            with self.lock:
                self.totals[kind + "_s"] += seconds
                self.totals[kind + "_n"] += 1

    def take(self) -> dict:
        with self.lock:
            totals, self.totals = dict(self.totals), collections.Counter()
        return totals


_recorder = None


def pytest_configure(config):
    global _recorder
    if os.environ.get(DIR_ENV) and _recorder is None:
        from jax import monitoring
        _recorder = _Recorder()
        monitoring.register_event_listener(_recorder.on_event)
        monitoring.register_event_duration_secs_listener(_recorder.on_duration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _recorder is None:
        yield
        return
    _recorder.take()
    started = time.time()
    yield
    line = {"test": item.nodeid, "file": item.path.name, "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "start": started, "wall_s": time.time() - started, **_recorder.take()}
    with open(Path(os.environ[DIR_ENV]) / f"{line['worker']}.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------ the report
FIELDS = ("wall_s", "compile_n", "compile_s", "cache_read_n", "trace_s", "lower_s")


def summarise(tests: list[dict], started: float) -> dict:
    """Per file: its tests' sums, its worker, and when (seconds from `started`) it began and ended."""
    files = {}
    for t in sorted(tests, key=lambda t: t["start"]):
        f = files.setdefault(t["file"], {"file": t["file"], "worker": t["worker"], "tests": 0,
                                         "start_s": t["start"] - started, **dict.fromkeys(FIELDS, 0.0)})
        f["tests"] += 1
        for k in FIELDS:
            f[k] += t.get(k, 0.0)
        f["end_s"] = t["start"] + t["wall_s"] - started
    workers = collections.defaultdict(list)
    for f in files.values():
        workers[f["worker"]].append(f["file"])
    return {"files": sorted(files.values(), key=lambda f: -f["wall_s"]), "workers": dict(sorted(workers.items())),
            "first_test_s": min((t["start"] for t in tests), default=started) - started}


def markdown(result: dict) -> str:
    lines = [f"# The test suite's time ({result['machine']}, {result['date']})", "",
             f"`pytest {' '.join(result['args'])}`: \"{result['outcome']}\"; {result['wall_s']:.0f} s from start to "
             f"end. The first test started at {result['first_test_s']:.0f} s (start-up, collection, and with several "
             "workers conftest's compile of the transfer's programs).", "",
             "Per file (seconds; compile: programs XLA compiled in the worker's process; read: from the "
             "persistent cache; subprocesses count in the wall time only):", "",
             "| file | worker | tests | wall | compiled | compile | read | trace | lower | started | ended |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in result["files"]:
        lines.append(f"| {f['file']} | {f['worker']} | {f['tests']} | {f['wall_s']:.1f} | {f['compile_n']:.0f} | "
                     f"{f['compile_s']:.1f} | {f['cache_read_n']:.0f} | {f['trace_s']:.1f} | {f['lower_s']:.1f} | "
                     f"{f['start_s']:.0f} | {f['end_s']:.0f} |")
    ends = {w: max(f["end_s"] for f in result["files"] if f["worker"] == w) for w in result["workers"]}
    lines += ["", "Each worker's last test ended at: " + ", ".join(f"{w} {s:.0f} s" for w, s in ends.items()) + "."]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments (default: the suite as "
                                                     "scripts/test.sh runs it)")
    args = p.parse_args()
    pytest_args = args.pytest_args or SUITE_ARGS
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import result_names
    with tempfile.TemporaryDirectory(prefix="tests-time-") as tmp:
        # A compile cache new for this run, unless the environment names one (tests/conftest.py
        # keeps one between runs otherwise): the figures of a first run, comparable between runs.
        env = {"BARBERSHOP_JAX_TEST_CACHE": "fresh", **os.environ, DIR_ENV: tmp,
               "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
        started = time.time()
        run = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "tests_time", *pytest_args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outcome = "(no output)"
        for line in run.stdout:  # pytest's output as it comes; its last line says how the run went
            sys.stdout.write(line)
            outcome = line.strip().strip("= ") or outcome
        run.wait()
        wall = time.time() - started
        tests = [json.loads(line) for f in Path(tmp).glob("*.jsonl") for line in f.read_text().splitlines()]
    n = next((pytest_args[i + 1] for i, a in enumerate(pytest_args[:-1]) if a == "-n"), "0")
    stem = result_names.stem("tests-time", f"{n}workers")
    result = {"args": pytest_args, "machine": result_names.cpu_name(), "date": stem.split("_")[2], "wall_s": wall,
              "outcome": outcome, "returncode": run.returncode, **summarise(tests, started)}
    table = markdown(result)
    written = result_names.write(args.out, stem, result, table)
    print(table)
    print(f"wrote {written} and .md")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
