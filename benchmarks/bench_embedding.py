"""Embedding speed: the batched JAX W+ and FS steps against the official loop in PyTorch.

The embedding stages of the benchmark suite (suite.py), with their own table. JAX: the real
stage step (stages/embed.py _w_plus_step / _fs_step), vmapped and run `--steps` at a time in one
compiled `lax.scan` chunk, exactly as `embed_w_plus` / `embed_fs` run it (suite.time_jax_stage);
timed per chunk (compile excluded), reported per step. PyTorch: the official loop body at
batch 1 (torch_reference.py: generator with fresh noise, MSE, PULSE bicubic, the lpips
package's LPIPS-VGG, p-norm, Adam). Random weights at the official architecture on both sides.
Reports image-steps per second, the ratio, and peak device memory. JSON + markdown table in
benchmarks/results/.

    python benchmarks/bench_embedding.py --quick                  # 64 px, 2 CPU cores
    python benchmarks/bench_embedding.py --size 1024 --batches 1 2 4 8
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from barbershop_jax.config import EmbedConfig, TransferConfig  # noqa: E402
from barbershop_jax.stages import loop  # noqa: E402
from suite import build_models, time_jax_stage  # noqa: E402
from torch_reference import Nets, time_step  # noqa: E402
import result_names  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--lpips-size", type=int, default=256)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--steps", type=int, help="steps per timed chunk (default: the backend's chunk)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--stages", nargs="+", default=["W+", "FS"], choices=["W+", "FS"])
    p.add_argument("--quick", action="store_true", help="64 px, LPIPS at 32, batches 1 2 4, 3 steps")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.lpips_size, args.batches = 64, 32, [1, 2, 4]
    args.steps = args.steps or loop.loop_defaults()[0]

    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = build_models(args.size)
    nets = Nets(args.size, device, lpips_size=args.lpips_size)
    embed_cfg = EmbedConfig(lpips_size=args.lpips_size, chunk=args.steps)
    cfg = TransferConfig(chunk=args.steps).resolve(args.size)  # unused by the embedding stages
    unroll = loop.loop_defaults()[1]  # as loop.run runs it on this backend
    rows = []
    for stage in args.stages:
        ref = time_step(nets, stage, 1, steps=args.steps, reps=args.reps)
        for batch in args.batches:
            res = time_jax_stage(stage, models, batch, chunk=args.steps, unroll=unroll, reps=args.reps,
                                 embed_cfg=embed_cfg, cfg=cfg, dtype="float32")
            row = {"stage": stage, "batch": batch, "jax": res, "torch_batch1": ref,
                   "ratio": res["image_steps_per_s"] / ref["image_steps_per_s"]}
            rows.append(row)
            print(_row(row), flush=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "jax": jax.__version__,
            "torch": torch.__version__, "jax_device": str(jax.devices()[0]), "torch_device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "machine": result_names.machine(), "size": args.size, "lpips_size": args.lpips_size,
            "steps": args.steps, "reps": args.reps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = result_names.stem("embedding", f"{args.size}px")
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    head = (f"Embedding steps, {args.size} px (LPIPS at {args.lpips_size}); {meta['gpu'] or 'CPU'}; JAX "
            f"{meta['jax']}, PyTorch {meta['torch']}; median of {args.reps} chunks of {args.steps} steps; {meta['date']}")
    (out / f"{tag}.md").write_text("\n".join([head, "", HEADER, *map(_row, rows), ""]))
    print(f"wrote {out / tag}.json and .md")


HEADER = ("| stage | batch | JAX ms/step | JAX image-steps/s | compile s | JAX peak MiB | PyTorch batch-1 ms/step "
          "| PyTorch image-steps/s | PyTorch peak MiB | ratio |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def _mib(b):
    return "-" if b is None else f"{b / 2**20:.0f}"


def _row(r):
    j, t = r["jax"], r["torch_batch1"]
    return (f"| {r['stage']} | {r['batch']} | {j['ms_per_step']:.1f} | {j['image_steps_per_s']:.2f} | {j['compile_s']:.1f} | "
            f"{_mib(j['device_peak_bytes'])} | {t['ms_per_step']:.1f} | {t['image_steps_per_s']:.2f} | {_mib(t['peak_bytes'])} | "
            f"{r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
