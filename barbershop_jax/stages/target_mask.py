"""The target segmentation mask (Barbershop models/Alignment.py, create_target_segmentation_mask).

From the face's labels (seg1) and the shape reference's labels (seg2), both at parse_size
(512), for the transferred region R (TransferConfig.region: hair by default, or any label
names, e.g. brows, eyes, lips), with background and cloth as the label map names them:

1. Merge (`merge_labels`, numpy): the face without its R, the shape reference's R on top
       target = seg2 where seg2 is in R, else seg1 with its R removed (below)
   and the regions the face cannot fill: `uncovered` (the official OB_region) where seg2 shows
   a face part (not R, background or cloth) but seg1 without R has background.
   The official choices here are hair-specific; the general rule, class by class, tells
   regions on the head's outline (hair and hat: OUTLINE_REGIONS) from the others:
     - removed (`remove_region`), an outline class becomes background, as the official does
       for hair: what lies beneath it is unknown and the inpainting below decides it. Any
       other class (brows, eyes, lips, nose, ears, ...) takes the label of the nearest face
       pixel outside R: a region inside the face lies on skin (or on whatever surrounds it),
       and background in the middle of a face would make alignment paint a hole there.
     - `uncovered` may include the face's background only when R has an outline class (hair
       can widen the head: the official OB_region); otherwise only pixels of the face's own R
       (where its nearest surroundings are background), so that a lips or eyes transfer
       leaves every label outside the face's and the shape's R as it was.
   `freed` marks the pixels R leaves (in seg1, not in seg2) that the removal left as
   background: the ones whose label is unknown (for hair, all of hair1 & ~hair2).
2. Heuristic inpainting (`heuristic_target`, OpenCV): Navier-Stokes inpainting (radius 3) of
   the R indicator, known only on target's background and R pixels outside `uncovered`;
   inside `uncovered` the target becomes R (the class of the nearest R pixel: hair for hair)
   where the inpainted value truncates to 1 (official: `.astype(uint8) * 10`), else background.
3. GAN inpainting (`gan_inpaint`, jitted, vmapped over pairs): two rounds of 80 Adam steps on
   w[0:6] from latent_avg (w[6:] fixed at latent_avg), minimising a segmentation loss of the
   render's labels against the target:
     'realistic': CE over the non-background target pixels + CE of background over the pixels
                  that `keep` (ggg: face labelled, or shape R) leaves out;
     'fidelity':  plain CE.
   Round 1 fills `freed` with the GAN's labels; round 2 aims at that target with `uncovered`
   set to background, and takes the GAN's non-background labels inside `uncovered`. The
   labels used are those of each round's last forward pass (before the final update), as in
   the official loop.
With R = hair every step is the official one (the NamedTuples keep the official's hair_*
names for R's masks).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax.config import DEFAULT_REGION, TransferConfig, check_numbers, shown
from barbershop_jax.models.bisenet import LabelMap
from barbershop_jax.models.bundle import Models
from barbershop_jax.stages import rehearsal
from barbershop_jax.stages import align as alignment
from barbershop_jax.stages import loop

INPAINT_RADIUS = 3  # cv2.inpaint radius, official
ROUND_TAGS = (101, 102)  # noise-key tags of the two GAN rounds
OUTLINE_REGIONS = ("hair", "hat")  # removed, they become background (the official's rule for hair)


class MergedLabels(NamedTuple):
    """The merge rule's maps for one pair, numpy (P, P)."""
    target: np.ndarray      # int32: the face without R, the shape's R on top
    uncovered: np.ndarray   # bool: OB_region
    keep: np.ndarray        # bool: ggg = face labelled (not background) or shape R
    hair_face: np.ndarray   # bool: R in the face (the official's hair1)
    hair_shape: np.ndarray  # bool: R in the shape reference (hair2)
    freed: np.ndarray       # bool: R of the face that neither the shape's R nor the removal fills


def _nearest_outside(inside: np.ndarray) -> tuple:
    """For every pixel, the (row, col) of the nearest pixel where `inside` is False."""
    from scipy import ndimage

    _, (rows, cols) = ndimage.distance_transform_edt(inside, return_indices=True)
    return rows, cols


def _outline_ids(label_map: LabelMap) -> tuple:
    return label_map.ids(*(name for name in OUTLINE_REGIONS if name in label_map.names))


def remove_region(labels, region, label_map: LabelMap) -> np.ndarray:
    """`labels` (P, P) without the classes `region` (ids): hair and hat pixels become
    background, the others the label of the nearest pixel outside `region` (module docstring)."""
    labels = np.asarray(labels).astype(np.int32)
    inside = np.isin(labels, region)
    bg = label_map.id("background")
    outline = np.isin(labels, _outline_ids(label_map))
    out = np.where(inside & outline, bg, labels)
    interior = inside & ~outline
    if interior.any():
        if inside.all():
            return np.full_like(labels, bg)
        rows, cols = _nearest_outside(inside)
        out = np.where(interior, labels[rows, cols], out)
    return out.astype(np.int32)


def merge_labels(face_labels, shape_labels, labels: LabelMap, region=None) -> MergedLabels:
    """Step 1, for one pair of (P, P) label maps. region: class ids of R (default: hair)."""
    region = labels.region_ids(DEFAULT_REGION) if region is None else tuple(region)
    bg, cloth = labels.id("background"), labels.id("cloth")
    seg1 = np.asarray(face_labels).astype(np.int32)
    seg2 = np.asarray(shape_labels).astype(np.int32)
    region1, region2 = np.isin(seg1, region), np.isin(seg2, region)
    keep = (seg1 != bg) | region2
    seg1_without = remove_region(seg1, region, labels)
    reach = region1 | (seg1 == bg) if set(region) & set(_outline_ids(labels)) else region1
    uncovered = ~np.isin(seg2, (*region, bg, cloth)) & (seg1_without == bg) & reach
    target = np.where(region2, seg2, seg1_without).astype(np.int32)
    freed = region1 & ~region2 & (seg1_without == bg)
    return MergedLabels(target, uncovered, keep, region1, region2, freed)


