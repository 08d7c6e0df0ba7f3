"""Convergence: how long each optimiser takes to get as good a result, not only how long a step
takes.

For each stage and each run (an optimiser text, as the configs take it: config.py
OptimizerSpec; a compute dtype; a batch size), the same problems are optimised from the same
start with the same noise seeds:
  W+, FS   the embedding of images the generator rendered from known latents (FS starts from
           the official run's W+), so that the reconstruction has a known best;
  segmentation, align2, blend   the suite's random problems of the transfer's loops
           (suite.stage_problem).
Recorded after each chunk of steps: the mean loss over the problems and the seconds of
optimisation so far (each run's programs are compiled first, by a one-chunk warm-up, so that
seconds are steps only). Reported per run: the final loss; the steps and seconds it took to
reach the final loss of the official configuration (adam, float32, the first batch size) or
"-" if it never did; with a stopping rule (`stop=`), the steps each problem took; for W+ and
FS, the reconstruction's PSNR, SSIM and LPIPS against the targets (evaluate-embedding's
measures). JSON, a markdown table and a plot (loss against step and against seconds) in
benchmarks/results/ (names: result_names.py).

With random weights (the embedded models, or --size with random ones) the figures describe a
random generator; with the official weights (--weights) the same command answers the real
question.

    python benchmarks/convergence.py --quick        # the embedded 64 px models, a few minutes on 2 CPU cores
    python benchmarks/convergence.py --weights DIR --stages W+ FS --batches 8 --dtypes float32 bfloat16
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from barbershop_jax.config import EmbedConfig, TransferConfig  # noqa: E402
from barbershop_jax.models import bundle  # noqa: E402
from barbershop_jax.ops import resample  # noqa: E402
from barbershop_jax.pipeline import evaluate  # noqa: E402
from barbershop_jax.pipeline.files import image_files  # noqa: E402
from barbershop_jax.stages import embed as embedding  # noqa: E402
from barbershop_jax.stages import loop  # noqa: E402
from barbershop_jax.stages.optim import Optimizer  # noqa: E402
import result_names  # noqa: E402

OFFICIAL = "adam"
# "Reached the official final loss": within this fraction of it. The same run in another batch
# differs in the last bits of its loss (docs/api.md, "Hairstyle transfer"), and exactly equal would miss it.
REACH = 1e-3
# The loop each stage runs, the config field of its optimiser, and its official step count.
STAGES = {"W+": ("w_optimizer", 1100), "FS": ("fs_optimizer", 250), "segmentation": ("align_optimizer", 140),
          "align2": ("align_optimizer", 100), "blend": ("blend_optimizer", 400)}
QUICK = {"stages": ["W+", "FS"], "steps": {"W+": 120, "FS": 40}, "batches": [2, 1],
         "dtypes": ["float32", "bfloat16"],
         "optimizers": ["adam", "lion(b1=0.95, learning_rate=0.003)", "adam(stop=0.002, window=10)"]}


@dataclasses.dataclass(frozen=True)
class Run:
    optimizer: str
    dtype: str
    batch: int

    def name(self) -> str:
        return f"{self.optimizer}, {self.dtype}, batch {self.batch}"


def runs_of(optimizers, dtypes, batches) -> list[Run]:
    """The official configuration (adam, the first dtype and batch size), every other optimiser
    in the first dtype at the first batch size, then the official optimiser in each other dtype
    and at each other batch size."""
    runs = [Run(o, dtypes[0], batches[0]) for o in [OFFICIAL, *optimizers]]
    runs += [Run(OFFICIAL, d, batches[0]) for d in dtypes[1:]]
    runs += [Run(OFFICIAL, dtypes[0], b) for b in batches[1:]]
    return list(dict.fromkeys(runs))


# ----------------------------------------------------------------------------- the problems
def rendered_targets(models, n: int, lpips_size: int, seed: int = 5):
    """n images the generator renders from normal draws (constant noise): (Targets, uint8 images)."""
    g = models.generator
    w_plus = g.w_plus_from_w(g.map(jax.random.normal(jax.random.PRNGKey(seed), (n, g.config.style_dim))))
    images = image_files.to_uint8(np.asarray(g.render(w_plus, noise="const")))
    small = np.stack([resample.uint8_to_signed(resample.lanczos_resize(im, lpips_size)) for im in images])
    full = np.stack([resample.uint8_to_signed(im) for im in images])
    keys = jnp.stack([loop.image_key(seed, f"{i:08x}") for i in range(n)])
    return embedding.Targets(jnp.asarray(full), jnp.asarray(small), keys), images


def embedding_problem(stage, models, targets, embed_cfg, w_start):
    """(step, config, state, data) of the W+ or FS loop on `targets`, as embed_w_plus and
    embed_fs build them, with the config's optimiser."""
    units = embedding.target_units(models.vgg, targets.small)
    if stage == "W+":
        w = models.generator.mean_w_plus(targets.full.shape[0])
        state = Optimizer(embed_cfg.w_optimizer).start(w, embed_cfg.learning_rate, total_steps=embed_cfg.w_steps)
        return embedding._w_plus_step, state, (targets, units)
    s_index = embed_cfg.s_index(models.generator.config.n_latent)
    f_init = embedding._f_init(models, w_start, targets, cfg=embed_cfg.step_config())
    params = embedding.FSParams(w_start[:, s_index:], f_init)
    state = Optimizer(embed_cfg.fs_optimizer).start(params, embed_cfg.learning_rate, total_steps=embed_cfg.fs_steps)
    return embedding._fs_step, state, (targets, units, w_start[:, :s_index], f_init)


