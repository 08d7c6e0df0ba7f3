"""Alignment and structure transfer (Barbershop models/Alignment.py, align_images), batched.

For one pair (face = im1, reference = im2: the shape reference, or the structure reference
when one is given, or the colour reference in the second alignment) and the target labels
from target_mask.py (built from the face and the shape reference), for the transferred region
R (TransferConfig.region; "hair" below is R, the official's only region):

- Step 1 (align_steps1 = 140): optimise w[0:6] of the face, starting from its W+ code, with
  w[6:] from its FS code; loss ce_lambda * CE(parse(G(w)), target). A1 = F of the last
  iterate's latents (the features after block 3, 32x32 at 1024 px).
- Step 2 (align_steps2 = 100): the same from the reference's W+ and FS codes, plus
  style_lambda (4e4) * the Gram style loss between the hair of the reference's first render
  (before any step) and the hair of the current render, both at loss_size (256), the masks
  from the argmax labels of each. A2 = F of the last iterate's latents. Step 2 aligns the
  reference's latents, so the reference gives the structure (F) inside R.
- F mixing (`mix_structure`) on F's grid, masks at loss_size, dilated or eroded `smooth` times,
  resized to the grid with PyTorch's bicubic (unclamped weights):
      F = A1 + (1 - dilate(hair1 | hair_t)) * (F1 - A1)
      F = A2 + (1 - erode(hair_t))          * (F  - A2)   (align_more_region: the first mask)
      F = F2 + (1 - erode(hair2 & hair_t))  * (F  - F2)
  with F1, F2 the FS codes' F and hair_t the target's hair. Every mask here is R's, from the
  labels the official reads hair from (the fields keep the official's hair_* names).
- Output: latent_in = the face's FS latents (unchanged), latent_F = the mixed F, and the
  render of both (the official Align PNG).

As everywhere, the iterate kept is the one of the last forward pass (before the final update).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from barbershop_jax.config import TransferConfig
from barbershop_jax.losses import segmentation
from barbershop_jax.losses.style import style_loss
from barbershop_jax.models.bundle import Models
from barbershop_jax.ops import masks, resample
from barbershop_jax.stages import rehearsal
from barbershop_jax.stages import loop
from barbershop_jax.stages.optim import Optimizer, OptState

# Noise-key tags: each render draws fresh noise (official), from the pair's key and a tag.
STEP1_TAG, STEP2_TAG, A1_TAG, A2_TAG, REF_TAG, RENDER_TAG = 201, 202, 203, 204, 205, 206


class AlignInputs(NamedTuple):
    """One pair's alignment inputs (batched along axis 0)."""
    w_face: jax.Array       # (n_latent, d): the face's W+ code
    s_face: jax.Array       # (n_latent, d): the face's FS latents
    f_face: jax.Array       # (r, r, C): the face's F
    w_ref: jax.Array
    s_ref: jax.Array
    f_ref: jax.Array
    target: jax.Array       # (P, P) int32: target labels (target_mask.py)
    hair_face: jax.Array    # (P, P) float: the region (hair by default) of the face's parse
    hair_ref: jax.Array     # (P, P) float: the region of the reference's parse
    key: jax.Array          # the pair's PRNG key
    region_classes: jax.Array  # (n_classes,) float: 1.0 at the region's classes (masks.class_mask)


class AlignResult(NamedTuple):
    latent_in: jax.Array    # (n_latent, d) = s_face
    structure_f: jax.Array  # (r, r, C): the mixed F
    image: jax.Array        # (size, size, 3): render of both, about [-1, 1]


def _latents(head, s_code):
    return jnp.concatenate([head, s_code[head.shape[0]:]])


def _region(logits, classes):
    """The transferred region (a masks.class_mask) of a render's argmax labels, (P, P) float."""
    return masks.region_of(jnp.argmax(logits, axis=-1), classes)


class SegmentationTarget(NamedTuple):
    """What `segmentation_step` fits one render's labels to (batched along axis 0).

    loss = ce_lambda * (sum(target_weight * nll(target)) / sum(target_weight)
                        + [use_background] sum(background_weight * nll(bg)) / sum(background_weight))
    Plain CE (align step 1, 'fidelity' inpainting): target_weight 1, no background term.
    'realistic' inpainting: target_weight = (target != bg), background_weight = ~keep (ggg).
    """
    tail: jax.Array               # (n_latent, d): the latents after the optimised head
    target: jax.Array             # (P, P) int32
    target_weight: jax.Array      # (P, P) float
    background_weight: jax.Array  # (P, P) float
    use_background: jax.Array     # () bool
    key: jax.Array                # the stage's PRNG key (fold_in(step) per render)


