"""The embedding stage's result writes (official layout: W+ .npy + PNG + key, FS .npz + PNG +
key) for a batch of 1024 px images, one after another, and on BackgroundWrites' threads
(pipeline/files/image_files.py), as the embedding does them while the next batch runs.

    python benchmarks/bench_writes.py [--images 8] [--workers 4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from barbershop_jax.config import EmbedConfig  # noqa: E402
from barbershop_jax.ops import resample  # noqa: E402
from barbershop_jax.pipeline.files import image_files as image_io  # noqa: E402
from barbershop_jax.pipeline.store import cache  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    photo = image_io.load_rgb(ROOT / "barbershop_jax" / "data" / "examples" / "photo.jpg")
    render = resample.lanczos_resize(photo, 1024)  # a photo-like 1024 px render
    cfg = EmbedConfig()
    w, f = np.zeros((18, 512), np.float32), np.zeros((32, 32, 512), np.float32)

    def batch(store, submit):
        for i in range(args.images):
            submit(store.put_w_plus, f"img{i}", "0" * 64, cfg, w, render)
            submit(store.put_fs, f"img{i}", "0" * 64, cfg, w, f, render)

    for name in ("sequential", "background"):
        waits, totals = [], []
        for _ in range(args.reps):
            with tempfile.TemporaryDirectory() as tmp:
                store = cache.EmbeddingCache(tmp, "weights")
                t = time.perf_counter()
                if name == "sequential":
                    batch(store, lambda fn, *a: fn(*a))
                    waits.append(time.perf_counter() - t)
                else:
                    with image_io.BackgroundWrites(args.workers) as writes:
                        batch(store, writes.submit)
                        waits.append(time.perf_counter() - t)
                totals.append(time.perf_counter() - t)
        print(f"{name}: the loop waits {statistics.median(waits):.2f} s for {args.images} images' results; "
              f"all on disk after {statistics.median(totals):.2f} s")


if __name__ == "__main__":
    main()
