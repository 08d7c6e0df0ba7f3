"""The target segmentation mask (Barbershop models/Alignment.py, create_target_segmentation_mask).

From the face's labels (seg1) and the shape reference's labels (seg2), both at parse_size
(512), with hair, background and cloth as the label map names them (10, 0, 15 in seg.pth):

1. Merge (`merge_labels`, numpy): the face without its hair, the shape reference's hair on top
       target = hair where seg2 is hair, else seg1 with its hair set to background
   and the regions the face cannot fill: `uncovered` (the official OB_region) where seg2 shows
   a face part (not hair, background or cloth) but seg1 has background or hair.
2. Heuristic inpainting (`heuristic_target`, OpenCV): Navier-Stokes inpainting (radius 3) of
   the hair indicator, known only on target's background and hair pixels outside `uncovered`;
   inside `uncovered` the target becomes hair where the inpainted value truncates to 1
   (official: `.astype(uint8) * 10`), else background.
3. GAN inpainting (`gan_inpaint`, jitted, vmapped over pairs): two rounds of 80 Adam steps on
   w[0:6] from latent_avg (w[6:] fixed at latent_avg), minimising a segmentation loss of the
   render's labels against the target:
     'realistic': CE over the non-background target pixels + CE of background over the pixels
                  that `keep` (ggg: face labelled, or shape hair) leaves out;
     'fidelity':  plain CE.
   Round 1 fills `hair1 & ~hair2` (where the face's old hair goes away) with the GAN's labels;
   round 2 aims at that target with `uncovered` set to background, and takes the GAN's
   non-background labels inside `uncovered`. The labels used are those of each round's last
   forward pass (before the final update), as in the official loop.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax import alignment
from barbershop_jax.models.bisenet import LabelMap
from barbershop_jax.transfer_config import Models, TransferConfig

INPAINT_RADIUS = 3  # cv2.inpaint radius, official
ROUND_TAGS = (101, 102)  # noise-key tags of the two GAN rounds


class MergedLabels(NamedTuple):
    """The merge rule's maps for one pair, numpy (P, P)."""
    target: np.ndarray      # int32: the face without hair, the shape's hair on top
    uncovered: np.ndarray   # bool: OB_region
    keep: np.ndarray        # bool: ggg = face labelled (not background) or shape hair
    hair_face: np.ndarray   # bool
    hair_shape: np.ndarray  # bool


def _ids(labels: LabelMap):
    return labels.id("background"), labels.id("hair"), labels.id("cloth")


def merge_labels(face_labels, shape_labels, labels: LabelMap) -> MergedLabels:
    """Step 1, for one pair of (P, P) label maps."""
    bg, hair, cloth = _ids(labels)
    seg1 = np.asarray(face_labels).astype(np.int32)
    seg2 = np.asarray(shape_labels).astype(np.int32)
    hair1, hair2 = seg1 == hair, seg2 == hair
    keep = (seg1 != bg) | hair2
    seg1_bald = np.where(hair1, bg, seg1)
    uncovered = ~np.isin(seg2, (hair, bg, cloth)) & (seg1_bald == bg)
    target = np.where(hair2, hair, seg1_bald).astype(np.int32)
    return MergedLabels(target, uncovered, keep, hair1, hair2)


def heuristic_target(merged: MergedLabels, labels: LabelMap) -> np.ndarray:
    """Step 2: the merged target with `uncovered` filled by OpenCV's Navier-Stokes inpainting."""
    import cv2

    bg, hair, _ = _ids(labels)
    target = merged.target
    region = (~np.isin(target, (bg, hair))) | merged.uncovered
    known_hair = np.where(region, 0.0, target == hair).astype(np.float32)  # official: label / 10
    inpainted = cv2.inpaint(known_hair, region.astype(np.uint8) * 255, INPAINT_RADIUS, cv2.INPAINT_NS)
    filled = np.where(inpainted.astype(np.uint8) >= 1, hair, bg)  # .astype(uint8): truncation
    return np.where(merged.uncovered, filled, target).astype(np.int32)


class InpaintInputs(NamedTuple):
    """One pair's GAN-inpainting inputs (batched along axis 0), jnp."""
    target: jax.Array      # (P, P) int32: heuristic_target
    uncovered: jax.Array   # (P, P) bool
    keep: jax.Array        # (P, P) bool
    hair_face: jax.Array   # (P, P) bool
    hair_shape: jax.Array  # (P, P) bool
    key: jax.Array         # the pair's PRNG key