def segmentation_loss(logits, x: SegmentationTarget, bg: int, cfg: TransferConfig):
    nll = segmentation.nll(logits, x.target)
    loss = segmentation.weighted_mean(nll, x.target_weight, cfg.guard_empty)
    nll_bg = segmentation.nll(logits, jnp.full(x.target.shape, bg, jnp.int32))
    weight_bg = jnp.where(x.use_background, x.background_weight, 1.0)  # no 0/0 on the unused branch
    background = segmentation.weighted_mean(nll_bg, weight_bg, cfg.guard_empty)
    return cfg.ce_lambda * (loss + jnp.where(x.use_background, background, 0.0))


def segmentation_step(models: Models, state, x: SegmentationTarget, i, cfg):
    """One Adam step on w[0:align_latents] towards the target labels: align step 1 and both
    rounds of the target mask's GAN inpainting share it (and its compilation)."""
    g, parser = models.generator, models.parser

    def loss_fn(head):
        image = g.render(_latents(head, x.tail)[None], noise=cfg.noise, key=jax.random.fold_in(x.key, i))
        logits = parser.segment_generated(image, parse_size=cfg.parse_size)[0]
        loss = segmentation_loss(logits, x, parser.labels.id("background"), cfg)
        return loss, jnp.argmax(logits, axis=-1).astype(jnp.int32)

    (loss, labels), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = Optimizer(cfg.align_optimizer).apply(grads, state.opt_state, state.params)
    # The result: (params, labels) of the last forward pass.
    return OptState(params, opt_state, (state.params, labels)), {"loss": loss}


def fit_segmentation(models: Models, heads, targets: SegmentationTarget, n_steps, cfg, which: loop.Loop, *,
                     hook=None):
    """Run `segmentation_step` on a batch. Returns (heads, labels) of the last forward pass."""
    labels = jnp.zeros_like(targets.target)
    optimizer = Optimizer(cfg.align_optimizer)
    state = optimizer.start(heads, cfg.learning_rate, (heads, labels), n_steps)
    which = which._replace(rule=optimizer.rule)
    state, _ = loop.run(segmentation_step, cfg, models, state, targets, n_steps, loop=which, hook=hook)
    return state.result


def _step2(models: Models, state, data, i, cfg):
    s_ref, target, ref_small, ref_region, key, region_classes = data
    g, parser = models.generator, models.parser
    factor = g.config.size // cfg.loss_size

    def loss_fn(head):
        image = g.render(_latents(head, s_ref)[None], noise=cfg.noise,
                         key=jax.random.fold_in(jax.random.fold_in(key, STEP2_TAG), i))
        logits = parser.segment_generated(image, parse_size=cfg.parse_size)[0]
        ce = cfg.ce_lambda * segmentation.cross_entropy(logits, target)
        region = _region(logits, region_classes)
        region = jax.lax.stop_gradient(resample.nearest_resize(region[None], cfg.loss_size))
        small = resample.bicubic_downsample(image, factor)
        style = cfg.style_lambda * style_loss(models.vgg, ref_small[None], small, ref_region[None], region,
                                              size=cfg.loss_size)[0]
        return ce + style, {"loss": ce + style, "ce": ce, "style": style}

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = Optimizer(cfg.align_optimizer).apply(grads, state.opt_state, state.params)
    return OptState(params, opt_state, state.params), metrics


def _tagged(keys, tag):
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, tag)


