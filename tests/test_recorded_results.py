"""The results of a tiny transfer, bit for bit as the code before the redesign gave them
(commit aca9730, 2026-12-03): four images embedded, three hair triples (one with a structure
reference) and a lips triple, at batch 2, on the test models of test_transfer.py. The arrays
in data/recorded_before_redesign.npz were written by that commit's Pipeline; here the same run
goes through the new layout. Any change of numbers fails this test: a change meant to alter
them must say so and record anew (`python tests/test_recorded_results.py OUT_DIR`)."""
import sys
from pathlib import Path

import jax
import numpy as np

from barbershop_jax.config import EmbedConfig, TransferConfig
from barbershop_jax.models import embedded, vgg16
from barbershop_jax.models.bundle import Models
from barbershop_jax.models import pca as pca_lib
from barbershop_jax.pipeline import image_files
from barbershop_jax.pipeline.run import Pipeline
from conftest import render
from test_transfer import SMALL_VGG, STEPS, _parser_with_hair

RECORDED = Path(__file__).parent / "data" / "recorded_before_redesign.npz"
NAMES = ("ann", "bob", "cid", "dan")
FIELDS = ("image", "target_labels", "latent_in", "structure_f", "face_mask", "hair_mask")


def run_recorded_transfer(out: Path) -> dict:
    g = embedded.generator()
    models = Models(g, _parser_with_hair(g), vgg16.init(SMALL_VGG, jax.random.PRNGKey(1)),
                    pca_lib.pca_stats(g, 2000, jax.random.PRNGKey(2)))
    w = g.w_plus_from_w(g.map(jax.random.normal(jax.random.PRNGKey(11), (4, g.config.style_dim))))
    pixels = image_files.to_uint8(np.asarray(render(g, w)))
    ann, bob, cid, dan = [image_files.save_png(out / "in" / f"{n}.png", p) for n, p in zip(NAMES, pixels)]
    arrays = {"pixels": pixels}
    runs = {"hair": [(ann, bob, cid), (ann, cid, cid), (dan, bob, cid, ann)], "lips": [(bob, dan, ann)]}
    for region, triples in runs.items():
        embed_cfg = EmbedConfig.for_size(g.config.size, w_steps=STEPS["w_steps"], fs_steps=STEPS["fs_steps"])
        cfg = TransferConfig(region=region, **{k: v for k, v in STEPS.items() if k not in ("w_steps", "fs_steps")})
        results = Pipeline(models, out / "out", embed_cfg, cfg, batch_size=2, progress=False).run(triples)
        for i, r in enumerate(results):
            for field in FIELDS:
                arrays[f"{region}{i}_{field}"] = np.asarray(getattr(r, field))
    for name in NAMES:
        arrays[f"wplus_{name}"] = np.load(out / "out" / "W+" / f"{name}.npy")
        with np.load(out / "out" / "FS" / f"{name}.npz") as fs:
            arrays[f"fs_latent_in_{name}"], arrays[f"fs_latent_F_{name}"] = fs["latent_in"], fs["latent_F"]
    return arrays


def test_a_tiny_transfer_gives_the_recorded_arrays_bit_for_bit(tmp_path):
    with np.load(RECORDED) as z:
        recorded = {k: z[k] for k in z.files}
    got = run_recorded_transfer(tmp_path)
    assert sorted(got) == sorted(recorded)
    assert recorded["hair0_hair_mask"].any() and recorded["lips0_face_mask"].any()  # the region paths ran
    differ = [k for k in recorded if got[k].dtype != recorded[k].dtype or got[k].shape != recorded[k].shape
              or not np.array_equal(got[k], recorded[k])]
    assert differ == [], f"not bit-identical to the recorded run: {differ}"


if __name__ == "__main__":  # record anew: python tests/test_recorded_results.py OUT_DIR
    out = Path(sys.argv[1])
    np.savez_compressed(RECORDED, **run_recorded_transfer(out))
    print(f"wrote {RECORDED}")
