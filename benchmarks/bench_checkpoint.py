"""What the resume checkpoints cost: a whole W+ loop (stages/embed.py embed_w_plus, as
pipeline/embed.py runs it) with checkpoints every N steps against the same loop without them,
same machine, same run. Medians of --reps runs after a warm-up run (compilation excluded).
JSON + markdown table in benchmarks/results/.

    python benchmarks/bench_checkpoint.py --quick      # 64 px generator, 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from barbershop_jax import config  # noqa: E402
from barbershop_jax.config import EmbedConfig  # noqa: E402
from barbershop_jax.pipeline import loop_hook  # noqa: E402
from barbershop_jax.pipeline.store import resume  # noqa: E402
from barbershop_jax.stages import embed as embedding  # noqa: E402
from test_embedding import _known_w_plus, _targets, make_consts  # noqa: E402
import result_names  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="64 px tiny config (the only one without weights)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, nargs="+", default=[config.DEFAULT_CHECKPOINT_EVERY, 10])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    consts = make_consts()
    targets = _targets(consts, _known_w_plus(consts, args.batch, seed=1), noise="random")
    cfg = EmbedConfig(w_steps=args.steps, lpips_size=32)

    def timed(every):
        times = []
        for rep in range(args.reps + 1):
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None if every is None else resume.LoopCheckpoint(Path(tmp) / "c", every)
                t0 = time.perf_counter()
                w, _ = embedding.embed_w_plus(consts, targets, cfg, hook=loop_hook.PipelineHook(checkpoint=ckpt))
                jax.block_until_ready(w)
                if rep:  # the first run compiles
                    times.append(time.perf_counter() - t0)
        return statistics.median(times)

    base = timed(None)
    rows = [{"checkpoint_every": None, "median_s": base, "overhead": 0.0}]
    for every in args.every:
        t = timed(every)
        rows.append({"checkpoint_every": every, "median_s": t, "overhead": t / base - 1.0})
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "backend": jax.default_backend(),
              "device": str(jax.devices()[0]), "jax": jax.__version__, "size": consts.generator.config.size,
              "batch": args.batch, "steps": args.steps, "reps": args.reps, "rows": rows}
    lines = [f"W+ loop, {args.steps} steps, batch {args.batch}, {result['size']} px, {result['device']}, "
             f"median of {args.reps} ({result['date']})", "", "| checkpoint every | median s | overhead |",
             "| --- | ---: | ---: |"]
    lines += [f"| {r['checkpoint_every'] or 'off'} | {r['median_s']:.2f} | {100 * r['overhead']:+.1f}% |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = result_names.stem("checkpoint", f"{result['size']}px")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