def transfer_problem(stage, models, batch, embed_cfg, cfg):
    """The suite's random problem of a transfer loop, its state made by the config's optimiser."""
    import suite
    step, _, _, state, data = suite.stage_problem(stage, models, batch, embed_cfg, cfg)
    field, _ = STAGES[stage]
    optimizer = Optimizer(getattr(cfg, field), box=(0.0, 1.0) if stage == "blend" else None)
    return step, optimizer.start(state.params, cfg.learning_rate, state.result, cfg_steps(cfg, stage)), data


def cfg_steps(cfg, stage) -> int:
    return {"segmentation": cfg.align_steps1, "align2": cfg.align_steps2, "blend": cfg.blend_steps}[stage]


def problems(stage, models, n, embed_cfg, cfg, w_start=None):
    """(step, state, data) of n problems of `stage` (leading axis n), and the targets' uint8
    images for the embedding stages (else None)."""
    if stage in ("W+", "FS"):
        targets, images = rendered_targets(models, n, embed_cfg.lpips_size)
        return (*embedding_problem(stage, models, targets, embed_cfg, w_start), images)
    return (*transfer_problem(stage, models, n, embed_cfg, cfg), None)


# ----------------------------------------------------------------------------- one run
class Recorder(loop.LoopHook):
    """After each chunk: the loss of each problem and the seconds since the loop began."""

    def __init__(self):
        self.steps, self.losses, self.seconds, self.start = [], [], [], 0.0

    def begin(self, which, state, n_steps):
        self.start = time.perf_counter()
        return state, 0

    def after_chunk(self, which, state_of, done, n_steps, metrics):
        losses = np.asarray(metrics["loss"], np.float64)  # waits for the chunk's steps
        self.steps.append(done)
        self.losses.append(losses)
        self.seconds.append(time.perf_counter() - self.start)


def _held(steps, values, grid):
    """values (recorded at `steps`) at each step of `grid`, the last one held after the end."""
    index = np.clip(np.searchsorted(steps, grid, side="right") - 1, 0, len(steps) - 1)
    return np.asarray(values)[index]


def with_dtype(models, dtype: str):
    return models._replace(generator=bundle.with_dtype(models.generator, dtype),
                           vgg=bundle.with_dtype(models.vgg, dtype))


def configs_of(stage, run: Run, embed_cfg, cfg, n_steps):
    """The embedding and transfer configs of one run of `stage`: its optimiser and step count."""
    field, _ = STAGES[stage]
    steps = {"W+": "w_steps", "FS": "fs_steps", "segmentation": "align_steps1", "align2": "align_steps2",
             "blend": "blend_steps"}[stage]
    if stage in ("W+", "FS"):
        embed_cfg = dataclasses.replace(embed_cfg, **{field: run.optimizer, steps: n_steps})
        return embed_cfg, cfg, embed_cfg
    cfg = dataclasses.replace(cfg, **{field: run.optimizer, steps: n_steps})
    return embed_cfg, cfg, cfg