@rehearsal.program(static_argnames=("cfg",))
def _between_steps(models: Models, heads1, inputs: AlignInputs, cfg):
    """A1 (F of step 1's last latents) and the fixed side of step 2's style loss: the
    reference's render before step 2 (I_Structure_Style_changed) at loss_size and its region."""
    g, parser = models.generator, models.parser

    def one(head1, x: AlignInputs):
        a1 = g.features(_latents(head1, x.s_face)[None], block=cfg.fs_block, noise=cfg.noise,
                        key=jax.random.fold_in(x.key, A1_TAG))[0][0]
        image = g.render(_latents(x.w_ref[:cfg.align_latents], x.s_ref)[None], noise=cfg.noise,
                         key=jax.random.fold_in(x.key, REF_TAG))
        logits = parser.segment_generated(image, parse_size=cfg.parse_size)[0]
        region = _region(logits, x.region_classes)
        small = resample.bicubic_downsample(image, g.config.size // cfg.loss_size)[0]
        return a1, small, resample.nearest_resize(region[None], cfg.loss_size)[0]

    return jax.vmap(one)(heads1, inputs)


def _mask_weights(mask, cfg, grid: int, grow: bool, iterations: int):
    """(P, P) mask -> (grid, grid, 1) mixing weight: nearest to loss_size, dilate or erode,
    PyTorch bicubic to the grid."""
    mask = resample.nearest_resize(mask[None], cfg.loss_size)[0]
    mask = masks.dilate(mask, iterations) if grow else masks.erode(mask, iterations)
    return masks.torch_bicubic_resize(mask, grid)[..., None]


def mix_structure(a1, a2, f_face, f_ref, region_face, region_ref, region_target, cfg: TransferConfig):
    """The F mixing of one pair (module docstring). F arrays (r, r, C), masks (P, P) in {0, 1}:
    the transferred region in the face, the reference and the target."""
    grid = a1.shape[0]
    union = 1.0 - (1.0 - region_face) * (1.0 - region_target)
    low = 1.0 - _mask_weights(union, cfg, grid, True, cfg.smooth)
    mixed = a1 + low * (f_face - a1)
    if not cfg.align_more_region:
        low = 1.0 - _mask_weights(region_target, cfg, grid, False, cfg.smooth)
    mixed = a2 + low * (mixed - a2)
    low = 1.0 - _mask_weights(region_ref * region_target, cfg, grid, False, cfg.smooth)
    return f_ref + low * (mixed - f_ref)


@rehearsal.program(static_argnames=("cfg",))
def _finish(models: Models, a1, heads2, inputs: AlignInputs, cfg):
    """A2 (F of step 2's last latents), the F mixing, and the render of the result."""
    g = models.generator

    def one(a1, head2, x: AlignInputs):
        a2 = g.features(_latents(head2, x.s_ref)[None], block=cfg.fs_block, noise=cfg.noise,
                        key=jax.random.fold_in(x.key, A2_TAG))[0][0]
        region_t = masks.region_of(x.target, x.region_classes)
        f = mix_structure(a1, a2, x.f_face, x.f_ref, x.hair_face, x.hair_ref, region_t, cfg)
        image = g.render_from_features(f[None], x.s_face[None], block=cfg.fs_block, noise=cfg.noise,
                                       key=jax.random.fold_in(x.key, RENDER_TAG))[0]
        return f, image

    return jax.vmap(one)(a1, heads2, inputs)


def plain_ce_target(tail, target, key) -> SegmentationTarget:
    """Per image: the unweighted cross-entropy of align step 1 (and 'fidelity' inpainting)."""
    ones = jnp.ones(target.shape, jnp.float32)
    return SegmentationTarget(tail, target, ones, ones, jnp.zeros((), bool), key)


def align(models: Models, inputs: AlignInputs, cfg: TransferConfig, *, hook=None) -> AlignResult:
    """Align a batch of pairs; every array in `inputs` has a leading batch axis.
    hook: the pipeline's stages.loop.LoopHook for the batch (its two loops are parts "step1"
    and "step2"), or None."""
    cfg.check_resolved()
    step1 = jax.vmap(plain_ce_target)(inputs.s_face, inputs.target, _tagged(inputs.key, STEP1_TAG))
    heads1, _ = fit_segmentation(models, inputs.w_face[:, :cfg.align_latents], step1, cfg.align_steps1, cfg,
                                 loop.Loop("Align step 1", "step1"), hook=hook)
    # The helpers around the loops are keyed like the steps: on the fields they read.
    a1, ref_small, ref_hair = _between_steps(models, heads1, inputs, cfg=cfg.step_config())
    head2 = inputs.w_ref[:, :cfg.align_latents]
    optimizer = Optimizer(cfg.align_optimizer)
    start2 = optimizer.start(head2, cfg.learning_rate, total_steps=cfg.align_steps2)
    state, _ = loop.run(_step2, cfg, models, start2,
                        (inputs.s_ref, inputs.target, ref_small, ref_hair, inputs.key, inputs.region_classes),
                        cfg.align_steps2, loop=loop.Loop("Align step 2", "step2", optimizer.rule), hook=hook)
    structure_f, image = _finish(models, a1, state.result, inputs,
                                 cfg=cfg.step_config(keep=("smooth", "align_more_region")))
    return AlignResult(inputs.s_face, structure_f, image)
