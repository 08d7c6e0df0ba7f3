"""Compare face_crop.crop_face with the official align_face (Barbershop utils/shape_predictor.py),
pixel for pixel, on photos that take every branch: shrink, crop, reflect padding.

Needs a fetched snapshot of ZPdesu/Barbershop (the official code is read from it, not copied
here); dlib is stubbed (the landmarks are given) and Pillow's removed ANTIALIAS is aliased to
LANCZOS, which is what it was. Not part of the test suite.

    python benchmarks/check_official_face_crop.py [--repo /work/.mirror/ZPdesu+Barbershop/repo]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
from PIL import Image

from barbershop_jax.pipeline.faces import crop as face_crop


def official_align_face(repo: str):
    source = subprocess.run(["git", f"--git-dir={repo}", "show", "HEAD:utils/shape_predictor.py"],
                            check=True, capture_output=True, text=True).stdout
    sys.modules.setdefault("dlib", types.ModuleType("dlib"))
    Image.ANTIALIAS = Image.Resampling.LANCZOS
    module = types.ModuleType("official_shape_predictor")
    exec(compile(source, "utils/shape_predictor.py", "exec"), module.__dict__)
    return module


def cases(rng):
    """(name, photo uint8, 68 landmarks)."""
    base = np.array([[x, y] for x, y in zip(np.linspace(-1, 1, 68), np.linspace(-0.5, 0.5, 68))])
    template = np.zeros((68, 2))
    template[:] = base * 0.1
    template[36:42] = [-0.3, -0.2] + rng.normal(0, 0.02, (6, 2))   # image-left eye
    template[42:48] = [0.3, -0.2] + rng.normal(0, 0.02, (6, 2))    # image-right eye
    template[48] = [-0.25, 0.35]
    template[54] = [0.25, 0.35]

    def photo(h, w, seed):
        r = np.random.default_rng(seed)
        small = r.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        return np.asarray(img)

    def face(centre, scale, angle):
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s], [s, c]])
        return np.rint(template @ rot.T * scale + centre)  # dlib gives integer points

    yield "frontal, inside the photo", photo(600, 800, 1), face([400, 300], 120, 0.0)
    yield "rotated 20 degrees", photo(600, 800, 2), face([380, 320], 110, np.radians(20))
    yield "near the top-left corner (padding)", photo(500, 500, 3), face([90, 80], 100, np.radians(-8))
    yield "large face in a large photo (shrink 2)", photo(3000, 3400, 4), face([1700, 1500], 1400, 0.05)
    yield "large face, shrink 3, off-centre", photo(4200, 3000, 5), face([1300, 2500], 1700, -0.1)
    yield "small face (no shrink, tiny crop)", photo(300, 400, 6), face([200, 150], 40, 0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default="/work/.mirror/ZPdesu+Barbershop/repo")
    args = ap.parse_args()
    official = official_align_face(args.repo)
    rng = np.random.default_rng(0)
    worst = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, photo, lm in cases(rng):
            path = Path(tmp) / "photo.png"
            Image.fromarray(photo).save(path)
            official.get_landmark = lambda filepath, predictor, lm=lm: [lm]
            theirs = np.asarray(official.align_face(str(path), None)[0])
            ours, transform = face_crop.crop_face(photo, lm, 1024, min_face=1)
            diff = np.abs(theirs.astype(int) - ours.astype(int))
            worst = max(worst, int(diff.max()))
            print(f"{name:40s} photo {photo.shape[1]}x{photo.shape[0]}, quad side "
                  f"{np.hypot(*(transform.quad[3] - transform.quad[0])):.0f}: max |diff| {diff.max()}, "
                  f"pixels differing {(diff > 0).any(-1).sum()}")
    print("identical" if worst == 0 else f"DIFFERENT (max {worst})")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