def run_stage(stage, run: Run, models, n, n_steps, embed_cfg, cfg, w_start=None):
    """`run` on n problems of `stage`, in batches of run.batch one after another: (its curve:
    the mean loss and the summed seconds at each recorded step, the steps each problem took
    and, for W+ and FS, the reconstruction; the final results, batch axis first)."""
    models = with_dtype(models, run.dtype)
    embed_cfg, cfg, loop_cfg = configs_of(stage, run, embed_cfg, cfg, n_steps)
    step, state, data, images = problems(stage, models, n, embed_cfg, cfg, w_start)
    which = loop.Loop(stage, rule=Optimizer(run.optimizer).rule)
    warm = loop.chunking_of(loop_cfg).length
    records, results, taken = [], [], []
    for start in range(0, n, run.batch):
        part = lambda tree: jax.tree.map(lambda x: x[start:start + run.batch], tree)  # noqa: E731
        loop.run(step, loop_cfg, models, part(state), part(data), warm, loop=which)  # compiles
        record = Recorder()
        final, metrics = loop.run(step, loop_cfg, models, part(state), part(data), n_steps, loop=which, hook=record)
        records.append(record)
        results.append(final.result)
        taken += np.asarray(metrics.get("steps", [n_steps] * run.batch)).tolist()
    grid = np.unique(np.concatenate([r.steps for r in records]))
    loss = np.concatenate([_held(r.steps, r.losses, grid) for r in records], axis=1).mean(axis=1)
    seconds = np.sum([_held(r.steps, r.seconds, grid) for r in records], axis=0)
    result = jax.tree.map(lambda *xs: jnp.concatenate(xs), *results)
    curve = {"run": dataclasses.asdict(run), "steps": grid.tolist(), "loss": loss.tolist(),
             "seconds": seconds.tolist(), "steps_taken": taken}
    if images is not None:  # W+ and FS: data[0] holds the targets
        curve["reconstruction"] = reconstruction(stage, models, embed_cfg, result, data[0].key, images, w_start)
    return curve, result


def reconstruction(stage, models, cfg, result, keys, targets, w_start) -> dict:
    """PSNR, SSIM and LPIPS of the final renders against the targets' uint8 images (W+ and FS)."""
    if stage == "W+":
        render = embedding.w_plus_render(models, result, keys, cfg)
    else:
        s_index = cfg.s_index(models.generator.config.n_latent)
        latent_in = jnp.concatenate([w_start[:, :s_index], result.s_code], axis=1)
        render = embedding.fs_render(models, latent_in, result.structure_f, keys, cfg)
    renders = image_files.to_uint8(np.asarray(render))
    size = min(256, targets.shape[1])
    return {"psnr": float(np.mean([evaluate.psnr(a, b) for a, b in zip(renders, targets)])),
            "ssim": float(np.mean([evaluate.ssim(a, b) for a, b in zip(renders, targets)])),
            "lpips": float(np.mean([evaluate.lpips_256(models.vgg, a, b, size) for a, b in zip(renders, targets)]))}


def reached(curve, target: float):
    """(step, seconds) at which the mean loss first came within REACH of `target` (or under
    it), or (None, None)."""
    hits = np.flatnonzero(np.asarray(curve["loss"]) <= target * (1 + REACH))
    if not len(hits):
        return None, None
    return curve["steps"][hits[0]], curve["seconds"][hits[0]]