def prepare(face_labels, shape_labels, labels: LabelMap, key) -> InpaintInputs:
    """Steps 1 and 2 for one pair (host), as the inputs of `gan_inpaint` (unbatched)."""
    merged = merge_labels(face_labels, shape_labels, labels)
    return InpaintInputs(jnp.asarray(heuristic_target(merged, labels)), jnp.asarray(merged.uncovered),
                         jnp.asarray(merged.keep), jnp.asarray(merged.hair_face),
                         jnp.asarray(merged.hair_shape), key)


def round_targets(target, keep, tail, keys, sign: str, bg: int) -> alignment.SegmentationTarget:
    """The loss of a GAN-inpainting round, per pair (batched):
    'realistic': CE over the non-background target pixels + CE of background over ~keep;
    'fidelity': plain CE."""
    if sign == "fidelity":
        return jax.vmap(alignment.plain_ce_target)(tail, target, keys)
    return alignment.SegmentationTarget(tail, target, (target != bg).astype(jnp.float32),
                                        jnp.logical_not(keep).astype(jnp.float32),
                                        jnp.ones(target.shape[:1], bool), keys)


def _round(models, target, keep, keys, cfg, desc, progress, devices, checkpoint):
    g = models.generator
    latent_avg = g.mean_w_plus(target.shape[0])
    x = round_targets(target, keep, latent_avg, keys, cfg.sign, models.parser.labels.id("background"))
    _, labels = alignment.fit_segmentation(models, latent_avg[:, :cfg.align_latents], x, cfg.inpaint_steps, cfg,
                                           desc, progress=progress, devices=devices, checkpoint=checkpoint)
    return labels


@jax.jit
def _after_round1(inputs: InpaintInputs, generated, bg):
    freed = inputs.hair_face & ~inputs.hair_shape
    target = jnp.where(freed, generated, inputs.target)
    return target, jnp.where(inputs.uncovered, bg, target)


@jax.jit
def _after_round2(inputs: InpaintInputs, previous, generated, bg):
    return jnp.where(inputs.uncovered & (generated != bg), generated, previous)


def gan_inpaint(models: Models, inputs: InpaintInputs, cfg: TransferConfig, *, progress: bool = True,
                devices=None, checkpoint=None):
    """Step 3 on a batch of pairs. Returns the final target labels (B, P, P) int32.
    checkpoint: a resume.LoopCheckpoint for the batch (each round keeps its own below it)."""
    cfg.check_resolved()
    bg = models.parser.labels.id("background")
    keys = [jax.vmap(jax.random.fold_in, in_axes=(0, None))(inputs.key, tag) for tag in ROUND_TAGS]
    if cfg.inpaint_steps <= 0:
        return inputs.target
    generated = _round(models, inputs.target, inputs.keep, keys[0], cfg, "Target mask 1/2", progress, devices,
                       checkpoint and checkpoint.sub("round1"))
    previous, target = _after_round1(inputs, generated, bg)
    generated = _round(models, target, inputs.keep, keys[1], cfg, "Target mask 2/2", progress, devices,
                       checkpoint and checkpoint.sub("round2"))
    return _after_round2(inputs, previous, generated, bg)


# Colours of the official visualisation (utils/seg_utils.py vis_seg), by 16-class label id.
VIS_COLOURS_16 = np.array([
    [0, 0, 0], [102, 204, 255], [255, 204, 255], [255, 255, 153], [255, 255, 153], [255, 255, 102],
    [51, 255, 51], [0, 153, 255], [0, 255, 255], [0, 255, 255], [204, 102, 255], [0, 153, 255],
    [0, 255, 153], [0, 51, 0], [102, 153, 255], [255, 153, 102]], np.uint8)


@functools.lru_cache(maxsize=None)
def palette(n_classes: int) -> np.ndarray:
    """(n_classes, 3) uint8 colours: the official ones for 16 classes, distinct others beyond."""
    if n_classes <= len(VIS_COLOURS_16):
        return VIS_COLOURS_16[:n_classes]
    rng = np.random.default_rng(n_classes)
    extra = rng.integers(40, 256, (n_classes - len(VIS_COLOURS_16), 3)).astype(np.uint8)
    return np.concatenate([VIS_COLOURS_16, extra])


