"""Reconstruction quality of embeddings: PSNR, SSIM and LPIPS, the measures of the paper's
reconstruction table, between each input image and its W+ and FS renders.

The renders are the PNGs the embedding wrote beside the latents (W+/{name}.png, FS/{name}.png:
the image of the loop's last iteration, as the official code saves it), checked against the
input through the content hash in the entry's JSON key file.

    PSNR = 10 log10(255^2 / MSE) on uint8 RGB at full size
    SSIM = Wang et al. 2004: Gaussian window (sigma 1.5, 11 taps), K1 0.01, K2 0.03, data range
           255, per channel, averaged (skimage's structural_similarity with gaussian_weights=True,
           use_sample_covariance=False, channel_axis=-1)
    LPIPS = LPIPS v0.1 (VGG) at 256 px, both images LANCZOS-resized, in [-1, 1]
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax.ops import resample
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.store import cache as cache_lib
from barbershop_jax.losses import lpips as lpips_loss
from barbershop_jax.pipeline.files.sources import content_hash


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _gaussian_taps(sigma=1.5, radius=5):
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _filter(x, taps):
    """Separable 'valid' filtering of (H, W) or (H, W, C) float64 along H and W."""
    n = len(taps)
    h = sum(t * x[i:x.shape[0] - n + 1 + i] for i, t in enumerate(taps))
    return sum(t * h[:, i:h.shape[1] - n + 1 + i] for i, t in enumerate(taps))


def ssim(a, b, data_range=255.0) -> float:
    """Mean SSIM over the valid window positions and the channels."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    taps = _gaussian_taps()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter(a, taps), _filter(b, taps)
    var_a = _filter(a * a, taps) - mu_a ** 2
    var_b = _filter(b * b, taps) - mu_b ** 2
    cov = _filter(a * b, taps) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


_lpips = jax.jit(lpips_loss.lpips)


def lpips_256(vgg, a, b, size=256) -> float:
    x = [resample.uint8_to_signed(resample.lanczos_resize(im, size))[None] for im in (a, b)]
    return float(_lpips(vgg, jnp.asarray(x[0]), jnp.asarray(x[1]))[0])


def evaluate(paths, embed_dir, vgg, lpips_size=256) -> dict:
    """Scores of every image whose embeddings are in `embed_dir`; others are listed as missing.

    Returns {"images": [{name, stage, psnr, ssim, lpips}], "mean": {stage: {...}}, "missing": [...],
    "unreadable": [{path, reason}]}: an image that cannot be read is listed, and the rest go on.
    """
    rows, missing, unreadable = [], [], []
    embed_dir = Path(embed_dir)
    for path in paths:
        try:
            pixels = image_io.load_rgb(path)
        except image_io.ImageError as e:
            unreadable.append({"path": str(path), "reason": str(e)})
            continue
        image_hash = content_hash(pixels)
        name = Path(path).stem
        found = False
        for stage in (cache_lib.W_DIR, cache_lib.FS_DIR):
            png, key = embed_dir / stage / f"{name}.png", embed_dir / stage / f"{name}.json"
            try:
                meta = json.loads(key.read_text())
                if not isinstance(meta, dict) or meta.get("image_sha256") != image_hash:
                    continue
                render = image_io.load_rgb(png)
            except (OSError, ValueError):
                continue
            if render.shape != pixels.shape:
                pixels_eval = resample.lanczos_resize(pixels, render.shape[0])
            else:
                pixels_eval = pixels
            rows.append({"name": name, "stage": stage, "psnr": psnr(render, pixels_eval),
                         "ssim": ssim(render, pixels_eval),
                         "lpips": lpips_256(vgg, render, pixels_eval, min(lpips_size, render.shape[0]))})
            found = True
        if not found:
            missing.append(str(path))
    mean = {}
    for stage in (cache_lib.W_DIR, cache_lib.FS_DIR):
        sel = [r for r in rows if r["stage"] == stage]
        if sel:
            mean[stage] = {m: float(np.mean([r[m] for r in sel])) for m in ("psnr", "ssim", "lpips")}
            mean[stage]["n"] = len(sel)
    return {"images": rows, "mean": mean, "missing": missing, "unreadable": unreadable}


def markdown(report: dict) -> str:
    lines = ["| image | stage | PSNR dB | SSIM | LPIPS |", "| --- | --- | ---: | ---: | ---: |"]
    for r in report["images"]:
        lines.append(f"| {r['name']} | {r['stage']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['lpips']:.4f} |")
    for stage, m in report["mean"].items():
        lines.append(f"| mean of {m['n']} | {stage} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['lpips']:.4f} |")
    return "\n".join(lines)


def write_report(report: dict, out) -> Path:
    """The report as JSON at `out` and its table as markdown beside it, each atomically."""
    out = Path(out)
    cache_lib.save_json(out, report)
    image_io.atomic_write(out.with_suffix(".md"), lambda f: f.write((markdown(report) + "\n").encode()))
    return out
