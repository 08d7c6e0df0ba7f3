"""Generator speed: JAX against the PyTorch reference, same machine, same run.

Times three steps at each batch size, with random weights of the official architecture:
  render       W+ -> image (fresh noise each call, as the official code draws it)
  grad_w       W+ -> image -> mean squared error -> gradient to W+ (the W+ embedding step)
  grad_fs      (F, S) -> image -> mean squared error -> gradient to F and S (the FS step)
The PyTorch side is tests/torch_stylegan2.py: the official algorithm (per-sample modulated
weights, grouped convolution) in plain PyTorch ops, gradients to the latents only.
JAX: jitted, compile time reported apart, `block_until_ready` on every timed call.
The two sides alternate call by call (JAX, PyTorch, JAX, ...) so that a machine whose load
changes during the run slows both alike; medians of --reps calls, the load average beside them.
Writes JSON and a markdown table to benchmarks/results/ (names: result_names.py).

    python benchmarks/bench_generator.py --size 256 --batch 1 4 --steps grad_w --profile --limits   # the CPU acceptance run
    python benchmarks/bench_generator.py --size 1024 --batch 1 --steps grad_w
    python benchmarks/bench_generator.py --size 256 --batches 1 2 4 8
    python benchmarks/bench_generator.py --quick        # 64 px, a minute on 2 CPU cores

--profile adds, per batch, where JAX's grad_w time goes (`profile_step.py`'s reading of a
`jax.profiler` trace: time per kind of XLA operation and the top operations), and what the
convolutions alone take against the official step. --limits adds what the backend reaches on a
matmul, the main convolutions and an elementwise pass. Every row also gives the page faults and
system time per call of each side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
sys.path.insert(0, str(ROOT / "benchmarks"))
import result_names  # noqa: E402

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


def jax_callables(model, batch, block, steps):
    """name -> (a no-argument call that blocks on its result, compile seconds, FLOPs)."""
    out = {}
    for name, (fn, x) in jax_steps(model, batch, block).items():
        if name not in steps:
            continue
        key = jax.random.PRNGKey(1)
        t = time.perf_counter()
        compiled = fn.lower(model, x, key).compile()
        compile_s = time.perf_counter() - t
        jax.block_until_ready(compiled(model, x, key))  # warm-up
        keys = iter(jax.random.split(key, 10_000))
        flops = (compiled.cost_analysis() or {}) if hasattr(compiled, "cost_analysis") else {}
        if isinstance(flops, list):
            flops = flops[0] if flops else {}
        out[name] = (lambda c=compiled, x=x: jax.block_until_ready(c(model, x, next(keys))), compile_s,
                     flops.get("flops"), compiled)
    return out


def torch_callables(g, batch, block, device, steps):
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

    fns = {"render": render, "grad_w": grad_w, "grad_fs": grad_fs}
    return {name: fns[name] for name in STEPS if name in steps}


def _timed(fn):
    """(wall seconds, minor page faults, system CPU seconds) of one call; the process's counts,
    all threads, so only one side may run at a time."""
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime


def _stats(calls, batch):
    ms = [c[0] * 1e3 for c in calls]
    med = statistics.median(ms)
    # Minor faults: pages the kernel had to map and zero during the call (fresh allocations
    # touched for the first time); the system time is mostly that work.
    return {"ms": med, "min_ms": min(ms), "max_ms": max(ms), "all_ms": ms, "images_per_s": batch * 1e3 / med,
            "fault_mib": statistics.median(c[1] for c in calls) * resource.getpagesize() / 2**20,
            "sys_s": statistics.median(c[2] for c in calls)}


def bench_alternating(jax_fns, torch_fns, batch, reps):
    """Each step: one warm-up of PyTorch, then reps rounds of (JAX call, PyTorch call)."""
    rows = {}
    for name, (call, compile_s, flops, _) in jax_fns.items():
        other = (torch_fns or {}).get(name)
        if other:
            other()  # warm-up
        times_j, times_t, loads = [], [], []
        for _ in range(reps):
            loads.append(os.getloadavg()[0])
            times_j.append(_timed(call))
            if other:
                times_t.append(_timed(other))
        jax_row = {**_stats(times_j, batch), "compile_s": compile_s, "flops": flops}
        rows[name] = {"jax": jax_row, "torch": _stats(times_t, batch) if other else None,
                      "load_1min": [round(x, 2) for x in loads]}
    return rows


def profile_jax(name, call, compiled, top):
    """Where one JAX call's time goes: profile_step.py's reading of a jax.profiler trace."""
    import collections

    import profile_step
    table = profile_step.hlo_instructions(compiled.as_text())
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            call()
        files = sorted(Path(tmp).rglob("*.xplane.pb"))
        profile = jax.profiler.ProfileData.from_file(str(files[-1]))
    per_op = collections.Counter()
    for plane in profile.planes:
        if not plane.name.startswith(("/host:CPU", "/device:")):
            continue
        for line in plane.lines:
            for event in line.events:
                op = dict(event.stats).get("hlo_op")
                if op is not None and event.duration_ns:
                    per_op[str(op)] += event.duration_ns
    total = sum(per_op.values()) or 1.0
    kinds = collections.Counter()
    for op, ns in per_op.items():
        kinds[profile_step.category(table.get(op), op)] += ns
    ops = [{"op": op, "kind": profile_step.category(table.get(op), op), "ms": ns / 1e6, "share": ns / total,
            "shape": (table.get(op) or {}).get("shape"), "fused": (table.get(op) or {}).get("fused")}
           for op, ns in per_op.most_common(top)]
    return {"step": name, "summed_ms": total / 1e6,
            "kinds": {k: {"ms": ns / 1e6, "share": ns / total} for k, ns in kinds.most_common()}, "ops": ops}


def cpu_limits(reps=5):
    """What this machine's XLA backend reaches on the generator's building blocks, to set the
    measured step times against: a large matmul, the 3x3 convolutions at the shapes that carry
    most of the FLOPs, and an elementwise pass writing into a fresh buffer against one that
    reuses its input's (donation), which shows what first-touch page faults cost."""
    def best(fn, *args):
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    rows = []
    a = jnp.ones((4096, 4096), jnp.float32)
    t = best(jax.jit(jnp.matmul), a, a)
    rows.append({"what": "matmul 4096 x 4096 x 4096", "ms": t * 1e3, "gflop_s": 2 * 4096 ** 3 / t / 1e9})
    conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    for batch in (1, 4):
        for side, ch in ((256, 128), (128, 256), (64, 512)):
            x = jnp.ones((batch, side, side, ch), jnp.float32)
            k = jnp.ones((3, 3, ch, ch), jnp.float32)
            t = best(conv, x, k)
            rows.append({"what": f"conv 3x3, {batch} x {side}x{side}x{ch} -> {ch}", "ms": t * 1e3,
                         "gflop_s": 2 * 9 * batch * side * side * ch * ch / t / 1e9})
    shape = (4 * 256 * 256, 128)  # 128 MiB: a batch-4 256 px activation
    nbytes = 2 * 4 * shape[0] * shape[1]  # read + write
    x = jnp.ones(shape, jnp.float32)
    t = best(jax.jit(lambda y: y * 2.0 + 1.0), x)
    rows.append({"what": "elementwise y*2+1, 128 MiB, fresh output", "ms": t * 1e3, "gb_s": nbytes / t / 1e9})
    donated = jax.jit(lambda y: y * 2.0 + 1.0, donate_argnums=0)
    state = [jnp.ones(shape, jnp.float32)]

    def step():
        state[0] = donated(state[0])
        return state[0]
    t = best(step)
    rows.append({"what": "elementwise y*2+1, 128 MiB, output in the donated input", "ms": t * 1e3,
                 "gb_s": nbytes / t / 1e9})
    return rows


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
    p.add_argument("--batches", "--batch", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="profile JAX's grad_w at each batch")
    p.add_argument("--top", type=int, default=25, help="operations listed per profile")
    p.add_argument("--tag", default="", help="a variant, appended to the size in the result files' names")
    p.add_argument("--block", type=int, default=3, help="F/S split (official: 3, 32x32 features)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--precision", default=None, choices=["default", "high", "highest"],
                   help="convolution precision (default: the backend's, TF32 on NVIDIA like PyTorch's)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--limits", action="store_true",
                   help="also measure the backend on a matmul, the main convolutions and elementwise passes")
    p.add_argument("--quick", action="store_true", help="64 px, batches 1 and 2, 3 reps")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batches, args.reps = 64, [1, 2], 3

    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g, model = make_models(args.size, args.channel_multiplier)
    model = model.replace(config=model.config.replace(dtype=args.dtype, precision=args.precision))
    rows, profiles = [], []
    for batch in args.batches:
        fns_j = jax_callables(model, batch, args.block, args.steps)
        fns_t = None if args.no_torch else torch_callables(g, batch, args.block, device, args.steps)
        res = bench_alternating(fns_j, fns_t, batch, args.reps)
        for step in STEPS:
            if step not in res:
                continue
            row = {"step": step, "batch": batch, **res[step]}
            if row["torch"] is None:
                del row["torch"]
            else:
                row["speedup"] = row["torch"]["ms"] / row["jax"]["ms"]
                row["ratio"] = row["jax"]["ms"] / row["torch"]["ms"]
            rows.append(row)
            print(_row_md(row), flush=True)
        if args.profile and "grad_w" in fns_j:
            call, _, _, compiled = fns_j["grad_w"]
            profiles.append({"batch": batch, **profile_jax("grad_w", call, compiled, args.top)})
            official = next((r["torch"]["ms"] for r in rows
                             if r["step"] == "grad_w" and r["batch"] == batch and r.get("torch")), None)
            if official:
                profiles[-1]["official_ms"] = official
            print(_profile_md(profiles[-1]), flush=True)
        del fns_j, fns_t
    limits = cpu_limits() if args.limits else []

    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "jax_device": str(jax.devices()[0]), "torch_device": device,
            "cpu": platform.processor() or platform.machine(), "jax": jax.__version__,
            "torch": torch.__version__, "size": args.size, "channel_multiplier": args.channel_multiplier,
            "block": args.block, "reps": args.reps, "dtype": args.dtype,
            "precision": args.precision or "default", "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "machine": result_names.machine()}
    if device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = result_names.stem("generator", f"{args.size}px" + ("" if args.dtype == "float32" else f"-{args.dtype}")
                            + (f"-{args.tag}" if args.tag else ""))
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows, "profiles": profiles, "limits": limits}, indent=1) + "\n")
    table = "\n".join([_meta_md(meta), "", HEADER, *(_row_md(r) for r in rows), "",
                        *(_profile_md(p) for p in profiles), *([_limits_md(limits)] if limits else [])])
    (out / f"{tag}.md").write_text(table)
    print(f"wrote {out / tag}.json and .md")