def heuristic_target(merged: MergedLabels, labels: LabelMap, region=None) -> np.ndarray:
    """Step 2: the merged target with `uncovered` filled by OpenCV's Navier-Stokes inpainting
    of the R indicator (R: class ids, default hair)."""
    import cv2

    region = labels.region_ids(DEFAULT_REGION) if region is None else tuple(region)
    bg = labels.id("background")
    target = merged.target
    in_region = np.isin(target, region)
    inpaint_mask = (~np.isin(target, (bg, *region))) | merged.uncovered
    known = np.where(inpaint_mask, 0.0, in_region).astype(np.float32)  # official: label / 10
    inpainted = cv2.inpaint(known, inpaint_mask.astype(np.uint8) * 255, INPAINT_RADIUS, cv2.INPAINT_NS)
    if len(region) == 1 or not in_region.any():
        region_label = np.full_like(target, region[0])
    else:  # R of several classes: the class of the nearest R pixel
        rows, cols = _nearest_outside(~in_region)
        region_label = target[rows, cols]
    filled = np.where(inpainted.astype(np.uint8) >= 1, region_label, bg)  # .astype(uint8): truncation
    return np.where(merged.uncovered, filled, target).astype(np.int32)


class InpaintInputs(NamedTuple):
    """One pair's GAN-inpainting inputs (batched along axis 0), jnp."""
    target: jax.Array      # (P, P) int32: heuristic_target
    uncovered: jax.Array   # (P, P) bool
    keep: jax.Array        # (P, P) bool
    freed: jax.Array       # (P, P) bool: MergedLabels.freed (round 1 fills it)
    key: jax.Array         # the pair's PRNG key


def prepare(face_labels, shape_labels, labels: LabelMap, key, region=None) -> InpaintInputs:
    """Steps 1 and 2 for one pair (host), as the inputs of `gan_inpaint` (unbatched).
    region: class ids of R (default: hair)."""
    merged = merge_labels(face_labels, shape_labels, labels, region)
    return InpaintInputs(jnp.asarray(heuristic_target(merged, labels, region)), jnp.asarray(merged.uncovered),
                         jnp.asarray(merged.keep), jnp.asarray(merged.freed), key)


def round_targets(target, keep, tail, keys, sign: str, bg: int) -> alignment.SegmentationTarget:
    """The loss of a GAN-inpainting round, per pair (batched):
    'realistic': CE over the non-background target pixels + CE of background over ~keep;
    'fidelity': plain CE."""
    if sign == "fidelity":
        return jax.vmap(alignment.plain_ce_target)(tail, target, keys)
    return alignment.SegmentationTarget(tail, target, (target != bg).astype(jnp.float32),
                                        jnp.logical_not(keep).astype(jnp.float32),
                                        jnp.ones(target.shape[:1], bool), keys)


def _round(models, target, keep, keys, cfg, which: loop.Loop, hook):
    g = models.generator
    latent_avg = g.mean_w_plus(target.shape[0])
    x = round_targets(target, keep, latent_avg, keys, cfg.sign, models.parser.labels.id("background"))
    _, labels = alignment.fit_segmentation(models, latent_avg[:, :cfg.align_latents], x, cfg.inpaint_steps,
                                           cfg.for_inpainting(), which, hook=hook)
    return labels


@rehearsal.program
def _after_round1(inputs: InpaintInputs, generated, bg):
    target = jnp.where(inputs.freed, generated, inputs.target)
    return target, jnp.where(inputs.uncovered, bg, target)


@rehearsal.program
def _after_round2(inputs: InpaintInputs, previous, generated, bg):
    return jnp.where(inputs.uncovered & (generated != bg), generated, previous)


def gan_inpaint(models: Models, inputs: InpaintInputs, cfg: TransferConfig, *, hook=None):
    """Step 3 on a batch of pairs. Returns the final target labels (B, P, P) int32.
    hook: the pipeline's stages.loop.LoopHook for the batch (the rounds are its parts
    "round1" and "round2"), or None."""
    cfg.check_resolved()
    bg = models.parser.labels.id("background")
    keys = [jax.vmap(jax.random.fold_in, in_axes=(0, None))(inputs.key, tag) for tag in ROUND_TAGS]
    if cfg.inpaint_steps <= 0:
        return inputs.target
    generated = _round(models, inputs.target, inputs.keep, keys[0], cfg, loop.Loop("Target mask 1/2", "round1"),
                       hook)
    previous, target = _after_round1(inputs, generated, bg)
    generated = _round(models, target, inputs.keep, keys[1], cfg, loop.Loop("Target mask 2/2", "round2"), hook)
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
def legend(label_map: LabelMap) -> dict:
    """{class id: {"name", "colour"}}: what the indexed PNG's values mean."""
    colours = palette(max(len(label_map.names), 16))
    return {str(i): {"name": name, "colour": colours[i].tolist()} for i, name in enumerate(label_map.names)}


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
    return check_shape_transform(tuple(values.values()), f"shape transform {text!r}")


def check_shape_transform(values, what: str = "shape_transform") -> tuple[float, float, float]:
    """(scale, dx, dy) as floats, or a ValueError naming `what` unless there are three numbers,
    each finite and within its LIMITS entry (scale above 0)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != 3:
        raise ValueError(f"{what}: expected (scale, dx, dy), got {shown(values)}")
    check_numbers(what, **dict(zip(("scale", "dx", "dy"), values)))
    return tuple(float(v) for v in values)
