"""Where a stage step's device time goes: a profile of chunks run as the suite runs them,
summed per XLA operation and per kind of operation (convolutions, matmuls, elementwise
fusions, reductions, copies), so that speed work starts from a measurement.

    python benchmarks/profile_step.py --size 1024 --batch 8              # a GPU: every stage
    python benchmarks/profile_step.py --size 64 --channel-max 128 --batch 2 --chunk 2 --stages W+

Each stage's chunk is compiled (or read from the persistent cache) and run once, then --reps
chunks run under `jax.profiler.trace`; the trace is read back with `jax.profiler.ProfileData`
(no TensorBoard needed). Device events carry the name of the HLO instruction they execute;
the compiled program's HLO text says what each instruction is (a cuDNN convolution, a cuBLAS
matmul, a loop fusion and what it fuses). On a GPU the events are the kernels on the device's
streams (CUPTI, shipped with JAX's CUDA wheels); on a CPU, the XLA operations on the host
threads (a dry run: the numbers say little about a GPU).

Writes profile_{size}px-b{batch}_{date}_{machine}.json and .md in --out (result_names.py): per
stage, the wall time per step, the device's busy time per step (their gap is time the device
waits for the host), the time per kind, and the --top operations with their shapes.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import result_names  # noqa: E402
import suite  # noqa: E402  (models and stage problems exactly as the suite builds them)
from barbershop_jax.config import EmbedConfig, TransferConfig  # noqa: E402
from barbershop_jax.stages import loop  # noqa: E402

# One HLO instruction: `%name = shape opcode(operands), attributes`.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_KIND = re.compile(r"kind=(k\w+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def hlo_instructions(hlo_text: str) -> dict:
    """name -> {opcode, shape, kind, target, fused: opcodes inside a fusion's computation}."""
    computations, current, table = {}, None, {}
    for line in hlo_text.splitlines():
        head = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and "=" not in line.split("{")[0]:
            current = computations.setdefault(head.group(1), [])
            continue
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, opcode, rest = m.groups()
        if current is not None:
            current.append(opcode)
        entry = {"opcode": opcode, "shape": shape.strip()}
        if (k := _KIND.search(rest)):
            entry["kind"] = k.group(1)
        if (t := _TARGET.search(rest)):
            entry["target"] = t.group(1)
        if (c := _CALLS.search(rest)):
            entry["calls"] = c.group(1)
        table[name] = entry
    for entry in table.values():
        if "calls" in entry:
            entry["fused"] = sorted(set(computations.get(entry.pop("calls"), [])) - {"parameter"})
    return table


def category(entry: dict | None, name: str) -> str:
    """A coarse kind for an operation, from its HLO (or, failing that, its name)."""
    if entry is None:
        low = name.lower()
        if "conv" in low:
            return "convolution"
        if "gemm" in low or "dot" in low or "matmul" in low:
            return "matmul"
        return "other (not in the HLO)"
    opcode, target, fused = entry["opcode"], entry.get("target", "").lower(), entry.get("fused", [])
    if "conv" in target or opcode == "convolution" or "convolution" in fused:
        return "convolution"
    if "gemm" in target or "matmul" in target or opcode == "dot" or "dot" in fused:
        return "matmul"
    if opcode in ("copy", "transpose") or (fused and set(fused) <= {"copy", "transpose", "bitcast", "reshape"}):
        return "copy/transpose"
    if opcode == "reduce" or "reduce" in fused or entry.get("kind") == "kInput":
        return "reduction fusion"
    if opcode == "fusion" or opcode in ("add", "multiply", "select", "pad", "slice", "concatenate"):
        return "elementwise fusion"
    return "other"


def device_events(profile) -> tuple[list, str]:
    """(events as (hlo_op, kernel name, duration ns, start ns), where) of the stage's program:
    a GPU's kernels on its streams, or the host's XLA operations where no device plane was
    recorded."""
    device = [p for p in profile.planes if p.name.startswith("/device:")]
    where = "device" if device else "host (no device plane: a CPU, or CUPTI missing)"
    planes = device or [p for p in profile.planes if p.name.startswith("/host:CPU")]
    by_line = collections.defaultdict(list)
    for plane in planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                op, module = stats.get("hlo_op"), str(stats.get("hlo_module", ""))
                if op is not None and event.duration_ns and "run_chunk" in module:
                    by_line[line.name].append((str(op), event.name, float(event.duration_ns),
                                               float(event.start_ns)))
    # A GPU plane also has summary lines ("XLA Ops", "XLA Modules") over its streams' kernels:
    # count the streams alone where there are any.
    streams = [name for name in by_line if name.lower().startswith("stream")]
    return [e for name in (streams or by_line) for e in by_line[name]], where


def busy_ns(events) -> float:
    """The union of the events' intervals: time the device had work, overlaps counted once."""
    total, end = 0.0, -1.0
    for _, _, dur, start in sorted(events, key=lambda e: e[3]):
        stop = start + dur
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def profile_stage(stage, models, batch, *, chunk, unroll, reps, embed_cfg, cfg, top) -> dict:
    step, step_cfg, consts, state, data = suite.stage_problem(stage, models, batch, embed_cfg, cfg)
    never = jnp.int32(2**31 - 1)
    kw = dict(step=step, cfg=step_cfg, chunking=loop.Chunking(chunk, unroll))
    state = jax.tree.map(jnp.array, state)  # the chunks donate their state
    t = time.perf_counter()
    state, metrics = loop._run_chunk(consts, state, data, jnp.int32(0), never, **kw)
    jax.block_until_ready((state, metrics))
    first_s = time.perf_counter() - t
    # The program that ran (compiled again, from the persistent compilation cache where it holds it).
    hlo = loop._run_chunk.lower(consts, state, data, jnp.int32(0), never, **kw).compile().as_text()
    table = hlo_instructions(hlo)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            t = time.perf_counter()
            for r in range(reps):
                state, metrics = loop._run_chunk(consts, state, data, jnp.int32((r + 1) * chunk), never, **kw)
            jax.block_until_ready((state, metrics))
            wall_s = time.perf_counter() - t
        files = sorted(Path(tmp).rglob("*.xplane.pb"))
        if not files:
            raise RuntimeError("the profiler wrote no trace")
        events, where = device_events(jax.profiler.ProfileData.from_file(str(files[-1])))
    steps = reps * chunk
    per_op = collections.defaultdict(lambda: {"ns": 0.0, "count": 0, "kernels": set()})
    for op, kernel, dur, _ in events:
        per_op[op]["ns"] += dur
        per_op[op]["count"] += 1
        per_op[op]["kernels"].add(kernel)
    total_ns = sum(v["ns"] for v in per_op.values())
    kinds = collections.Counter()
    ops = []
    for op, v in per_op.items():
        entry = table.get(op)
        kind = category(entry, op)
        kinds[kind] += v["ns"]
        ops.append({"op": op, "kind": kind, "ms_per_step": v["ns"] / 1e6 / steps,
                    "share": v["ns"] / total_ns if total_ns else None, "calls_per_step": v["count"] / steps,
                    "shape": entry and entry["shape"], "target": entry and entry.get("target"),
                    "fused": entry and entry.get("fused"), "kernels": sorted(v["kernels"])[:3]})
    ops.sort(key=lambda o: -o["ms_per_step"])
    return {"stage": stage, "batch": batch, "where": where, "steps_traced": steps,
            "first_call_s": first_s, "wall_ms_per_step": wall_s * 1e3 / steps,
            "busy_ms_per_step": busy_ns(events) / 1e6 / steps, "summed_ms_per_step": total_ns / 1e6 / steps,
            "kinds": {k: {"ms_per_step": ns / 1e6 / steps, "share": ns / total_ns if total_ns else None}
                      for k, ns in kinds.most_common()},
            "ops": ops[:top], "n_ops": len(ops)}


def markdown(result) -> str:
    m = result["meta"]
    lines = [f"# Where the step time goes: {m['device']}, {m['size']} px, batch {m['batch']}, {m['dtype']}",
             "", f"{m['date']}, JAX {m['jax']}; {m['reps']} chunks of {m['chunk']} steps traced per stage.", ""]
    for s in result["stages"]:
        if "error" in s:
            lines += [f"## {s['stage']}: failed", "", f"`{s['error']}`", ""]
            continue
        lines += [f"## {s['stage']}", "",
                  f"Events from the {s['where']}. Wall {s['wall_ms_per_step']:.2f} ms per step; busy "
                  f"{s['busy_ms_per_step']:.2f} ms (operations summed: {s['summed_ms_per_step']:.2f} ms); "
                  f"{s['n_ops']} distinct operations.", "",
                  "| kind | ms per step | share |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v['ms_per_step']:.3f} | {100 * (v['share'] or 0):.1f}% |" for k, v in s["kinds"].items()]
        lines += ["", "| operation | kind | ms per step | share | calls per step | shape | fuses |",
                  "| --- | --- | ---: | ---: | ---: | --- | --- |"]
        for o in s["ops"]:
            fuses = o["target"] or ", ".join((o["fused"] or [])[:6])
            shape = (o["shape"] or "")[:60]
            lines.append(f"| `{o['op']}` | {o['kind']} | {o['ms_per_step']:.3f} | {100 * (o['share'] or 0):.1f}% | "
                         f"{o['calls_per_step']:.1f} | `{shape}` | {fuses} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--stages", nargs="+", default=list(suite.STAGES), choices=suite.STAGES)
    p.add_argument("--reps", type=int, default=2, help="chunks traced per stage")
    p.add_argument("--chunk", type=int, help="steps per chunk (default: the backend's)")
    p.add_argument("--channel-max", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--top", type=int, default=30, help="operations listed per stage")
    p.add_argument("--deadline", type=float, default=0, help="seconds: skip stages that would start after this")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    start = time.perf_counter()
    from barbershop_jax.pipeline.runtime import compile_cache
    compile_cache.enable()
    chunk_default, unroll = loop.loop_defaults()
    chunk = args.chunk or chunk_default
    models = suite.build_models(args.size, args.dtype, args.channel_max)
    embed_cfg = EmbedConfig(lpips_size=min(256, args.size // 2), chunk=chunk)
    cfg = TransferConfig(chunk=chunk).resolve(args.size)
    device = jax.devices()[0]
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "jax": jax.__version__,
            "device": device.device_kind, "platform": device.platform, "size": args.size, "batch": args.batch,
            "dtype": args.dtype, "channel_max": args.channel_max, "chunk": chunk, "unroll": unroll, "reps": args.reps}
    result = {"meta": meta, "stages": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = result_names.stem("profile", f"{args.size}px-b{args.batch}" + ("" if args.dtype == "float32" else f"-{args.dtype}"))
    for stage in args.stages:
        if args.deadline and time.perf_counter() - start > args.deadline:
            print(f"deadline: skipping {stage}", flush=True)
            continue
        try:
            row = profile_stage(stage, models, args.batch, chunk=chunk, unroll=unroll, reps=args.reps,
                                embed_cfg=embed_cfg, cfg=cfg, top=args.top)
        except Exception as e:  # one stage failing leaves the others' profiles
            row = {"stage": stage, "error": f"{type(e).__name__}: {e}"}
        result["stages"].append(row)
        # Written after every stage: a run cut short keeps what it has.
        (out / f"{tag}.json").write_text(json.dumps(result, indent=1))
        (out / f"{tag}.md").write_text(markdown(result))
        print(markdown({"meta": meta, "stages": [row]}).split("\n", 3)[-1][:3000], flush=True)
    print(f"wrote {out / tag}.json and .md")


if __name__ == "__main__":
    main()
