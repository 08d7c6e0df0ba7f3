"""Face parser forward and LPIPS forward+backward: JAX against PyTorch on the same machine.

    python benchmarks/bench_losses.py            # batch 1, 2, 4, 8 at 256 and 512 px
    python benchmarks/bench_losses.py --quick    # batch 1, 2 at 64 and 128 px (CPU smoke run)

Tasks (random weights; speed does not depend on them):
- parser: BiSeNet forward at the network input size, logits upsampled to it. JAX: `FaceParser.logits`
  (main head, what the pipeline reads). PyTorch: tests/torch_bisenet.py (same architecture and
  state_dict as the official model; it upsamples all three heads, as the official forward does).
- lpips_fwd_bwd: LPIPS-VGG v0.1 value and its gradient with respect to the first image. JAX:
  `barbershop_jax.losses.lpips`. PyTorch: the `lpips` package (pnet_rand=True, shipped lins).

JAX calls are jitted; compilation is excluded (two warm-up calls), every timed call ends in
`block_until_ready`. PyTorch gets two warm-up calls and `torch.cuda.synchronize()` on GPU;
--torch-threads times it at several CPU thread counts (on the 2-vCPU development VM its default
2 OpenMP threads were pathologically slow for the parser, about 1 s a call, and 1 thread not).
Reported: median, min and max over --repeats calls. Writes benchmarks/results/
losses_<sizes>px_<date>_<machine>.json and .md (result_names.py) and prints the markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the PyTorch BiSeNet reference
sys.path.insert(0, str(ROOT / "benchmarks"))
import result_names  # noqa: E402

from barbershop_jax.losses import lpips as jax_lpips  # noqa: E402
from barbershop_jax.models import bisenet, vgg16  # noqa: E402


WARMUP = 2  # untimed calls: compilation (JAX); allocator, oneDNN and cuDNN kernel selection (PyTorch)


def time_calls(fn, repeats: int) -> dict:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


# ----------------------------------------------------------------------------- JAX
def jax_parser(batch, size, key):
    model = bisenet.init(bisenet.BiSeNetConfig(), key)
    x = jax.random.normal(key, (batch, size, size, 3))
    run = jax.jit(lambda m, x: m.logits(x)["out"])
    return lambda: run(model, x).block_until_ready()


def jax_lpips_grad(batch, size, key):
    model = vgg16.init(vgg16.VGG16Config(), key)
    k0, k1 = jax.random.split(key)
    x0 = jax.random.uniform(k0, (batch, size, size, 3), minval=-1, maxval=1)
    x1 = jax.random.uniform(k1, (batch, size, size, 3), minval=-1, maxval=1)
    run = jax.jit(jax.value_and_grad(lambda m, a, b: jnp.sum(jax_lpips.lpips(m, a, b)), argnums=1))

    def call():
        value, grad = run(model, x0, x1)
        grad.block_until_ready()
    return call


# ----------------------------------------------------------------------------- PyTorch
def torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def torch_parser(batch, size, _key):
    import torch
    import torch_bisenet
    device = torch_device()
    net = torch_bisenet.BiSeNet(16).eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)

    def call():
        with torch.no_grad():
            net(x)
        _sync(device)
    return call


_LPIPS_NET = {}


def torch_lpips_grad(batch, size, _key):
    import lpips
    import torch
    device = torch_device()
    if "net" not in _LPIPS_NET:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _LPIPS_NET["net"] = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval().to(device)
    net = _LPIPS_NET["net"]
    x0 = (torch.rand(batch, 3, size, size, device=device) * 2 - 1).requires_grad_(True)
    x1 = torch.rand(batch, 3, size, size, device=device) * 2 - 1

    def call():
        x0.grad = None
        net(x0, x1).sum().backward()
        _sync(device)
    return call


TASKS = {"parser": (jax_parser, torch_parser), "lpips_fwd_bwd": (jax_lpips_grad, torch_lpips_grad)}


# ----------------------------------------------------------------------------- report
def _label(record) -> str:
    return "jax" if record["framework"] == "jax" else f"torch@{record['threads']}"


def markdown(records, meta) -> str:
    columns = list(dict.fromkeys(_label(r) for r in records))
    torch_columns = [c for c in columns if c != "jax"]
    header = ["task", "px", "batch"] + [("JAX" if c == "jax" else f"PyTorch, {c.split('@')[1]} threads") + " ms"
                                        for c in columns]
    if "jax" in columns and torch_columns:
        header.append("best PyTorch / JAX")
    lines = [f"# Loss and parser benchmark ({meta['mode']}, {meta['host']})", "",
             f"JAX {meta['jax']} on {meta['jax_device']}; PyTorch {meta['torch']} on {meta['torch_device']}. "
             f"Median of {meta['repeats']} calls (min-max), milliseconds; compilation and "
             f"{WARMUP} warm-up calls excluded.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = {}
    for r in records:
        rows.setdefault((r["task"], r["size"], r["batch"]), {})[_label(r)] = r
    for (task, size, batch), row in rows.items():
        cells = [task, str(size), str(batch)]
        for c in columns:
            r = row.get(c)
            cells.append("-" if r is None else
                         f"{1e3 * r['median_s']:.1f} ({1e3 * r['min_s']:.1f}-{1e3 * r['max_s']:.1f})")
        timed = [row[c]["median_s"] for c in torch_columns if c in row]
        if "jax" in columns and torch_columns:
            cells.append(f"{min(timed) / row['jax']['median_s']:.2f}" if timed and "jax" in row else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, 2 at 64 and 128 px (CPU)")
    parser.add_argument("--sizes", type=int, nargs="+", help="default 256 512 (quick: 64 128)")
    parser.add_argument("--batches", type=int, nargs="+", help="default 1 2 4 8 (quick: 1 2)")
    parser.add_argument("--repeats", type=int, help="timed calls per point (default 10, quick 3)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--no-torch", action="store_true", help="time JAX only")
    parser.add_argument("--torch-threads", type=int, nargs="+",
                        help="PyTorch CPU thread counts to time, one column each (default: torch's own)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([64, 128] if args.quick else [256, 512])
    batches = args.batches or ([1, 2] if args.quick else [1, 2, 4, 8])
    repeats = args.repeats or (3 if args.quick else 10)

    import torch
    host = socket.gethostname()
    default_threads = torch.get_num_threads()
    torch_threads = [] if args.no_torch else (args.torch_threads or [default_threads])
    meta = {"host": host, "machine": result_names.machine(), "mode": "quick" if args.quick else "full",
            "repeats": repeats, "warmup": WARMUP,
            "jax": jax.__version__, "jax_device": jax.devices()[0].device_kind, "jax_cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_device": str(torch_device()), "torch_threads": torch_threads,
            "cpu": platform.processor() or platform.machine()}
    records = []
    key = jax.random.PRNGKey(0)
    for task in args.tasks:
        jax_fn, torch_fn = TASKS[task]
        for size in sizes:
            for batch in batches:
                runs = [("jax", jax_fn, None)] + [("torch", torch_fn, t) for t in torch_threads]
                for framework, make, threads in runs:
                    if threads is not None:
                        torch.set_num_threads(threads)
                    try:
                        call = make(batch, size, key)
                    except ImportError as e:  # e.g. no lpips package on a device machine
                        print(f"{task} {framework}: skipped ({e})", file=sys.stderr)
                        continue
                    stats = time_calls(call, repeats)
                    record = {"task": task, "framework": framework, "threads": threads, "size": size,
                              "batch": batch, **stats}
                    records.append(record)
                    print(f"{task:14s} {_label(record):9s} {size:4d} px batch {batch}: "
                          f"{1e3 * stats['median_s']:9.1f} ms", file=sys.stderr, flush=True)
    table = markdown(records, meta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = result_names.stem("losses", "-".join(str(s) for s in sizes) + "px")
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    (out / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
