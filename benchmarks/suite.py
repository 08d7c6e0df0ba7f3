"""The benchmark suite: every optimisation stage's step and a whole transfer, JAX against the
PyTorch reference on the same machine in the same run.

    python benchmarks/suite.py --quick                       # 64 px, 2 CPU cores, a few minutes
    python benchmarks/suite.py --size 1024 --batches 1 8     # a GPU
    python benchmarks/suite.py --plot-only benchmarks/results/suite_1024px_2026-11-27_h100.json

Stages (the step functions the pipeline runs, vmapped over the batch and run a chunk at a time
in one compiled `lax.scan`, exactly as `loop.run` runs them):
  W+, FS         stages/embed.py (generator, MSE, LPIPS at 256, p-norm, Adam)
  segmentation   stages/align.py segmentation_step: the target mask's two GAN-inpainting rounds
                 and align step 1 share it (generator, parser at 512, cross-entropy, Adam on w[0:6])
  align2         stages/align.py _step2 (generator, parser, cross-entropy, Gram style loss at 256)
  blend          stages/blend.py _step (generator from F, two masked LPIPS at 256)
For each and each batch size: median ms per step over --reps chunks (compilation timed apart),
image-steps per second, FLOPs per step from XLA's cost analysis of one vmapped step and the
fraction of the device's peak they achieve, the compiled chunk's memory (XLA's memory analysis:
arguments + outputs + temporaries) and the device's peak counter. Beside it, PyTorch
(benchmarks/torch_reference.py): batch 1 as the official code runs it, and the same batch,
eager and, with --torch-compile, under torch.compile.

Whole transfer (--transfer-batch B): B triples of distinct random images through
pipeline/run.py's Pipeline (embedding, target masks, alignment, blending, files written), once
with one chunk per stage to compile everything, then timed on fresh images with the official
step counts times --transfer-scale. Reported: seconds per triple, measured, and the official-count
figure predicted from the stage steps' times (the measured run at reduced counts checks the
prediction, which leaves out the work outside the loops).

Grids (--grid G; --quick: 4): N faces x M hairstyles for N, M in 1..G through the Pipeline
(--grid-shapes 4x4 ...: those shapes only), warm, at the transfer's step counts: seconds per
triple against N x M (falling: each image is embedded once for its whole row or column),
beside the figure predicted from the stage steps.

Writes suite_{size}px[-variant]_{date}_{machine}.json, .md and .png (image-steps per second
against batch size, per stage; _grid.png: the grids' seconds per triple against N x M) in --out
(names: result_names.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from barbershop_jax.config import EmbedConfig, TransferConfig  # noqa: E402
from barbershop_jax.models import bisenet, stylegan2, vgg16  # noqa: E402
from barbershop_jax.models import pca as pca_lib  # noqa: E402
from barbershop_jax.models.bundle import Models  # noqa: E402
from barbershop_jax.pipeline.files import sources  # noqa: E402
from barbershop_jax.pipeline.run import Pipeline  # noqa: E402
from barbershop_jax.pipeline.runtime.settings import RunSettings  # noqa: E402
from barbershop_jax.stages import align as alignment  # noqa: E402
from barbershop_jax.stages import blend as blending  # noqa: E402
from barbershop_jax.stages import embed as embedding  # noqa: E402
from barbershop_jax.stages import loop  # noqa: E402
from barbershop_jax.stages.optim import ADAM  # noqa: E402
import result_names  # noqa: E402

STAGES = ("W+", "FS", "segmentation", "align2", "blend")
# Dense peak FLOP/s by compute dtype: float32 convolutions run as TF32 on these (XLA's and
# cuDNN's default precision), bfloat16 on the same tensor cores at twice the rate.
PEAK_FLOPS = {"H100": {"float32": 494e12, "bfloat16": 989e12},
              "H200": {"float32": 494e12, "bfloat16": 989e12},
              "A100": {"float32": 156e12, "bfloat16": 312e12}}


def official_steps() -> dict:
    from torch_reference import official_steps as steps
    return steps()


# ----------------------------------------------------------------------------- models
def build_models(size: int, dtype: str = "float32", channel_max: int = 512, parser_dtype: str = "float32"):
    """Random models at the official architecture (channel multiplier 2, 512 channels, the
    full BiSeNet and VGG16) and p-norm statistics, in one Models bundle."""
    key = jax.random.PRNGKey(0)
    config = stylegan2.GeneratorConfig(size=size, dtype=dtype, channel_max=channel_max)
    g = stylegan2.init(config, key)
    vgg = vgg16.init(vgg16.VGG16Config(dtype=dtype), jax.random.fold_in(key, 1))
    parser = bisenet.init(bisenet.BiSeNetConfig(dtype=parser_dtype), jax.random.fold_in(key, 2))
    pca = pca_lib.pca_stats(g, 4096, jax.random.fold_in(key, 3))
    return Models(g, parser, vgg, pca)


def stage_problem(stage: str, models: Models, batch: int, embed_cfg, cfg: TransferConfig):
    """(step, step config, models, state, data) of `batch` random problems of `stage`, with the
    shapes and dtypes the pipeline gives them (every stage takes the whole bundle, as the
    pipeline passes it)."""
    g, parser, vgg = models.generator, models.parser, models.vgg
    size, n_latent = g.config.size, g.config.n_latent
    k = jax.random.PRNGKey(7)
    keys = jax.random.split(k, batch)
    w = g.mean_w_plus(batch) + 0.1 * jax.random.normal(jax.random.fold_in(k, 1),
                                                       (batch, n_latent, g.config.style_dim))
    rand = lambda i, shape, lo=-1.0, hi=1.0: jax.random.uniform(jax.random.fold_in(k, i), shape,  # noqa: E731
                                                                minval=lo, maxval=hi)
    if stage in ("W+", "FS"):
        lp = embed_cfg.lpips_size
        targets = embedding.Targets(rand(2, (batch, size, size, 3)), rand(3, (batch, lp, lp, 3)), keys)
        units = embedding.target_units(vgg, targets.small)
        if stage == "W+":
            return embedding._w_plus_step, embed_cfg.step_config(), models, \
                ADAM.start(w, embed_cfg.learning_rate), (targets, units)
        s_index = embed_cfg.s_index(n_latent)
        f_init = embedding._f_init(models, w, targets, cfg=embed_cfg.step_config())
        state = ADAM.start(embedding.FSParams(w[:, s_index:], f_init), embed_cfg.learning_rate)
        return embedding._fs_step, embed_cfg.step_config(), models, state, (targets, units, w[:, :s_index], f_init)
    p, l_, q = cfg.parse_size, cfg.loss_size, cfg.blend_parse_size
    labels = jax.random.randint(jax.random.fold_in(k, 4), (batch, p, p), 0, parser.config.n_classes, jnp.int32)
    heads = w[:, :cfg.align_latents]
    region = jnp.asarray(np.stack([cfg.region_classes(parser.labels)] * batch))  # hair, as data
    if stage == "segmentation":
        x = alignment.SegmentationTarget(w, labels, (labels != 0).astype(jnp.float32),
                                         (labels == 0).astype(jnp.float32), jnp.ones((batch,), bool), keys)
        state = ADAM.start(heads, cfg.learning_rate, (heads, labels * 0))
        return alignment.segmentation_step, cfg.step_config(), models, state, x
    if stage == "align2":
        hair = (rand(5, (batch, l_, l_), 0, 1) > 0.5).astype(jnp.float32)
        return alignment._step2, cfg.step_config(), models, ADAM.start(heads, cfg.learning_rate), \
            (w, labels, rand(6, (batch, l_, l_, 3)), hair, keys, region)
    if stage == "blend":
        f = g.features(w, block=cfg.fs_block, noise="const")[0]
        mask = lambda i, n: (rand(i, (batch, n, n), 0, 1) > 0.5).astype(jnp.float32)  # noqa: E731
        x = blending.BlendInputs(w, w[::-1], f, f[::-1], rand(8, (batch, l_, l_, 3)), rand(9, (batch, l_, l_, 3)),
                                 mask(10, q), mask(11, q), keys, region)
        state = blending.optimizer().start(jnp.zeros_like(w), cfg.learning_rate)
        return blending._step, cfg.step_config(), models, state, (x, mask(12, l_), mask(13, l_))
    raise ValueError(f"unknown stage {stage!r}")


# ----------------------------------------------------------------------------- JAX timing
def _flops_per_step(step, step_cfg, consts, state, data) -> float | None:
    """XLA's count for one vmapped step, from the HLO lowered for the CPU: the same program
    on every backend (GPU lowerings report no cost analysis before compilation)."""
    vstep = jax.jit(jax.vmap(step, in_axes=(None, 0, 0, None, None)), static_argnums=(4,))
    try:
        cost = vstep.trace(consts, state, data, jnp.int32(0), step_cfg).lower(
            lowering_platforms=("cpu",)).cost_analysis()
    except Exception:  # noqa: BLE001 (no cost analysis: report none)
        traceback.print_exc()
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def _memory(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return {}
    if m is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    out = {f: int(getattr(m, f, 0) or 0) for f in fields}
    out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out["temp_size_in_bytes"]
                          - out["alias_size_in_bytes"])
    return out


def _device_peak():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def peak_flops(dtype: str, kind: str | None = None) -> float | None:
    kind = kind or jax.devices()[0].device_kind
    for name, peaks in PEAK_FLOPS.items():
        if name in kind:
            return peaks[dtype]
    return None


def time_jax_stage(stage, models, batch, *, chunk, unroll, reps, embed_cfg, cfg, dtype) -> dict:
    """Chunks of `stage`'s step through `loop._run_chunk` as `loop.run` calls it (the
    same jit cache entry, so a whole transfer in this process compiles nothing again).
    compile_s: the first call's time less a chunk's."""
    step, step_cfg, consts, state, data = stage_problem(stage, models, batch, embed_cfg, cfg)
    flops = _flops_per_step(step, step_cfg, consts, state, data)
    never = jnp.int32(2**31 - 1)  # a step budget never reached: no idle steps
    kw = dict(step=step, cfg=step_cfg, chunking=loop.Chunking(chunk, unroll))
    state = jax.tree.map(jnp.array, state)  # private buffers: the chunks donate theirs
    times = []
    for r in range(reps + 1):  # the first call compiles
        t = time.perf_counter()
        state, metrics = loop._run_chunk(consts, state, data, jnp.int32(r * chunk), never, **kw)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
    chunk_s = statistics.median(times[1:])
    ms = chunk_s * 1e3 / chunk
    # The compiled program's memory: the same program compiled again (from the persistent
    # compilation cache where it holds it).
    memory = _memory(loop._run_chunk.lower(consts, state, data, jnp.int32(0), never, **kw).compile())
    peak = peak_flops(dtype)
    achieved = flops / (ms / 1e3) if flops else None
    return {"ms_per_step": ms, "image_steps_per_s": batch * 1e3 / ms, "compile_s": times[0] - chunk_s,
            "flops_per_step": flops, "tflops_per_s": achieved / 1e12 if achieved else None,
            "fraction_of_peak": achieved / peak if achieved and peak else None,
            "memory": memory, "device_peak_bytes": _device_peak(),
            "times_ms": [x * 1e3 / chunk for x in times[1:]]}


# ----------------------------------------------------------------------------- whole transfer
def _random_images(n, size, seed):
    rng = np.random.default_rng(seed)
    # Smooth random images (a blurred coarse grid): like photos, unlike white noise, which
    # would only matter to the parser's labels, never to the compute.
    coarse = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32)
    img = jax.image.resize(jnp.asarray(coarse), (n, size, size, 3), "cubic")
    return np.asarray(jnp.clip(img, 0, 255)).astype(np.uint8)


def _triples(batch, size, seed):
    images = _random_images(3 * batch, size, seed)
    srcs = [sources.as_source(im, f"img{seed}_{i}") for i, im in enumerate(images)]
    return [tuple(srcs[3 * i:3 * i + 3]) for i in range(batch)]


def _pipeline(models, out, batch, steps: dict, chunk):
    embed_cfg = EmbedConfig.for_size(models.generator.config.size, w_steps=steps["W+"], fs_steps=steps["FS"],
                                     chunk=chunk)
    cfg = TransferConfig(inpaint_steps=steps["inpaint"], align_steps1=steps["align1"], align_steps2=steps["align2"],
                         blend_steps=steps["blend"], chunk=chunk)
    return Pipeline(models, out, embed_cfg, cfg, RunSettings(batch_size=batch, progress=False, checkpoint_every=None))


OFFICIAL = {"W+": 1100, "FS": 250, "inpaint": 80, "align1": 140, "align2": 100, "blend": 400}


def time_transfer(models, batch, scale, chunk) -> dict:
    steps = {k: max(1, round(v * scale)) for k, v in OFFICIAL.items()}
    one_chunk = {k: chunk for k in OFFICIAL}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        _pipeline(models, Path(tmp) / "warm", batch, one_chunk, chunk).run(_triples(batch, models.generator.config.size, 1))
        warm_s = time.perf_counter() - t
        pipe = _pipeline(models, Path(tmp) / "run", batch, steps, chunk)
        t = time.perf_counter()
        results = pipe.run(_triples(batch, models.generator.config.size, 2))
        total = time.perf_counter() - t
    done = sum(r is not None for r in results)
    return {"batch": batch, "scale": scale, "steps": steps, "seconds": total, "seconds_per_triple": total / batch,
            "triples_done": done, "stage_seconds": dict(pipe.context.timings), "warmup_seconds": warm_s,
            "device_peak_bytes": _device_peak()}


def _grid_steps(scale) -> dict:
    return {k: max(1, round(v * scale)) for k, v in OFFICIAL.items()}


def predict_grid(rows, n_faces, n_hair, batch, scale) -> float | None:
    """Seconds of a grid's loops from the stage steps at `batch`: N + M images embedded, N x M
    pairs aligned (colour = hairstyle: one alignment per cell) and blended, each stage in
    ceil(items / batch) batches (pipeline/plan.py counts the same)."""
    ms = {r["stage"]: r["jax"]["ms_per_step"] for r in rows if r["batch"] == batch and r.get("jax")}
    if set(ms) != set(STAGES):
        return None
    steps, images, cells = _grid_steps(scale), n_faces + n_hair, n_faces * n_hair
    batches = lambda n: -(-n // batch)  # noqa: E731
    per_align = (2 * steps["inpaint"] + steps["align1"]) * ms["segmentation"] + steps["align2"] * ms["align2"]
    return (batches(images) * (steps["W+"] * ms["W+"] + steps["FS"] * ms["FS"])
            + batches(cells) * (per_align + steps["blend"] * ms["blend"])) / 1e3


def time_grid(models, n_faces, n_hair, batch, scale, chunk, seed) -> dict:
    """N faces x M hairstyles (distinct random images; colour = hairstyle) through the
    Pipeline at step counts x scale, warm: per-triple seconds fall as N x M grows, because
    each image is embedded once and shared by its row or column."""
    from barbershop_jax.pipeline import grid as grid_lib
    size = models.generator.config.size
    images = _random_images(n_faces + n_hair, size, seed)
    srcs = [sources.as_source(im, f"grid{seed}_{i}") for i, im in enumerate(images)]
    triples, _ = grid_lib.grid_triples(srcs[:n_faces], srcs[n_faces:])
    with tempfile.TemporaryDirectory() as tmp:
        pipe = _pipeline(models, Path(tmp), batch, _grid_steps(scale), chunk)
        t = time.perf_counter()
        results = pipe.run(triples)
        total = time.perf_counter() - t
    cells = n_faces * n_hair
    return {"faces": n_faces, "hairstyles": n_hair, "cells": cells, "batch": batch, "scale": scale,
            "seconds": total, "seconds_per_triple": total / cells, "triples_done": sum(r is not None for r in results),
            "stage_seconds": dict(pipe.context.timings)}


def predict_transfer(rows, batch, scale=1.0) -> float | None:
    """Seconds per triple from the stage steps at `batch` (the loops alone)."""
    per = {r["stage"]: r["jax"]["ms_per_step"] / r["batch"] for r in rows if r["batch"] == batch and r.get("jax")}
    if set(per) != set(STAGES):
        return None
    return sum(official_steps()[s] * scale * per[s] for s in STAGES) / 1e3


def predict_torch_transfer(rows) -> float | None:
    """Seconds per triple of the official way (PyTorch, batch 1) from its stage steps."""
    per = {r["stage"]: r["torch_batch1"]["ms_per_step"] for r in rows
           if r.get("torch_batch1") and "error" not in r["torch_batch1"]}
    if set(per) != set(STAGES):
        return None
    return sum(official_steps()[s] * per[s] for s in STAGES) / 1e3


# ----------------------------------------------------------------------------- report
def _mib(b):
    return "-" if not b else f"{b / 2**20:,.0f}"


def _f(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def _dtypes(meta) -> str:
    parser = meta.get("parser_dtype", "float32")
    return meta["dtype"] if parser == "float32" else f"{meta['dtype']}, parser {parser}"


def markdown(result) -> str:
    meta, rows = result["meta"], result["rows"]
    head = (f"Benchmark suite, {meta['size']} px, {meta['device']}; JAX {meta['jax']} ({_dtypes(meta)}), PyTorch "
            f"{meta['torch']}; median of {meta['reps']} chunks of {meta['chunk']} steps; {meta['date']}")
    lines = [head, "", "| stage | batch | JAX ms/step | JAX image-steps/s | compile s | GFLOP/step | TFLOP/s | of peak "
             "| XLA MiB | PyTorch b1 ms | PyTorch same-batch image-steps/s | torch.compile image-steps/s "
             "| vs PyTorch b1 | vs PyTorch same batch |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        j, t1, tb, tc = (r.get(k) for k in ("jax", "torch_batch1", "torch_batch", "torch_compile"))
        t1, tb, tc = (t if t and "error" not in t else None for t in (t1, tb, tc))
        if j is None:
            lines.append(f"| {r['stage']} | {r['batch']} | failed: {r.get('error', '?')} |")
            continue
        ratio1 = j["image_steps_per_s"] / t1["image_steps_per_s"] if t1 else None
        ratiob = j["image_steps_per_s"] / tb["image_steps_per_s"] if tb else None
        lines.append(
            f"| {r['stage']} | {r['batch']} | {j['ms_per_step']:.1f} | {j['image_steps_per_s']:.2f} | "
            f"{j['compile_s']:.1f} | {_f(j['flops_per_step'] and j['flops_per_step'] / 1e9)} | "
            f"{_f(j['tflops_per_s'])} | {_f(j['fraction_of_peak'], '{:.0%}')} | "
            f"{_mib(j['memory'].get('total_bytes'))} | {_f(t1 and t1['ms_per_step'])} | "
            f"{_f(tb and tb['image_steps_per_s'], '{:.2f}')} | {_f(tc and tc.get('image_steps_per_s'), '{:.2f}')} | "
            f"{_f(ratio1, '{:.2f}x')} | {_f(ratiob, '{:.2f}x')} |")
    for tr in result.get("transfers", []):
        lines += ["", f"Whole transfer, batch {tr['batch']}, step counts x{tr['scale']} ({tr['steps']}): "
                  f"{tr['seconds']:.1f} s for {tr['triples_done']} triples, {tr['seconds_per_triple']:.2f} s per "
                  f"triple (compile warm-up run before it: {tr['warmup_seconds']:.1f} s); predicted from the stage "
                  f"steps at this scale: {_f(tr.get('predicted_seconds_per_triple'), '{:.2f}')} s per triple.",
                  "", "| part | seconds |", "| --- | ---: |",
                  *[f"| {k} | {v:.1f} |" for k, v in tr["stage_seconds"].items()]]
    for key, text in (("predicted_official", "JAX, official step counts, predicted from the stage steps"),
                      ("predicted_torch_official", "PyTorch batch 1 (the official way), official step counts, "
                                                   "predicted from its stage steps")):
        for batch, value in sorted(result.get(key, {}).items()):
            lines.append(f"\n{text}, batch {batch}: {value:.1f} s per triple")
    grids = result.get("grids", [])
    if grids:
        g0 = grids[0]
        lines += ["", f"Grids, N faces x M hairstyles, batch {g0['batch']}, step counts x{g0['scale']}, warm "
                  "(each image embedded once, each cell aligned and blended once):", "",
                  "| N x M | cells | seconds | s per triple | predicted s per triple (loops) | embedding | alignment "
                  "| blending |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for g in sorted(grids, key=lambda g: (g["cells"], g["faces"])):
            st = g["stage_seconds"]
            pred = g.get("predicted_seconds")
            lines.append(f"| {g['faces']} x {g['hairstyles']} | {g['cells']} | {g['seconds']:.1f} | "
                         f"{g['seconds_per_triple']:.2f} | {_f(pred and pred / g['cells'], '{:.2f}')} | "
                         f"{st.get('embedding', 0):.1f} | {st.get('alignment', 0):.1f} | {st.get('blending', 0):.1f} |")
    return "\n".join(lines) + "\n"


def plot_grid(result, path: Path):
    """Per-triple seconds of the grids against N x M, measured and predicted."""
    grids = sorted(result.get("grids", []), key=lambda g: g["cells"])
    if not grids:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([g["cells"] for g in grids], [g["seconds_per_triple"] for g in grids], "o", label="measured")
    pred = [(g["cells"], g["predicted_seconds"] / g["cells"]) for g in grids if g.get("predicted_seconds")]
    if pred:
        ax.plot(*zip(*sorted(pred)), "x--", label="predicted from the stage steps (loops only)")
    ax.set_xlabel("N faces x M hairstyles (cells)")
    ax.set_ylabel("seconds per triple")
    ax.set_title(f"grids, {result['meta']['size']} px, {result['meta']['device']}", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(result, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, stage in enumerate(STAGES):
        rows = sorted((r for r in result["rows"] if r["stage"] == stage and r.get("jax")), key=lambda r: r["batch"])
        if not rows:
            continue
        colour = f"C{i}"
        ax.plot([r["batch"] for r in rows], [r["jax"]["image_steps_per_s"] for r in rows], "o-", color=colour,
                label=f"{stage} JAX")
        torch_rows = [r for r in rows if r.get("torch_batch") and "error" not in r["torch_batch"]]
        if torch_rows:
            ax.plot([r["batch"] for r in torch_rows], [r["torch_batch"]["image_steps_per_s"] for r in torch_rows],
                    "s--", color=colour, alpha=0.6, label=f"{stage} PyTorch")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("image-steps per second")
    meta = result["meta"]
    ax.set_title(f"{meta['size']} px, {meta['device']}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result, out: Path, tag: str):
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{tag}.md").write_text(markdown(result))
    plot(result, out / f"{tag}.png")
    plot_grid(result, out / f"{tag}_grid.png")


def fill_flops(path: Path):
    """FLOPs per step for the rows of an earlier run that lack them (a run on a machine whose
    cost analysis failed): counted here, on the same step at the same shapes."""
    result = json.loads(path.read_text())
    meta = result["meta"]
    models = build_models(meta["size"], meta["dtype"], meta.get("channel_max", 512),
                          meta.get("parser_dtype", "float32"))
    embed_cfg = EmbedConfig(lpips_size=min(256, meta["size"] // 2), chunk=meta["chunk"])
    cfg = TransferConfig(chunk=meta["chunk"]).resolve(meta["size"])
    peak = peak_flops(meta["dtype"], meta["device"])
    for r in result["rows"]:
        j = r.get("jax")
        if not j or j.get("flops_per_step"):
            continue
        j["flops_per_step"] = _flops_per_step(*stage_problem(r["stage"], models, r["batch"], embed_cfg, cfg)[:5])
        achieved = j["flops_per_step"] / (j["ms_per_step"] / 1e3)
        j["tflops_per_s"], j["fraction_of_peak"] = achieved / 1e12, achieved / peak if peak else None
        j["flops_counted_after"] = True
        print(r["stage"], r["batch"], f"{j['flops_per_step'] / 1e9:.1f} GFLOP", flush=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


# ----------------------------------------------------------------------------- main
def _attempt(fn, *args, **kwargs) -> dict:
    """fn's result, or {"error": one line} (an out-of-memory batch, a torch.compile failure):
    the suite reports it and goes on."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--reps", type=int, help="timed chunks per measurement (median; default 3, --quick 2)")
    p.add_argument("--chunk", type=int, help="steps per chunk (default: the backend's, loop.loop_defaults)")
    p.add_argument("--channel-max", type=int, default=512, help="the generator's widest layer (official: 512)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype of the generator's and VGG's convolutions")
    p.add_argument("--parser-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype of the face parser (segmentation and align 2)")
    p.add_argument("--torch", default="eager", choices=["eager", "none"], help="PyTorch reference")
    p.add_argument("--no-jax", action="store_true", help="the PyTorch reference alone")
    p.add_argument("--torch-batched", action="store_true", help="also time PyTorch at each batch size > 1")
    p.add_argument("--torch-compile", action="store_true", help="also time PyTorch under torch.compile (batch 1)")
    p.add_argument("--transfer-batch", type=int, nargs="*", default=[], help="time whole transfers at these batches")
    p.add_argument("--transfer-scale", type=float, default=1.0, help="official step counts times this")
    p.add_argument("--grid", type=int, default=0, metavar="G",
                   help="also time N faces x M hairstyles grids for N, M in 1..G at the first transfer batch "
                        "(--quick: 4)")
    p.add_argument("--grid-shapes", nargs="+", default=[], metavar="NxM",
                   help="time these grids only (e.g. 4x4) instead of every N, M in 1..G")
    p.add_argument("--deadline", type=float, default=0, help="seconds: skip what would start after this")
    p.add_argument("--quick", action="store_true",
                   help="a small config on a CPU in minutes: 64 px, generator layers of 128 channels, batches 1 2, "
                        "2-step chunks, 2 reps, PyTorch batched, a whole transfer at batch 2 with 1/100 of the "
                        "official steps")
    p.add_argument("--tag", help="output name (default suite_{size}px[-{dtype}][suffix]_{date}_{machine})")
    p.add_argument("--suffix", default="", help="appended to the default output name's config (e.g. --suffix=-b1)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--plot-only", metavar="JSON", help="redraw the table and plot of an earlier run")
    p.add_argument("--fill-flops", metavar="JSON", help="count the FLOPs missing from an earlier run, then redraw")
    args = p.parse_args(argv)
    if args.plot_only or args.fill_flops:
        src = Path(args.plot_only or args.fill_flops)
        result = fill_flops(src) if args.fill_flops else json.loads(src.read_text())
        write(result, src.parent, src.stem)
        print(markdown(result))
        return
    if args.quick:
        args.size, args.batches, args.channel_max, args.chunk = 64, [1, 2], 128, args.chunk or 2
        args.reps = args.reps or 2
        args.torch_batched = True
        args.transfer_batch, args.transfer_scale = args.transfer_batch or [2], 0.01
        args.grid = args.grid or 4
    args.reps = args.reps or 3
    start = time.perf_counter()
    late = lambda: args.deadline and time.perf_counter() - start > args.deadline  # noqa: E731
    from barbershop_jax.pipeline.runtime import compile_cache
    compile_cache.enable()  # for the memory analysis of programs compiled here

    chunk_default, unroll = loop.loop_defaults()
    chunk = args.chunk or chunk_default
    models = build_models(args.size, args.dtype, args.channel_max, args.parser_dtype)
    embed_cfg = EmbedConfig(lpips_size=min(256, args.size // 2), chunk=chunk)
    cfg = TransferConfig(chunk=chunk).resolve(args.size)

    nets = None
    if args.torch != "none":
        import torch
        from torch_reference import Nets
        nets = Nets(args.size, "cuda" if torch.cuda.is_available() else "cpu", channel_max=args.channel_max)
    torch_steps = max(2, chunk // 2)
    rows = []
    tag = args.tag or result_names.stem("suite", f"{args.size}px" + ("" if args.dtype == "float32" else f"-{args.dtype}")
                                        + ("" if args.parser_dtype == "float32" else f"-parser-{args.parser_dtype}")
                                        + args.suffix)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "jax": jax.__version__,
            "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "machine": result_names.machine(), "size": args.size,
            "dtype": args.dtype, "parser_dtype": args.parser_dtype, "channel_max": args.channel_max, "chunk": chunk,
            "unroll": unroll, "reps": args.reps,
            "torch": None, "torch_device": nets and nets.device, "official_steps": official_steps()}
    if nets is not None:
        import torch
        meta["torch"] = torch.__version__
    result = {"meta": meta, "rows": rows, "transfers": []}
    out = Path(args.out)
    refs1 = {}  # stage -> PyTorch at batch 1
    # Batch-major: with a deadline, every stage gets its first batch size before any its second.
    for batch in args.batches:
        for stage in args.stages:
            if late():
                print(f"deadline: skipping {stage} batch {batch}", flush=True)
                continue
            row = {"stage": stage, "batch": batch}
            try:
                if args.no_jax:
                    raise RuntimeError("not run (--no-jax)")
                row["jax"] = time_jax_stage(stage, models, batch, chunk=chunk, unroll=unroll, reps=args.reps,
                                            embed_cfg=embed_cfg, cfg=cfg, dtype=args.dtype)
            except Exception as e:  # noqa: BLE001 (report and go on: an OOM at a large batch, say)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                traceback.print_exc()
            if nets is not None:
                from torch_reference import time_step
                timed = lambda b, **kw: _attempt(time_step, nets, stage, b, steps=torch_steps,  # noqa: E731
                                                 reps=args.reps, **kw)
                if stage not in refs1:
                    refs1[stage] = timed(1)
                    if args.torch_compile:
                        row["torch_compile"] = timed(1, compile=True)
                row["torch_batch1"] = refs1[stage]
                if args.torch_batched and batch > 1:
                    row["torch_batch"] = timed(batch)
                elif batch == 1:
                    row["torch_batch"] = refs1[stage]
            rows.append(row)
            print(markdown(result).splitlines()[-1], flush=True)
            write(result, out, tag)
    result["predicted_official"] = {b: v for b in args.batches if (v := predict_transfer(rows, b)) is not None}
    torch_pred = predict_torch_transfer(rows)
    if torch_pred is not None:
        result["predicted_torch_official"] = {1: torch_pred}
    write(result, out, tag)
    for batch in args.transfer_batch:
        if late():
            print(f"deadline: skipping the whole transfer at batch {batch}", flush=True)
            continue
        try:
            tr = time_transfer(models, batch, args.transfer_scale, chunk)
            tr["predicted_seconds_per_triple"] = predict_transfer(rows, batch, args.transfer_scale)
        except Exception as e:  # noqa: BLE001
            tr = {"batch": batch, "error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        if "error" not in tr:
            result["transfers"].append(tr)
        write(result, out, tag)
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.grid_shapes] or [
        (n_faces, n_hair) for n_faces in range(1, args.grid + 1) for n_hair in range(1, args.grid + 1)]
    if shapes:
        batch = (args.transfer_batch or args.batches)[0]
        # Compiled first (a 2 x 2 grid of one chunk per stage), so that the grids time their work.
        _attempt(time_grid, models, 2, 2, batch, chunk / max(OFFICIAL.values()), chunk, seed=99)
        result["grids"] = []
        for n_faces, n_hair in shapes:
            if late():
                print(f"deadline: skipping the {n_faces} x {n_hair} grid", flush=True)
                continue
            g = _attempt(time_grid, models, n_faces, n_hair, batch, args.transfer_scale, chunk,
                         seed=100 + 10 * n_faces + n_hair)
            if "error" not in g:
                g["predicted_seconds"] = predict_grid(rows, n_faces, n_hair, batch, args.transfer_scale)
                result["grids"].append(g)
                print(f"grid {n_faces} x {n_hair}: {g['seconds_per_triple']:.2f} s per triple", flush=True)
            write(result, out, tag)
    print(markdown(result))
    print(f"wrote {out / tag}.json, .md and .png in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
