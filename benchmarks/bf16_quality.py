"""What bfloat16 compute costs in quality: the same images embedded (W+ then FS) with float32
and with bfloat16 convolutions, same weights, targets, seeds and steps; reconstruction PSNR,
SSIM and LPIPS of each (pipeline/evaluate.py, LPIPS always in float32), and PSNR between the
two. For the face parser in bfloat16 (--parser-dtype): the share of the targets' labels it keeps.

Targets are renders of the generator itself (random w), so that a close reconstruction
exists and the comparison is not swamped by what random weights cannot represent.

    python benchmarks/bf16_quality.py --quick            # 64 px, 128 channels, 4 images, CPU
    python benchmarks/bf16_quality.py --size 1024 --images 8 --w-steps 1100 --fs-steps 250
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from barbershop_jax.config import EmbedConfig  # noqa: E402
from barbershop_jax.models import bundle  # noqa: E402
from barbershop_jax.pipeline import embed as pipeline_embed  # noqa: E402
from barbershop_jax.pipeline import evaluate  # noqa: E402
from barbershop_jax.pipeline.files import image_files as image_io  # noqa: E402
from suite import build_models  # noqa: E402
import result_names  # noqa: E402


def targets(g, n, seed):
    w = g.map(jax.random.normal(jax.random.PRNGKey(seed), (n, g.config.style_dim)))
    w = g.latent_avg + 0.7 * (w - g.latent_avg)  # truncated: typical images
    return image_io.to_uint8(np.asarray(g.render(g.w_plus_from_w(w), noise="const")))


def parser_agreement(parser, pixels) -> float:
    """Share of pixels whose label the bfloat16 parser gives as the float32 one does."""
    image01 = jax.numpy.asarray(pixels, jax.numpy.float32) / 255.0
    parse_size = min(parser.config.parse_size, image01.shape[1])
    full = parser.labels_of(image01, parse_size=parse_size)
    half = bundle.with_dtype(parser, "bfloat16").labels_of(image01, parse_size=parse_size)
    return float(np.mean(np.asarray(full) == np.asarray(half)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--channel-max", type=int, default=512)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--w-steps", type=int, default=1100)
    p.add_argument("--fs-steps", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="64 px, 128 channels, 4 images, 200 W+ and 50 FS steps")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.channel_max, args.images, args.w_steps, args.fs_steps, args.batch_size = 64, 128, 4, 200, 50, 4
    models = build_models(args.size, channel_max=args.channel_max)
    g32, vgg32 = models.generator, models.vgg
    pixels = targets(g32, args.images, seed=5)
    report = {"parser_labels_kept": parser_agreement(models.parser, pixels)}
    print("parser labels kept in bfloat16:", report["parser_labels_kept"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [image_io.save_png(Path(tmp) / "in" / f"t{i}.png", im) for i, im in enumerate(pixels)]
        for dtype in ("float32", "bfloat16"):
            # The embedding's models (no face parser), computing in `dtype`.
            embed_models = bundle.Models(bundle.with_dtype(g32, dtype), None, bundle.with_dtype(vgg32, dtype),
                                         models.pca)
            cfg = EmbedConfig.for_size(args.size, w_steps=args.w_steps, fs_steps=args.fs_steps)
            out = Path(tmp) / dtype
            t = time.perf_counter()
            pipeline_embed.embed(paths, out, embed_models, cfg, batch_size=args.batch_size, progress=False,
                                 checkpoint_every=None)
            seconds = time.perf_counter() - t
            report[dtype] = {"seconds": seconds, **evaluate.evaluate(paths, out, vgg32,
                                                                   lpips_size=cfg.lpips_size)["mean"]}
            print(dtype, report[dtype], flush=True)
        between = {}
        for stage in ("W+", "FS"):
            a = [image_io.load_rgb(Path(tmp) / "float32" / stage / f"t{i}.png") for i in range(args.images)]
            b = [image_io.load_rgb(Path(tmp) / "bfloat16" / stage / f"t{i}.png") for i in range(args.images)]
            between[stage] = float(np.mean([evaluate.psnr(x, y) for x, y in zip(a, b)]))
        report["psnr_float32_vs_bfloat16"] = between
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "jax": jax.__version__,
            "device": jax.devices()[0].device_kind, "machine": result_names.machine(), "size": args.size,
            "channel_max": args.channel_max,
            "images": args.images, "w_steps": args.w_steps, "fs_steps": args.fs_steps}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = result_names.stem("bf16-quality", f"{args.size}px")
    (out / f"{tag}.json").write_text(json.dumps({"meta": meta, "report": report}, indent=1) + "\n")
    lines = [f"Embedding quality, float32 against bfloat16 compute: {args.images} generator renders at {args.size} px "
             f"(channels up to {args.channel_max}), {args.w_steps} W+ and {args.fs_steps} FS steps, "
             f"{meta['device']}, JAX {meta['jax']}, {meta['date']}", "",
             "| compute | W+ PSNR | W+ SSIM | W+ LPIPS | FS PSNR | FS SSIM | FS LPIPS | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for dtype in ("float32", "bfloat16"):
        r = report[dtype]
        lines.append(f"| {dtype} | {r['W+']['psnr']:.2f} | {r['W+']['ssim']:.4f} | {r['W+']['lpips']:.4f} | "
                     f"{r['FS']['psnr']:.2f} | {r['FS']['ssim']:.4f} | {r['FS']['lpips']:.4f} | {r['seconds']:.0f} |")
    lines += ["", f"PSNR between the float32 and bfloat16 renders: W+ {between['W+']:.2f} dB, FS {between['FS']:.2f} dB", "",
              f"Face parser in bfloat16 (random weights): {100 * report['parser_labels_kept']:.1f}% of the targets' "
              "labels as in float32", ""]
    (out / f"{tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
