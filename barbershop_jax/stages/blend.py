"""Appearance blending (Barbershop models/Blending.py, blend_images), batched over triples.

For one triple (face = im1, shape = im2, colour = im3), with the FS latents s1, s3 and the
aligned F of (face, colour) and of (face, shape) from align.py (of the face aligned to the
structure reference, when one is given), for the transferred region R (TransferConfig.region;
"hair" below is R, the official's only region: every mask comes from R's labels):

- Masks at loss_size (256), each dilated or eroded blend_smooth (5, hard-coded) times:
  HM_1D, HM_3D: the face's and the colour reference's hair (parsed at blend_parse_size, i.e.
  the official's hard-coded factor 2), dilated; HM_3E: the colour reference's hair, eroded;
  HM_XD: the hair of the render of (s1, F_face_colour), parsed at parse_size, dilated.
  face region = (1 - HM_1D) (1 - HM_3D) (1 - HM_XD).
- u (n_latent, d) from 0; w = s1 + u (s3 - s1); render from F_face_colour; Adam (lr 0.01)
  then u projected onto [0, 1] (the official ClampOptimizer; optim.py), blend_steps (400) steps, minimising
      face_lambda * masked LPIPS(G, face)   on the face region
    + hair_lambda * masked LPIPS(G, colour) on HM_3E
  with G bicubic-downsampled to loss_size and the references LANCZOS-resized to it.
- Output: w of the last forward pass (before the final update) rendered from the F of
  (face, shape): the official Blend npz (latent_in = w, latent_F = that F) and the result.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from barbershop_jax.config import TransferConfig
from barbershop_jax.losses.lpips import masked_lpips
from barbershop_jax.models.bundle import Models
from barbershop_jax.ops import masks, resample
from barbershop_jax.stages import rehearsal
from barbershop_jax.stages import loop
from barbershop_jax.stages.optim import OptState, Optimizer

STEP_TAG, HAIR_X_TAG, RENDER_TAG = 301, 302, 303


class BlendInputs(NamedTuple):
    """One triple's blending inputs (batched along axis 0)."""
    s_face: jax.Array        # (n_latent, d): the face's FS latents (= Align latent_in)
    s_color: jax.Array       # (n_latent, d): the colour reference's FS latents
    f_blend: jax.Array       # (r, r, C): F aligned to the colour reference (Align face_color)
    f_final: jax.Array       # (r, r, C): F aligned to the shape reference (Align face_shape)
    face_small: jax.Array    # (L, L, 3) in [-1, 1]: the face, LANCZOS to loss_size
    color_small: jax.Array   # (L, L, 3): the colour reference likewise
    hair_face: jax.Array     # (Q, Q) float: the face's region (hair by default) at blend_parse_size
    hair_color: jax.Array    # (Q, Q) float: the colour reference's region
    key: jax.Array           # the triple's PRNG key
    region_classes: jax.Array  # (n_classes,) float: 1.0 at the region's classes (masks.class_mask)


class BlendResult(NamedTuple):
    latent_in: jax.Array     # (n_latent, d): the blended latents
    structure_f: jax.Array   # (r, r, C) = f_final
    image: jax.Array         # (size, size, 3): the result, about [-1, 1]
    face_mask: jax.Array     # (L, L): the region held to the face
    hair_mask: jax.Array     # (L, L): the region held to the colour reference (HM_3E: its R, eroded)


def optimizer(text: str = "adam") -> Optimizer:
    """The optimiser `text` on u (official: Adam), then u projected onto [0, 1]: the official
    ClampOptimizer."""
    return Optimizer(text, box=(0.0, 1.0))


def _mixed(u, s_face, s_color):
    return s_face + u * (s_color - s_face)


def _at_loss_size(mask, cfg):
    return resample.nearest_resize(mask[None], cfg.loss_size)[0]


@rehearsal.program(static_argnames=("cfg",))
def blend_masks(models: Models, inputs: BlendInputs, cfg: TransferConfig):
    """(face region, colour hair HM_3E), each (B, L, L)."""
    g, parser = models.generator, models.parser
    n = cfg.blend_smooth

    def one(x: BlendInputs):
        hm_1d = masks.dilate(_at_loss_size(x.hair_face, cfg), n)
        hair_3 = _at_loss_size(x.hair_color, cfg)
        hm_3d, hm_3e = masks.dilate(hair_3, n), masks.erode(hair_3, n)
        image = g.render_from_features(x.f_blend[None], x.s_face[None], block=cfg.fs_block, noise=cfg.noise,
                                       key=jax.random.fold_in(x.key, HAIR_X_TAG))
        labels = jnp.argmax(parser.segment_generated(image, parse_size=cfg.parse_size)[0], axis=-1)
        hm_xd = masks.dilate(_at_loss_size(masks.region_of(labels, x.region_classes), cfg), n)
        return (1.0 - hm_1d) * (1.0 - hm_3d) * (1.0 - hm_xd), hm_3e

    return jax.vmap(one)(inputs)


def _step(models: Models, state, data, i, cfg):
    x, face_mask, hair_mask = data
    g = models.generator
    factor = g.config.size // cfg.loss_size

    def loss_fn(u):
        w = _mixed(u, x.s_face, x.s_color)
        image = g.render_from_features(x.f_blend[None], w[None], block=cfg.fs_block, noise=cfg.noise,
                                       key=jax.random.fold_in(jax.random.fold_in(x.key, STEP_TAG), i))
        small = resample.bicubic_downsample(image, factor)
        face = masked_lpips(models.vgg, small, x.face_small[None], face_mask[None], guard_empty=cfg.guard_empty)[0]
        hair = masked_lpips(models.vgg, small, x.color_small[None], hair_mask[None], guard_empty=cfg.guard_empty)[0]
        loss = cfg.face_lambda * face + cfg.hair_lambda * hair
        return loss, {"loss": loss, "face": face, "hair": hair}

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    u, opt_state = optimizer(cfg.blend_optimizer).apply(grads, state.opt_state, state.params)
    return OptState(u, opt_state, state.params), metrics


@rehearsal.program(static_argnames=("cfg",))
def _final_render(models: Models, u, inputs: BlendInputs, cfg):
    g = models.generator

    def one(u, x: BlendInputs):
        w = _mixed(u, x.s_face, x.s_color)
        image = g.render_from_features(x.f_final[None], w[None], block=cfg.fs_block, noise=cfg.noise,
                                       key=jax.random.fold_in(x.key, RENDER_TAG))[0]
        return w, image

    return jax.vmap(one)(u, inputs)


def blend(models: Models, inputs: BlendInputs, cfg: TransferConfig, *, hook=None) -> BlendResult:
    """Blend a batch of triples; every array in `inputs` has a leading batch axis.
    hook: the pipeline's stages.loop.LoopHook for the batch, or None."""
    cfg.check_resolved()
    # The helpers around the loop are keyed like the step: on the fields they read.
    face_mask, hair_mask = blend_masks(models, inputs, cfg=cfg.step_config(keep=("blend_smooth",)))
    u_optimizer = optimizer(cfg.blend_optimizer)
    state = u_optimizer.start(jnp.zeros_like(inputs.s_face), cfg.learning_rate, total_steps=cfg.blend_steps)
    state, _ = loop.run(_step, cfg, models, state, (inputs, face_mask, hair_mask), cfg.blend_steps,
                        loop=loop.Loop("Blend", rule=u_optimizer.rule), hook=hook)
    latent_in, image = _final_render(models, state.result, inputs, cfg=cfg.step_config())
    return BlendResult(latent_in, inputs.f_final, image, face_mask, hair_mask)
