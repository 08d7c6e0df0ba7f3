"""`barbershop-jax demo`: the whole pipeline on the bundled example images, with the embedded
tiny models (models/embedded.py: fixed random weights) so that it runs on a CPU in minutes
with nothing downloaded, or with converted weights. Random weights give no real hairstyle:
real results need the official weights (`barbershop-jax weights download`)."""
from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np

from barbershop_jax.config import DEFAULT_BATCH_SIZE
from barbershop_jax.models import embedded, stylegan2
from barbershop_jax.models.weights_folder import GET_WEIGHTS
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.store.layout import Layout

@functools.partial(jax.jit, static_argnames=("n",))
def render_samples(model: stylegan2.StyleGAN2, n: int, seed, truncation=1.0):
    """n images from z ~ N(0, 1) with per-call random noise; (n, size, size, 3) in [-1, 1]."""
    k_z, k_noise = jax.random.split(jax.random.PRNGKey(seed))
    z = jax.random.normal(k_z, (n, model.config.style_dim))
    w = model.latent_avg + truncation * (model.map(z) - model.latent_avg)
    return model.render(model.w_plus_from_w(w), noise="random", key=k_noise)


def run(out_dir, n: int = 16, seed: int = 0, weights=None, truncation: float = 1.0, log=print) -> Path:
    """`barbershop-jax demo`: render a grid of samples to OUT/samples.png."""
    model = stylegan2.load(weights) if weights else embedded.generator()
    images = image_io.to_uint8(render_samples(model, n, seed, truncation))
    cols = int(n ** 0.5 + 0.999)
    path = image_io.save_png(Path(out_dir) / "samples.png", image_io.grid(images, cols))
    which = f"weights {weights}" if weights else "the embedded random-weight generator"
    log(f"wrote {path}: {n} samples, {model.config.size} px, from {which}")
    return path


EXAMPLES = Path(__file__).parent.parent / "data" / "examples"  # barbershop_jax/data/examples
# Step counts of the demo with the embedded models: about a tenth of the official counts, so
# that it runs in a few minutes on 2 CPU cores. With converted weights the official counts apply.
DEMO_STEPS = {"w_steps": 100, "fs_steps": 25, "inpaint_steps": 8, "align_steps1": 14, "align_steps2": 10,
              "blend_steps": 40}
# The way to a real transfer: the download (GET_WEIGHTS) fills the default weights folder, which
# every command then uses without --weights.
OFFICIAL_COMMAND = ("barbershop-jax transfer --align --paste-back --face PHOTO.jpg --shape SHAPE.jpg "
                    "--color COLOR.jpg --out OUT_DIR")


def example_images() -> dict:
    """The bundled example images: {'photo', 'face', 'shape', 'color': path}. The photo is an
    ordinary (not cropped) photo, with its landmarks in photo.landmarks.json beside it."""
    return {"photo": EXAMPLES / "photo.jpg", **{role: EXAMPLES / f"{role}.png" for role in ("face", "shape", "color")}}


def run_transfer(out_dir, weights=None, seed: int = 0, progress: bool = True, log=print, steps=None,
                 batch_size: int = DEFAULT_BATCH_SIZE, fresh: bool = False) -> Path:
    """`barbershop-jax demo`: the whole way on the bundled images: the ordinary photo is
    cropped (FFHQ crop), given the hair of the shape and colour references, and the result is
    pasted back into the photo. Writes the results (the official layout under OUT, the crop in
    OUT/aligned/, the photo with the result in it as ..._pasted.png) and OUT/demo_grid.png:
    photo | face crop | shape | colour | result | target mask | result pasted into the photo.
    `steps`: step-count options (default: DEMO_STEPS for the embedded models, official ones
    with `weights`). fresh: redo the embeddings, alignments and blends an earlier demo left in
    OUT (by default they are reused, and a note says which)."""
    from barbershop_jax.ops import resample
    from barbershop_jax.pipeline import hair_transfer
    from barbershop_jax.pipeline.store import batch_files
    from barbershop_jax.pipeline.faces import crop as face_crop
    from barbershop_jax.pipeline.files.sources import as_source
    from barbershop_jax.pipeline.runtime.settings import RunSettings

    steps = ({} if weights else DEMO_STEPS) if steps is None else steps
    ht = hair_transfer.HairTransfer(weights, out_dir, run=RunSettings(batch_size=batch_size, progress=progress),
                                    fresh=fresh, seed=seed, **steps)
    size = ht.models.generator.config.size
    images = example_images()
    if not weights:
        log(f"barbershop-jax demo: the embedded {size} px models with fixed RANDOM weights and reduced step counts "
            f"({', '.join(f'{k} {v}' for k, v in steps.items())}).\nThey exercise the whole pipeline; random "
            "weights give no real hairstyle.")
    face = face_crop.FaceCropper(size=size).crop_one(images["photo"], Layout(out_dir).crops_dir())
    log(f"aligned {images['photo'].name} (landmarks from {images['photo'].stem}.landmarks.json) -> {face.crop_path}")
    # The references are 128 px crops: fit them to the generator once, here, rather than warn per stage.
    refs = [resample.lanczos_resize(image_io.load_rgb(images[r]), size) for r in ("shape", "color")]
    result = ht.transfer(face.crop_path, as_source(refs[0], "shape"), as_source(refs[1], "color"), paste_back=True)
    photo = image_io.load_rgb(images["photo"])
    grid_path = image_io.save_png(Path(out_dir) / "demo_grid.png", demo_sheet(
        photo, face.crop, refs, result, ht.models.parser.labels, size, weights, steps))
    log(batch_files.summary([result], ht.timings, reuse=ht.reuse))
    note = ht.reuse.note(out_dir)
    if note:
        log(f"note: {note}")
    log(f"wrote {result.path}, {result.pasted_path} and {grid_path} (photo | face crop | shape | colour | result | "
        "target mask | result pasted into the photo, each titled)")
    if not weights:
        log(f"For a real transfer, get the official weights ({GET_WEIGHTS}) and run:\n  " + OFFICIAL_COMMAND)
    return grid_path


SHEET_PANEL = 256  # px per panel of demo_grid.png (the embedded models' 64 px images scaled up)


def demo_sheet(photo, crop, refs, result, label_map, size: int, weights, steps) -> np.ndarray:
    """demo_grid.png: the inputs, the result, its target mask (with a legend of the classes
    in it) and the pasted photo, each titled, and a line saying which weights made them."""
    from barbershop_jax.pipeline.files import contact_sheet
    from barbershop_jax.stages import target_mask

    panels = [("photo", photo), (f"face crop ({size} px)", crop), ("shape reference", refs[0]),
              ("colour reference", refs[1]), ("result", result.image),
              ("target mask", target_mask.colourise(result.target_labels), True),
              ("pasted into the photo", result.pasted)]
    if weights:
        notes = [f"weights: {weights}"]
    else:
        notes = [f"weights: the embedded {size} px models with RANDOM weights and reduced steps "
                 f"({', '.join(f'{k} {v}' for k, v in steps.items())}): they exercise the pipeline; no real hairstyle.",
                 f"For a real transfer: get the official weights ({GET_WEIGHTS}) and run " + OFFICIAL_COMMAND]
    return contact_sheet.titled_row(panels, SHEET_PANEL, title="barbershop-jax demo: the face of the photo with the "
                                    "hair shape of one reference and the hair colour of another", notes=notes,
                                    legend=contact_sheet.legend_entries(result.target_labels, label_map),
                                    legend_title="target mask classes:")
