"""The results of a tiny transfer, bit for bit as recorded: four images embedded, three hair
triples (one with a structure reference) and a lips triple, at batch 2, on the test models
(conftest.tiny_models). Any change of numbers fails this test: a change meant to alter them
must say so and record anew (`python tests/test_recorded_results.py OUT_DIR`).

Bits depend on the machine: XLA:CPU compiles for the processor's vector instructions, and
between AVX2 and AVX-512 one input pixel one level off changes Adam's step signs, until the
images are 80-120 levels apart. So each recording names the machine it was made on (machine()
below: the instruction sets XLA uses, the core count, jaxlib) and is named after its widest
vector set (data/recorded_avx2.npz, data/recorded_avx512.npz), with a hash of its machine where
that name is taken by another kind: two AVX-512 EPYCs, one with AVX-VNNI as well, gave 6 of the
37 arrays different bits (2026-12-08). The test compares against the one made on a machine
like this one, and elsewhere is skipped, saying how to record one there.
An AVX-512 machine cannot stand in for an AVX2 one: with XLA_FLAGS=--xla_cpu_max_isa=AVX2 on an
AVX-512 EPYC, 29 of the 37 arrays differed from the AVX2 recording (2026-12-07), so each
recording is made on its own kind of machine."""
import hashlib
import sys
from pathlib import Path

import jax
import numpy as np

from barbershop_jax.config import EmbedConfig, TransferConfig
from barbershop_jax.pipeline.files import image_files
from barbershop_jax.pipeline.run import Pipeline
from barbershop_jax.pipeline.runtime.settings import RunSettings
from conftest import STEPS, cpu_kind, render, tiny_models

DATA = Path(__file__).parent / "data"


def machine() -> str:
    import os

    import jaxlib
    return f"{cpu_kind()}|{os.cpu_count()} cores|jaxlib {jaxlib.__version__}"


def made_on(path: Path) -> str:
    with np.load(path) as z:
        return str(z["machine"])


def recording() -> Path:
    """The recording made on a machine like this one: the one whose machine() is this one's, or
    else the name a new one gets (its widest vector set, and its machine's hash where another
    kind of machine holds that name)."""
    found = [p for p in sorted(DATA.glob("recorded_*.npz")) if made_on(p) == machine()]
    if found:
        return found[0]
    path = DATA / f"recorded_{'avx512' if 'avx512f' in machine() else 'avx2'}.npz"
    if path.is_file():
        path = path.with_stem(f"{path.stem}_{hashlib.sha256(machine().encode()).hexdigest()[:8]}")
    return path


NAMES = ("ann", "bob", "cid", "dan")
FIELDS = ("image", "target_labels", "latent_in", "structure_f", "face_mask", "hair_mask")


def run_recorded_transfer(out: Path) -> dict:
    models = tiny_models()
    g = models.generator
    w = g.w_plus_from_w(g.map(jax.random.normal(jax.random.PRNGKey(11), (4, g.config.style_dim))))
    pixels = image_files.to_uint8(np.asarray(render(g, w)))
    ann, bob, cid, dan = [image_files.save_png(out / "in" / f"{n}.png", p) for n, p in zip(NAMES, pixels)]
    arrays = {"pixels": pixels}
    runs = {"hair": [(ann, bob, cid), (ann, cid, cid), (dan, bob, cid, ann)], "lips": [(bob, dan, ann)]}
    for region, triples in runs.items():
        embed_cfg = EmbedConfig.for_size(g.config.size, w_steps=STEPS["w_steps"], fs_steps=STEPS["fs_steps"])
        cfg = TransferConfig(region=region, **{k: v for k, v in STEPS.items() if k not in ("w_steps", "fs_steps")})
        # Padded as when recorded: the lips run's one triple blends in a batch of 2.
        results = Pipeline(models, out / "out", embed_cfg, cfg,
                           RunSettings(batch_size=2, progress=False, pad_batches=True)).run(triples)
        for i, r in enumerate(results):
            for field in FIELDS:
                arrays[f"{region}{i}_{field}"] = np.asarray(getattr(r, field))
    for name in NAMES:
        arrays[f"wplus_{name}"] = np.load(out / "out" / "W+" / f"{name}.npy")
        with np.load(out / "out" / "FS" / f"{name}.npz") as fs:
            arrays[f"fs_latent_in_{name}"], arrays[f"fs_latent_F_{name}"] = fs["latent_in"], fs["latent_F"]
    return arrays


def test_a_tiny_transfer_gives_the_recorded_arrays_bit_for_bit(tmp_path):
    import pytest
    path = recording()
    if not path.is_file():
        others = "; ".join(f"{p.name}: {made_on(p)}" for p in sorted(DATA.glob("recorded_*.npz")))
        pytest.skip(f"no recording made on a machine like this one ({machine()}; made: {others}): record one "
                    "here (python tests/test_recorded_results.py OUT_DIR)")
    with np.load(path) as z:
        recorded = {k: z[k] for k in z.files if k != "machine"}
    got = run_recorded_transfer(tmp_path)
    assert sorted(got) == sorted(recorded)
    assert recorded["hair0_hair_mask"].any() and recorded["lips0_face_mask"].any()  # the region paths ran
    differ = [k for k in recorded if got[k].dtype != recorded[k].dtype or got[k].shape != recorded[k].shape
              or not np.array_equal(got[k], recorded[k])]
    assert differ == [], f"not bit-identical to the recorded run: {differ}"


def test_each_kind_of_machine_finds_its_own_recording(monkeypatch):
    """recording(): the file whose machine is this one's; for a machine with none, a new name
    that leaves the other kinds' recordings as they are."""
    import test_recorded_results as this
    for path in sorted(DATA.glob("recorded_*.npz")):
        monkeypatch.setattr(this, "machine", lambda made=made_on(path): made)
        assert recording() == path
    monkeypatch.setattr(this, "machine", lambda: "avx+avx2+avx512f+avx512_fp16|64 cores|jaxlib 0.0")
    new = recording()
    assert not new.exists() and new.parent == DATA and new.name.startswith("recorded_avx512_")


if __name__ == "__main__":  # record anew: python tests/test_recorded_results.py OUT_DIR
    out = Path(sys.argv[1])
    path = recording()
    np.savez_compressed(path, machine=np.array(machine()), **run_recorded_transfer(out))
    print(f"wrote {path} ({machine()})")