HEADER = ("| step | batch | JAX ms (median) | JAX img/s | compile s | PyTorch ms (median) | PyTorch img/s | "
          "ours / official | speed-up | page faults MiB, ours / official | system s, ours / official | "
          "load (1 min) |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")


def _row_md(r):
    j, t = r["jax"], r.get("torch")
    torch_cols = (f"{t['ms']:.1f} | {t['images_per_s']:.2f} | {r['ratio']:.2f}x | {r['speedup']:.2f}x" if t
                  else "- | - | - | -")
    faults = f"{j.get('fault_mib', 0):.0f} / " + (f"{t.get('fault_mib', 0):.0f}" if t else "-")
    sys_s = f"{j.get('sys_s', 0):.2f} / " + (f"{t.get('sys_s', 0):.2f}" if t else "-")
    load = r.get("load_1min") or []
    load_col = f"{min(load):.1f}-{max(load):.1f}" if load else "-"
    return (f"| {r['step']} | {r['batch']} | {j['ms']:.1f} | {j['images_per_s']:.2f} | {j['compile_s']:.1f} | "
            f"{torch_cols} | {faults} | {sys_s} | {load_col} |")


def _profile_md(p):
    lines = [f"JAX grad_w, batch {p['batch']}: operations summed {p['summed_ms']:.0f} ms (XLA:CPU runs "
             "independent operations side by side, so the sum can pass the wall time)", "",
             "| kind | ms | share |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['ms']:.1f} | {100 * v['share']:.1f}% |" for k, v in p["kinds"].items()]
    conv_ms = p["kinds"].get("convolution", {}).get("ms")
    if conv_ms and p.get("official_ms"):
        lines += ["", f"The convolutions alone take {conv_ms:.0f} ms: {conv_ms / p['official_ms']:.2f}x the "
                  f"official grad_w's {p['official_ms']:.0f} ms at this batch."]
    lines += ["", "| operation | kind | ms | share | shape | fuses |", "| --- | --- | ---: | ---: | --- | --- |"]
    for o in p["ops"]:
        fused = ", ".join((o["fused"] or [])[:5])
        lines.append(f"| `{o['op']}` | {o['kind']} | {o['ms']:.1f} | {100 * o['share']:.1f}% | "
                     f"`{(o['shape'] or '')[:50]}` | {fused} |")
    return "\n".join(lines + [""])


def _limits_md(rows):
    lines = ["The backend on its own (median of 5 calls)", "", "| what | ms | GFLOP/s | GB/s (read + write) |",
             "| --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['ms']:.1f} | " + (f"{r['gflop_s']:.0f}" if "gflop_s" in r else "-")
                     + " | " + (f"{r['gb_s']:.1f}" if "gb_s" in r else "-") + " |")
    return "\n".join(lines + [""])


def _meta_md(m):
    where = m.get("gpu") or m["cpu"]
    return (f"Generator {m['size']} px (channel multiplier {m['channel_multiplier']}, {m['dtype']}, "
            f"conv precision {m['precision']}), F/S split after block "
            f"{m['block']}; {where}; JAX {m['jax']} on {m['jax_device']}, PyTorch {m['torch']} on "
            f"{m['torch_device']} ({m.get('torch_threads', '?')} threads); {m.get('cpu_count', '?')} CPUs; median of "
            f"{m['reps']} alternating calls; {m['date']}" + (f"; XLA_FLAGS {m['xla_flags']}" if m.get("xla_flags") else ""))


if __name__ == "__main__":
    main()