# ----------------------------------------------------------------------------- the report
def _cell(value, fmt):
    return "-" if value is None else format(value, fmt)


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# Convergence, {meta['size']} px, {meta['weights']} ({meta['machine']}, {meta['date']})", "",
             f"{meta['images']} problems per stage, noise {meta['noise']}, JAX {meta['jax']} on {meta['device']}; "
             "loss: the problems' mean at the last step; to official: the first step (and seconds of steps) at "
             f"which the mean loss came within {REACH:.1%} of the official run's final loss (adam, float32, the first "
             "batch size); "
             "steps taken: per problem, where a stopping rule ran; PSNR, SSIM, LPIPS: the final renders against "
             "the targets.", "",
             "| stage | optimiser | dtype | batch | steps | loss | to official: steps | seconds | seconds in all "
             "| steps taken | PSNR | SSIM | LPIPS |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for stage, curves in result["stages"].items():
        for c in curves:
            run, rec = c["run"], c.get("reconstruction") or {}
            taken = ", ".join(map(str, c["steps_taken"])) if "stop=" in run["optimizer"] else "-"
            lines.append(f"| {stage} | `{run['optimizer']}` | {run['dtype']} | {run['batch']} | {c['steps'][-1]} "
                         f"| {c['loss'][-1]:.4g} | {_cell(c['reached_step'], 'd')} | {_cell(c['reached_s'], '.1f')} "
                         f"| {c['seconds'][-1]:.1f} | {taken} | {_cell(rec.get('psnr'), '.2f')} "
                         f"| {_cell(rec.get('ssim'), '.3f')} | {_cell(rec.get('lpips'), '.3f')} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    stages = result["stages"]
    fig, axes = plt.subplots(len(stages), 2, figsize=(11, 3.6 * len(stages)), squeeze=False)
    for row, (stage, curves) in zip(axes, stages.items()):
        for c in curves:
            run = c["run"]
            label = f"{run['optimizer']}, {run['dtype']}, b{run['batch']}"
            row[0].plot(c["steps"], c["loss"], label=label)
            row[1].plot(c["seconds"], c["loss"], label=label)
        for ax, xlabel in zip(row, ("step", "seconds of steps")):
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{stage} loss")
            ax.axhline(curves[0]["loss"][-1], color="grey", lw=0.6, ls=":")
        row[0].legend(fontsize=7)
    fig.suptitle(f"Convergence, {result['meta']['size']} px, {result['meta']['weights']} ({result['meta']['machine']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------- main
def measure(models, stages, steps, runs, n, embed_cfg, cfg, log=print) -> dict:
    """Every run of every stage; the official W+ run's result is the FS runs' start (the
    average latent where W+ is not measured)."""
    out, w_start = {}, models.generator.mean_w_plus(n)
    for stage in stages:
        curves, results = [], []
        for run in runs:
            log(f"{stage}: {run.name()}, {steps[stage]} steps")
            curve, result = run_stage(stage, run, models, n, steps[stage], embed_cfg, cfg, w_start)
            curves.append(curve)
            results.append(result)
        if stage == "W+":
            w_start = results[0]  # the official run's W+
        target = curves[0]["loss"][-1]
        for curve in curves:
            curve["reached_step"], curve["reached_s"] = reached(curve, target)
        out[stage] = curves
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"the quick configuration: {QUICK}")
    p.add_argument("--weights", help="official weights folder (default: the embedded tiny models)")
    p.add_argument("--stages", nargs="+", choices=list(STAGES), help="default: W+ FS")
    p.add_argument("--steps", nargs="+", metavar="STAGE=N", default=[],
                   help="steps of a stage (default: the official counts; --quick: W+=120 FS=40)")
    p.add_argument("--optimizers", nargs="+", metavar="OPT", help="optimiser texts to compare with the official "
                                                                 "adam, which always runs first (default: --quick's)")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"], help="default: float32 bfloat16")
    p.add_argument("--batches", nargs="+", type=int, help="batch sizes; the first is the official run's")
    p.add_argument("--images", type=int, help="problems per stage (default: the largest batch)")
    p.add_argument("--noise", choices=["random", "const", "none"], default="random",
                   help="the generator's noise (official: random)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    base = QUICK if args.quick else {**QUICK, "steps": {s: n for s, (_, n) in STAGES.items()}}
    steps = {**base["steps"], **{k: int(v) for k, v in (s.split("=") for s in args.steps)}}
    stages = args.stages or base["stages"]
    batches = args.batches or base["batches"]
    runs = runs_of(args.optimizers or base["optimizers"], args.dtypes or base["dtypes"], batches)
    n = args.images or max(batches)
    models = bundle.load(args.weights, parser=any(s not in ("W+", "FS") for s in stages))
    size = models.generator.config.size
    embed_cfg = EmbedConfig.for_size(size, noise=args.noise)
    cfg = TransferConfig(noise=args.noise).resolve(size)
    started = time.perf_counter()
    result = {"meta": {"size": size, "weights": args.weights or "embedded", "images": n, "noise": args.noise,
                       "jax": jax.__version__, "device": jax.devices()[0].device_kind,
                       "machine": result_names.machine(), "date": time.strftime("%Y-%m-%d"), "steps": steps},
              "stages": measure(models, stages, steps, runs, n, embed_cfg, cfg)}
    config = f"{size}px" + ("-quick" if args.quick else "")
    stem = result_names.stem("convergence", config)
    path = result_names.write(args.out, stem, result, markdown(result))
    plot(result, path.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {path} (.md, .png) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
