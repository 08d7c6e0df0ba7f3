"""Embedding speed: the batched JAX W+ and FS steps against the official loop in PyTorch.

JAX: the real stage step (embedding._w_plus_step / _fs_step), vmapped and run `--steps` at a
time in one compiled `lax.scan` chunk, exactly as `embed_w_plus` / `embed_fs` run it; timed
per chunk (compile excluded), reported per step.
PyTorch: the official loop body at batch 1 (one image per optimiser, as Barbershop runs it):
generator forward with fresh noise (tests/torch_stylegan2.py), MSE, PULSE bicubic downsample,
the lpips package's LPIPS-VGG, p-norm, backward, Adam step. Same random weights on both sides.
Reports image-steps per second, the ratio, and peak device memory. JSON + markdown table in
benchmarks/results/.

    python benchmarks/bench_embedding.py --quick                  # 64 px, 2 CPU cores
    python benchmarks/bench_embedding.py --size 1024 --batches 1 2 4 8
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from barbershop_jax import embedding, optimize  # noqa: E402
from barbershop_jax.losses import p_norm  # noqa: E402


def build(size, lpips_size):
    import lpips
    import torch
    import torch_stylegan2 as T
    from convert import stylegan2 as conv_g
    from convert import vgg16 as conv_v

    g = T.realistic_init_(T.Generator(size, 512, 8, channel_multiplier=2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    sd = {f"features.{n}": p.detach().clone() for s in range(1, 6) for n, p in getattr(net.net, f"slice{s}").named_parameters()}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(T.checkpoint(g, n_avg=256), Path(tmp) / "g.pt")
        torch.save(sd, Path(tmp) / "vgg.pth")
        gen, _ = conv_g.convert(Path(tmp) / "g.pt")
        vgg, _ = conv_v.convert(Path(tmp) / "vgg.pth")
    pca = p_norm.pca_stats(gen, 10_000, jax.random.PRNGKey(0))
    return g, net, embedding.Consts(jax.device_put(gen), jax.device_put(vgg), pca)


def _peak_jax():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def bench_jax(consts, stage, batch, steps, reps, lpips_size):
    g = consts.generator
    size = g.config.size
    cfg = embedding.EmbedConfig(lpips_size=lpips_size, chunk=steps)
    key = jax.random.PRNGKey(0)
    targets = embedding.Targets(jnp.zeros((batch, size, size, 3)), jnp.zeros((batch, lpips_size, lpips_size, 3)),
                                jnp.stack([jax.random.fold_in(key, i) for i in range(batch)]))
    w_plus = g.mean_w_plus(batch) + 0.0
    if stage == "W+":
        units = embedding.target_units(consts.vgg, targets.small)
        step, state, data = embedding._w_plus_step, embedding._adam_state(w_plus, cfg), (targets, units)
    else:
        s_index = cfg.s_index(g.config.n_latent)
        f_init = embedding._f_init(consts, w_plus, targets, cfg=cfg)
        params = embedding.FSParams(w_plus[:, s_index:], f_init)
        units = embedding.target_units(consts.vgg, targets.small)
        step, state, data = (embedding._fs_step, embedding._adam_state(params, cfg),
                             (targets, units, w_plus[:, :s_index], f_init))
    state = jax.tree.map(jnp.copy, state)
    t = time.perf_counter()
    unroll = steps if optimize.loop_defaults()[1] else 1  # as optimize.run runs it on this backend
    # As optimize.run calls it: a step budget never reached (no idle steps), the step's config key.
    never = jnp.int32(2**31 - 1)
    lowered = optimize._run_chunk.lower(consts, state, data, jnp.int32(0), never, step=step,
                                        cfg=cfg.step_config(), length=steps, unroll=unroll)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    times = []
    for r in range(reps + 1):
        t = time.perf_counter()
        state, metrics = compiled(consts, state, data, jnp.int32(r * steps), never)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
    ms = statistics.median(times[1:]) * 1e3 / steps  # first call is the warm-up
    return {"ms_per_step": ms, "image_steps_per_s": batch * 1e3 / ms, "compile_s": compile_s,
            "peak_bytes": _peak_jax()}


def bench_torch(g, net, consts, stage, steps, reps, lpips_size, device):
    """The official loop body at batch 1."""
    import torch
    import torch_bisenet as TB

    g, net = g.to(device).requires_grad_(False), net.to(device).requires_grad_(False)
    size = g.size
    pca = {k: torch.as_tensor(np.asarray(v), device=device) for k, v in consts.pca.items()}
    target = torch.zeros(1, 3, size, size, device=device)
    target_small = torch.zeros(1, 3, lpips_size, lpips_size, device=device)
    shapes = [n.shape[2:] for n in g.const_noise()]
    latent_avg = torch.as_tensor(np.asarray(consts.generator.latent_avg), device=device)
    w = latent_avg.repeat(1, g.n_latent, 1).clone().requires_grad_(True)
    with torch.no_grad():
        f_init, _ = g(w, [torch.randn(1, 1, *s, device=device) for s in shapes], end_layer=3)
    f = f_init.clone().requires_grad_(True)
    s_index = max(0, g.n_latent - 11)
    params = [w] if stage == "W+" else [w, f]
    opt = torch.optim.Adam(params, lr=0.01)

    def step():
        opt.zero_grad()
        noise = [torch.randn(1, 1, *s, device=device) for s in shapes]
        if stage == "W+":
            _, img = g(w, noise)
        else:
            latent = torch.cat([w[:, :s_index].detach(), w[:, s_index:]], 1)
            _, img = g(latent, noise, start_layer=4, layer_in=f)
        l2 = ((img - target) ** 2).mean()
        percept = net(TB.bicubic_downsample(img, size // lpips_size), target_small).sum()
        pn = ((torch.nn.functional.leaky_relu(w, 5) - pca["X_mean"]) @ pca["X_comp"].T / pca["X_stdev"]).pow(2).mean()
        (l2 + percept + 0.001 * pn).backward()
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1e3 / steps
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {"ms_per_step": ms, "image_steps_per_s": 1e3 / ms, "peak_bytes": peak}


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
    args.steps = args.steps or optimize.loop_defaults()[0]

    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g, net, consts = build(args.size, args.lpips_size)
    rows = []
    for stage in args.stages:
        ref = bench_torch(g, net, consts, stage, args.steps, args.reps, args.lpips_size, device)
        for batch in args.batches:
            res = bench_jax(consts, stage, batch, args.steps, args.reps, args.lpips_size)
            row = {"stage": stage, "batch": batch, "jax": res, "torch_batch1": ref,
                   "ratio": res["image_steps_per_s"] / ref["image_steps_per_s"]}
            rows.append(row)
            print(_row(row), flush=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "jax": jax.__version__,
            "torch": torch.__version__, "jax_device": str(jax.devices()[0]), "torch_device": device,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "size": args.size, "lpips_size": args.lpips_size, "steps": args.steps, "reps": args.reps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"embedding_{jax.devices()[0].platform}_{args.size}px"
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
            f"{_mib(j['peak_bytes'])} | {t['ms_per_step']:.1f} | {t['image_steps_per_s']:.2f} | {_mib(t['peak_bytes'])} | "
            f"{r['ratio']:.2f}x |")


if __name__ == "__main__":
    main()
