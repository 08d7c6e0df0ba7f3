"""Where a cold run's time goes: tracing, lowering to StableHLO, XLA compilation (per program),
optimisation steps, and the rest (image decoding, writes, Python), for a run with an empty
compile cache into a new folder ("cold") and the same run with the cache it left ("warm").

Each run is a fresh Python process (JAX keeps its compiled programs in memory), timed from its
start to its exit. JAX reports each program's trace, lowering and compile time through
jax.monitoring; the steps' time is what the progress bars measured (the step-times file).

    python benchmarks/cold_start.py                       # the demo on the embedded models
    python benchmarks/cold_start.py --workload transfer256  # one transfer, 256 px full-width generator
    python benchmarks/cold_start.py --workload transfer --size 1024 --scale 1  # a GPU: the official counts

Writes benchmarks/results/cold-start_{workload}_{date}_{machine}.json and .md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
          "/jax/core/compile/backend_compile_duration": "compile",
          "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read"}
WORKLOADS = ("demo", "transfer256", "transfer")
AHEAD, AHEAD_THREADS = "(ahead)", ("barbershop-jax-compile", "barbershop-jax-rehearsal")


# ------------------------------------------------------------------ the child: one run, measured
def _listen(programs: dict):
    """Sum each program's trace, lowering and compile (or cache read) times; the cache reads
    are JAX's events without a program name, and fall under "" (inside the compile times).
    What the rehearsal's threads did (stages/rehearsal.py: compiled ahead, beside the run) is
    also summed under AHEAD."""
    import threading

    import jax

    def on_duration(event, seconds, **kwargs):
        kind = EVENTS.get(event)
        if kind is not None:
            name = kwargs.get("fun_name") or "?"
            name = name[4:-1] if name.startswith("jit(") else name  # lowering and compiling say jit(f), tracing f
            entry = programs["" if kind == "cache_read" else name]
            entry[kind] += seconds
            entry[kind + "_n"] += 1
            if threading.current_thread().name.startswith(AHEAD_THREADS):
                programs[AHEAD][kind] += seconds
    jax.monitoring.register_event_duration_secs_listener(on_duration)


def _run_demo(out_dir, loop, options):
    from barbershop_jax.pipeline import demo
    # progress=True: the bars measure the steps (their output goes to the child's log file)
    demo.run_transfer(out_dir, progress=True, log=lambda *a: None, steps={**demo.DEMO_STEPS, **loop})
    from barbershop_jax.pipeline.store import step_times
    step_times.save_measured(64, "float32")  # what the bars measured (the demo keeps no step times)


def _run_transfer256(out_dir, loop, options):
    from barbershop_jax.pipeline import demo
    _run_transfer(out_dir, loop, {"size": 256, "channel_max": 512, "steps": demo.DEMO_STEPS})


def _run_transfer(out_dir, loop, options):
    """One transfer of the bundled images (the face, shape and colour crops), with a random
    full-width generator of options["size"] px (channels up to options["channel_max"]), the
    embedded parser and VGG16, at options["steps"] (default: the official counts times
    options["scale"])."""
    import jax
    from barbershop_jax.config import DEFAULT_BATCH_SIZE
    from barbershop_jax.models import bundle, embedded, stylegan2
    from barbershop_jax.models import pca as pca_lib
    from barbershop_jax.pipeline import demo
    from barbershop_jax.pipeline.hair_transfer import HairTransfer
    from barbershop_jax.pipeline.runtime import compile_cache
    from barbershop_jax.pipeline.runtime.settings import RunSettings

    # Before the random models, which stand in for loaded weights: their draws' programs are then
    # read from the cache in the warm run (HairTransfer turns the cache on only after them, and
    # the warm run compiled them anew: 6 s of 29 in the device script's dry run).
    compile_cache.enable()
    config = stylegan2.GeneratorConfig(size=options["size"], channel_multiplier=2, channel_max=options["channel_max"])
    g = stylegan2.init(config, jax.random.PRNGKey(0))
    models = bundle.Models(g, embedded.parser(), embedded.vgg(), pca_lib.pca_stats(g, 20_000, jax.random.PRNGKey(2)))
    steps = options.get("steps") or _official_steps(options.get("scale", 1.0))
    images = demo.example_images()
    run = RunSettings(progress=True, batch_size=options.get("batch_size") or DEFAULT_BATCH_SIZE)
    ht = HairTransfer(models, out_dir, run=run, **steps, **loop)
    ht.transfer(images["face"], images["shape"], images["color"])
    ht.save_step_times()


def _official_steps(scale: float) -> dict:
    from barbershop_jax.config import EmbedConfig, TransferConfig
    official = {**{k: getattr(EmbedConfig(), k) for k in ("w_steps", "fs_steps")},
                **{k: getattr(TransferConfig(), k) for k in ("inpaint_steps", "align_steps1", "align_steps2",
                                                              "blend_steps")}}
    return {k: max(1, round(v * scale)) for k, v in official.items()}


def child(workload: str, out_dir: str, report: str, options: str):
    started = time.perf_counter()
    programs = collections.defaultdict(lambda: collections.defaultdict(float))
    _listen(programs)
    imported = time.perf_counter()
    options = json.loads(options)
    {"demo": _run_demo, "transfer256": _run_transfer256, "transfer": _run_transfer}[workload](
        out_dir, options.pop("loop"), options)
    ran = time.perf_counter()
    Path(report).write_text(json.dumps({"import_s": imported - started, "run_s": ran - imported,
                                        "programs": {k: dict(v) for k, v in programs.items()}}))


# ------------------------------------------------------------------ the parent: cold, then warm
def _steps_seconds(step_times_file: Path) -> float:
    if not step_times_file.exists():
        return 0.0
    data = json.loads(step_times_file.read_text())
    return sum(seconds for stages in data.values() for _, seconds in stages.values())


def measure(workload: str, phase: str, cache: Path, work: Path, options: dict, ahead: bool = True) -> dict:
    """One run in a fresh process: its wall time and where it went. options: the workload's
    ({"loop": chunking options, ...}); ahead=False: no rehearsal."""
    out_dir, report, step_times = work / f"out-{phase}", work / f"{phase}.json", work / f"steps-{phase}.json"
    env = {**os.environ, "BARBERSHOP_JAX_COMPILE_CACHE": str(cache), "BARBERSHOP_JAX_STEP_TIMES": str(step_times),
           "BARBERSHOP_JAX_COMPILE_AHEAD": "1" if ahead else "0"}
    env.pop("BARBERSHOP_JAX_LOOP", None)  # the production loops, as a user runs them (or --loop's)
    started = time.perf_counter()
    with open(work / f"{phase}.log", "w") as log:
        subprocess.run([sys.executable, __file__, "--child", workload, str(out_dir), str(report), json.dumps(options)],
                       env=env, check=True, stderr=log)
    wall = time.perf_counter() - started
    data = json.loads(report.read_text())
    ahead_s = data["programs"].pop(AHEAD, {})
    totals = {kind: sum(p.get(kind, 0.0) for p in data["programs"].values()) for kind in EVENTS.values()}
    reads = data["programs"].get("", {}).get("cache_read_n", 0)
    steps = _steps_seconds(step_times)
    compile_total = totals["compile"] - totals["cache_read"]  # JAX's compile event spans a cache read too
    accounted = totals["trace"] + totals["lower"] + totals["compile"] + steps
    return {"phase": phase, "wall_s": wall, "import_s": data["import_s"], "trace_s": totals["trace"],
            "lower_s": totals["lower"], "compile_s": compile_total, "cache_read_s": totals["cache_read"],
            "steps_s": steps, "rest_s": data["run_s"] - accounted,
            "ahead_s": sum(ahead_s.get(kind, 0.0) for kind in ("trace", "lower", "compile")),
            "startup_s": wall - data["run_s"] - data["import_s"],
            "programs_compiled": sum(int(p.get("compile_n", 0)) for p in data["programs"].values()) - reads,
            "programs_read": int(reads), "programs": data["programs"]}


COLUMNS = ("wall_s", "startup_s", "import_s", "trace_s", "lower_s", "compile_s", "cache_read_s", "steps_s", "rest_s",
           "ahead_s")


def markdown(result: dict) -> str:
    ahead = "" if result.get("compile_ahead", True) else ", no rehearsal"
    lines = [f"# Cold start: {result['workload']}, loops {result['loop']}{ahead} ({result['machine']}, "
             f"{result['date']})", "",
             "Seconds. trace, lower, compile, cache_read: summed over every thread; ahead: the part of them on "
             "the rehearsal's threads (stages/rehearsal.py), beside the run; rest: the run's time not in "
             "those sums nor in the steps (so negative when the threads overlap).", "",
             "| run | " + " | ".join(c.removesuffix("_s") for c in COLUMNS) + " | programs compiled | read from cache |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for run in result["runs"]:
        lines.append(f"| {run['phase']} | " + " | ".join(f"{run[c]:.1f}" for c in COLUMNS)
                     + f" | {run['programs_compiled']} | {run['programs_read']} |")
    cold = result["runs"][0]["programs"]
    heaviest = sorted(((k, v) for k, v in cold.items() if k), key=lambda kv: -(kv[1].get("compile", 0)
                                                                             + kv[1].get("lower", 0)
                                                                             + kv[1].get("trace", 0)))[:12]
    lines += ["", "Heaviest programs of the cold run (seconds):", "",
              "| program | trace | lower | compile | compiles |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {p.get('trace', 0):.1f} | {p.get('lower', 0):.1f} | {p.get('compile', 0):.1f} | "
              f"{int(p.get('compile_n', 0))} |" for name, p in heaviest]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=WORKLOADS, default="demo")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--loop", metavar="CHUNK,rolled|unrolled",
                   help="the loops' chunking (default: the backend's, stages/loop.py loop_defaults)")
    p.add_argument("--no-compile-ahead", action="store_true",
                   help="runs without the rehearsal that compiles the later stages ahead (BARBERSHOP_JAX_COMPILE_AHEAD=0)")
    p.add_argument("--cache", metavar="DIR",
                   help="the compile cache folder of both runs, kept for later ones (benchmarks/device_run.sh shares it "
                        "with its other parts); empty or absent: the cold run starts from nothing (default: a temporary "
                        "folder)")
    p.add_argument("--size", type=int, default=1024, help="transfer: the generator's size (default 1024)")
    p.add_argument("--channel-max", type=int, default=512, help="transfer: its widest layer (official: 512)")
    p.add_argument("--scale", type=float, default=1.0, help="transfer: the official step counts times this")
    p.add_argument("--batch-size", type=int,
                   help="transfer: the run's batch size (default the pipeline's). A single transfer's stages fit "
                        "in one batch at 3 or more and run at their own sizes (3 images, 2 pairs, 1 triple), so "
                        "this matters below 3: device_run.sh's dry run gives 1, its BATCH, so that its other parts "
                        "find these programs compiled")
    p.add_argument("--child", nargs=4, metavar=("WORKLOAD", "OUT_DIR", "REPORT", "OPTIONS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    if args.cache and Path(args.cache).is_dir() and any(Path(args.cache).iterdir()):
        p.error(f"--cache {args.cache}: the folder is not empty; the cold run needs a compile cache with nothing in it")
    loop = {}
    if args.loop:
        chunk, kind = args.loop.split(",")
        loop = {"chunk": int(chunk), "unroll": kind == "unrolled"}
    import result_names
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        work = Path(tmp)
        options = {"loop": loop, "size": args.size, "channel_max": args.channel_max, "scale": args.scale,
                   "batch_size": args.batch_size}
        cache = Path(args.cache) if args.cache else work / "xla-cache"
        runs = [measure(args.workload, phase, cache, work, options, not args.no_compile_ahead)
                for phase in ("cold", "warm")]
    workload = args.workload + (f"-{args.size}px-x{args.scale:g}" if args.workload == "transfer" else "")
    config = (workload + (f"-loop{args.loop.replace(',', '-')}" if args.loop else "")
              + ("-no-ahead" if args.no_compile_ahead else ""))
    stem = result_names.stem("cold-start", config)
    result = {"workload": workload, "loop": args.loop or "default", "compile_ahead": not args.no_compile_ahead,
              "machine": result_names.machine(), "date": stem.split("_")[2], "runs": runs}
    table = markdown(result)
    written = result_names.write(args.out, stem, result, table)
    print(table)
    print(f"wrote {written} and .md")


if __name__ == "__main__":
    main()
