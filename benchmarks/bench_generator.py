"""Generator speed: JAX against the PyTorch reference, same machine, same run.

Times three steps at each batch size, with random weights of the official architecture:
  render       W+ -> image (fresh noise each call, as the official code draws it)
  grad_w       W+ -> image -> mean squared error -> gradient to W+ (the W+ embedding step)
  grad_fs      (F, S) -> image -> mean squared error -> gradient to F and S (the FS step)
The PyTorch side is tests/torch_stylegan2.py: the official algorithm (per-sample modulated
weights, grouped convolution) in plain PyTorch ops, gradients to the latents only.
JAX: jitted, compile time reported apart, `block_until_ready` on every timed call.
Writes JSON and a markdown table to benchmarks/results/.

    python benchmarks/bench_generator.py --size 256 --batches 1 2 4 8
    python benchmarks/bench_generator.py --quick        # 64 px, a minute on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

STEPS = ("render", "grad_w", "grad_fs")


def _median_ms(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), (min(times), max(times))


def jax_steps(model, batch, block):
    """The three steps as jitted functions of (model, inputs, key)."""
    def render(m, w, key):
        return m.render(w, key=key)

    def grad_w(m, w, key):
        return jax.grad(lambda w: jnp.mean(jnp.square(m.render(w, key=key))))(w)

    def grad_fs(m, fs, key):
        f, s = fs
        loss = lambda f, s: jnp.mean(jnp.square(m.render_from_features(f, s, block=block, key=key)))
        return jax.grad(loss, argnums=(0, 1))(f, s)

    c = model.config
    w = model.mean_w_plus(batch) + 0.1 * jax.random.normal(jax.random.PRNGKey(0), (batch, c.n_latent, c.style_dim))
    f, _ = jax.jit(lambda m, w: m.features(w, block=block, noise="const"))(model, w)
    s = w[:, c.first_latent(block + 1):]
    return {"render": (jax.jit(render), w), "grad_w": (jax.jit(grad_w), w), "grad_fs": (jax.jit(grad_fs), (f, s))}


def bench_jax(model, batch, block, reps):
    out = {}
    for name, (fn, x) in jax_steps(model, batch, block).items():
        key = jax.random.PRNGKey(1)
        t = time.perf_counter()
        compiled = fn.lower(model, x, key).compile()
        compile_s = time.perf_counter() - t
        jax.block_until_ready(compiled(model, x, key))  # warm-up
        keys = iter(jax.random.split(key, reps + 1))
        ms, spread = _median_ms(lambda: jax.block_until_ready(compiled(model, x, next(keys))), reps)
        flops = (compiled.cost_analysis() or {}).get("flops") if hasattr(compiled, "cost_analysis") else None
        if isinstance(flops, list):
            flops = flops[0].get("flops") if flops else None
        out[name] = {"ms": ms, "min_ms": spread[0], "max_ms": spread[1], "compile_s": compile_s,
                     "images_per_s": batch * 1e3 / ms, "flops": flops}
    return out


def bench_torch(g, batch, block, reps, device):
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    g = g.to(device).requires_grad_(False)
    torch.manual_seed(0)
    w = torch.randn(batch, g.n_latent, g.style_dim, device=device) * 0.1
    shapes = [n.shape[2:] for n in g.const_noise()]

    def noise():
        return [torch.randn(batch, 1, *s, device=device) for s in shapes]

    with torch.no_grad():
        f0, _ = g(w, noise(), end_layer=block)

    def render():
        with torch.no_grad():
            g(w, noise())
        sync()

    def grad_w():
        wt = w.clone().requires_grad_(True)
        _, img = g(wt, noise())
        img.pow(2).mean().backward()
        sync()

    def grad_fs():
        ft = f0.clone().requires_grad_(True)
        wt = w.clone().requires_grad_(True)
        _, img = g(wt, noise(), start_layer=block + 1, layer_in=ft)
        img.pow(2).mean().backward()
        sync()

    out = {}
    for name, fn in (("render", render), ("grad_w", grad_w), ("grad_fs", grad_fs)):
        fn()  # warm-up
        ms, spread = _median_ms(fn, reps)
        out[name] = {"ms": ms, "min_ms": spread[0], "max_ms": spread[1], "images_per_s": batch * 1e3 / ms}
    return out


def make_models(size, channel_multiplier):
    import torch
    import torch_stylegan2 as T
    from convert import stylegan2 as conv

    g = T.realistic_init_(T.Generator(size, 512, 8, channel_multiplier=channel_multiplier)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(T.checkpoint(g, n_avg=256), Path(tmp) / "g.pt")
        model, _ = conv.convert(Path(tmp) / "g.pt")
    return g, jax.device_put(model)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--channel-multiplier", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--block", type=int, default=3, help="F/S split (official: 3, 32x32 features)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--precision", default=None, choices=["default", "high", "highest"],
                   help="convolution precision (default: the backend's, TF32 on NVIDIA like PyTorch's)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--quick", action="store_true", help="64 px, batches 1 and 2, 3 reps")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batches, args.reps = 64, [1, 2], 3

    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g, model = make_models(args.size, args.channel_multiplier)
    model = model.replace(config=model.config.replace(dtype=args.dtype, precision=args.precision))
    rows = []
    for batch in args.batches:
        res_j = bench_jax(model, batch, args.block, args.reps)
        res_t = None if args.no_torch else bench_torch(g, batch, args.block, args.reps, device)
        for step in STEPS:
            row = {"step": step, "batch": batch, "jax": res_j[step]}
            if res_t:
                row["torch"] = res_t[step]
                row["speedup"] = res_t[step]["ms"] / res_j[step]["ms"]
            rows.append(row)
            print(_row_md(row), flush=True)

    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "jax_device": str(jax.devices()[0]), "torch_device": device,
            "cpu": platform.processor() or platform.machine(), "jax": jax.__version__,
            "torch": torch.__version__, "size": args.size, "channel_multiplier": args.channel_multiplier,
            "block": args.block, "reps": args.reps, "dtype": args.dtype,
            "precision": args.precision or "default"}
    if device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"generator_{jax.devices()[0].platform}_{args.size}px" + ("" if args.dtype == "float32" else f"_{args.dtype}")
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    table = "\n".join([_meta_md(meta), "", HEADER, *(_row_md(r) for r in rows), ""])
    (out / f"{tag}.md").write_text(table)
    print(f"wrote {out / tag}.json and .md")


HEADER = ("| step | batch | JAX ms (median) | JAX img/s | compile s | PyTorch ms (median) | PyTorch img/s | speed-up |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")


def _row_md(r):
    j, t = r["jax"], r.get("torch")
    torch_cols = f"{t['ms']:.1f} | {t['images_per_s']:.2f} | {r['speedup']:.2f}x" if t else "- | - | -"
    return f"| {r['step']} | {r['batch']} | {j['ms']:.1f} | {j['images_per_s']:.2f} | {j['compile_s']:.1f} | {torch_cols} |"


def _meta_md(m):
    where = m.get("gpu") or m["cpu"]
    return (f"Generator {m['size']} px (channel multiplier {m['channel_multiplier']}, {m['dtype']}, "
            f"conv precision {m['precision']}), F/S split after block "
            f"{m['block']}; {where}; JAX {m['jax']} on {m['jax_device']}, PyTorch {m['torch']} on "
            f"{m['torch_device']}; median of {m['reps']}; {m['date']}")


if __name__ == "__main__":
    main()
