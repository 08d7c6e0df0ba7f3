"""Compile time against step time of the W+ embedding's loop, for one chunking: the trade that
stages/loop.py's loop_defaults makes on a backend. One fresh process per chunking, with the
persistent compile cache off, so that every program compiles.

    python benchmarks/loop_compile.py --chunk 2 --unroll --steps 60              # 64 px, batch 4
    python benchmarks/loop_compile.py --chunk 4 --unroll --steps 8 --size 256 --batch 1
    XLA_FLAGS=--xla_backend_optimization_level=1 python benchmarks/loop_compile.py ...

Prints one markdown row and appends it, as JSON, to benchmarks/results/loop-compile_{date}_{machine}.jsonl.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")  # every program compiles, in every run

import jax  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunk", type=int, default=2)
    p.add_argument("--unroll", action="store_true")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="64: the embedded models; else a full-width generator")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    compiled = collections.defaultdict(float)

    def on_duration(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled[kwargs.get("fun_name")] += seconds
    jax.monitoring.register_event_duration_secs_listener(on_duration)

    from barbershop_jax.config import EmbedConfig
    from barbershop_jax.models import bundle, stylegan2
    from barbershop_jax.models import pca as pca_lib
    from barbershop_jax.stages import embed
    import result_names

    models = bundle.load(None, parser=False)
    if args.size != 64:
        g = stylegan2.init(stylegan2.GeneratorConfig(size=args.size), jax.random.PRNGKey(0))
        models = models._replace(generator=g, pca=pca_lib.pca_stats(g, 2000, jax.random.PRNGKey(2)))
    cfg = EmbedConfig.for_size(args.size, w_steps=args.steps, chunk=args.chunk, unroll=args.unroll)
    full = jax.random.uniform(jax.random.PRNGKey(0), (args.batch, args.size, args.size, 3), minval=-1, maxval=1)
    stride = args.size // cfg.lpips_size
    targets = embed.Targets(full, full[:, ::stride, ::stride], jax.random.split(jax.random.PRNGKey(1), args.batch))
    started = time.perf_counter()
    w_plus, _ = embed.embed_w_plus(models, targets, cfg)
    jax.block_until_ready(w_plus)
    total = time.perf_counter() - started
    chunk_compile = compiled["jit(_run_chunk)"]
    row = {"size": args.size, "batch": args.batch, "chunk": args.chunk, "unroll": args.unroll, "steps": args.steps,
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "total_s": total, "chunk_compile_s": chunk_compile,
           "step_s": (total - chunk_compile) / args.steps}  # the rest: steps and the small programs around them
    print(f"| {args.size} px | batch {args.batch} | {args.chunk} {'unrolled' if args.unroll else 'rolled'} | "
          f"{row['xla_flags'] or 'default flags'} | chunk compile {chunk_compile:.1f} s | "
          f"{row['step_s']:.2f} s/step | total {total:.1f} s |")
    out = Path(args.out) / f"loop-compile_{result_names.stem('x', 'x').split('_', 2)[2]}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
