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