def colourise(target) -> np.ndarray:
    """Label map (P, P) -> RGB uint8, as the official vis_mask PNG (unknown labels black)."""
    target = np.asarray(target)
    colours = palette(int(max(16, target.max() + 1)))
    return colours[np.clip(target, 0, len(colours) - 1)]


# ----------------------------------------------------------------------------- editable masks
def save_label_png(path, labels, n_classes: int):
    """A label map (P, P) as an indexed PNG: pixel values are the class ids (read back exactly)
    and the palette shows them in the official colours."""
    from PIL import Image

    from barbershop_jax import image_io

    labels = np.asarray(labels)
    im = Image.fromarray(labels.astype(np.uint8), "P")
    im.putpalette(palette(max(n_classes, 16)).reshape(-1).tolist())
    return image_io.atomic_write(path, lambda f: im.save(f, format="PNG"))


def legend(label_map: LabelMap) -> dict:
    """{class id: {"name", "colour"}}: what the indexed PNG's values mean."""
    colours = palette(max(len(label_map.names), 16))
    return {str(i): {"name": name, "colour": colours[i].tolist()} for i, name in enumerate(label_map.names)}


def read_label_png(path, label_map: LabelMap, size: int) -> np.ndarray:
    """A target mask given by the user (an indexed PNG as save_label_png writes it, or an 8-bit
    grey PNG of class ids), checked: readable, size x size, only the checkpoint's classes."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"{path}: a {im.mode} image, not a label map (an indexed or grey PNG whose "
                                 "values are class ids, as --save-target-mask writes it)")
            labels = np.asarray(im).astype(np.int32)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such target mask") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    return check_target(labels, label_map, size, path)


def check_target(labels, label_map: LabelMap, size: int, what="target mask") -> np.ndarray:
    """A target mask as int32 (size, size), or a ValueError naming `what` and the problem."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape != (size, size):
        shape = f"{labels.shape[1]}x{labels.shape[0]}" if labels.ndim == 2 else f"shape {labels.shape}"
        raise ValueError(f"{what}: {shape}, but target masks are {size}x{size} (the parse size)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: class ids must be integers, got {labels.dtype}")
    unknown = sorted(set(np.unique(labels).tolist()) - set(range(len(label_map.names))))
    if unknown:
        raise ValueError(f"{what}: label value(s) {unknown[:5]} unknown to this parser ({len(label_map.names)} "
                         "classes)")
    return labels.astype(np.int32)


def move_region(labels, region_ids, background: int, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0):
    """The label map with the pixels of `region_ids` scaled about their centroid and moved by
    (dx, dy) pixels (nearest neighbour); where the region was and no longer is becomes
    `background`. Other labels stay where they are, under the moved region."""
    labels = np.asarray(labels)
    inside = np.isin(labels, region_ids)
    if not inside.any() or (scale == 1.0 and dx == 0 and dy == 0):
        return labels.copy()
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    ys, xs = np.nonzero(inside)
    cy, cx = ys.mean(), xs.mean()
    h, w = labels.shape
    yy, xx = np.mgrid[:h, :w]
    # Inverse map: output pixel -> source pixel of the region.
    sy = np.rint((yy - dy - cy) / scale + cy).astype(int)
    sx = np.rint((xx - dx - cx) / scale + cx).astype(int)
    valid = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
    source = np.where(valid, labels[np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1)], background)
    moved = valid & np.isin(source, region_ids)
    out = np.where(inside, background, labels)
    return np.where(moved, source, out).astype(labels.dtype)


def parse_shape_transform(text: str) -> tuple[float, float, float]:
    """'scale=1.1,dx=0,dy=-20' -> (scale, dx, dy); omitted ones keep 1, 0, 0."""
    values = {"scale": 1.0, "dx": 0.0, "dy": 0.0}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in values:
            raise ValueError(f"shape transform {text!r}: expected scale=S,dx=X,dy=Y (any of them)")
        try:
            values[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"shape transform {text!r}: {key.strip()} is not a number") from None
    if values["scale"] <= 0:
        raise ValueError(f"shape transform {text!r}: scale must be positive")
    return values["scale"], values["dx"], values["dy"]
