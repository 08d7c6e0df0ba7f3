"""W+ and FS embedding (Barbershop models/Embedding.py), batched: pure stage functions of
arrays and configs (pipeline/embed.py reads the images and writes the results).

Both stages minimise, per image, with Adam (lr 0.01):

    loss = l2_lambda * mean((G - I)^2)                          at the generator's size
         + percept_lambda * LPIPS(bicubic_down(G), LANCZOS(I))  at lpips_size (256)
         + p_norm_lambda * p_norm(W+)                           (losses/p_norm.py)

W+ stage: all n_latent vectors, from latent_avg, w_steps (1100) steps.
FS stage: F (the features after block `fs_block` = 3, 32x32x512 at 1024 px) initialised from
the W+ result, and the S vectors from index n_latent - 11 on; fs_steps (250) steps; the image is
rendered from F with the latents after it (the official FS render, RGB skip dropped).

Official quirks kept (SPEC.md section 7): the saved W+ and S are the values from before the
final Adam update (the official loops capture the latent in the last iteration before
`step()`); F is the value after it. Noise is a fresh N(0, 1) draw at every step (official),
from a key derived from the seed, the image's content and the step, so runs are reproducible
and an image gets the same noise in any batch. The official declares an `l_F` term
(l_F_lambda 0.1) and never applies it: here it is `l_f_lambda`, 0 by default.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from barbershop_jax.config import EmbedConfig
from barbershop_jax.losses import lpips as lpips_loss
from barbershop_jax.losses.p_norm import p_norm_loss
from barbershop_jax.models.bundle import Models
from barbershop_jax.ops import resample
from barbershop_jax.stages import rehearsal
from barbershop_jax.stages import loop
from barbershop_jax.stages.optim import Optimizer, OptState


class Targets(NamedTuple):
    """One image's targets, batched along axis 0."""
    full: jax.Array    # (S, S, 3) in [-1, 1] at the generator's size (ref_im_H)
    small: jax.Array   # (lpips_size, lpips_size, 3) in [-1, 1], PIL LANCZOS (ref_im_L)
    key: jax.Array     # PRNG key of the image (loop.image_key)


@rehearsal.program
def target_units(vgg, small):
    """The targets' LPIPS features, computed once per stage rather than at every step."""
    return lpips_loss.unit_features(vgg, small)  # {tap: (B, h, w, C)}: batched like the targets


def _image_losses(models, image, targets, units, w_plus, cfg):
    g = models.generator
    l2 = jnp.mean(jnp.square(image - targets.full))
    small = resample.bicubic_downsample(image[None], g.config.size // cfg.lpips_size)
    percept = lpips_loss.lpips_to_features(models.vgg, small, jax.tree.map(lambda u: u[None], units))[0]
    p_norm = p_norm_loss(w_plus, models.pca)
    loss = cfg.l2_lambda * l2 + cfg.percept_lambda * percept + cfg.p_norm_lambda * p_norm
    return loss, {"loss": loss, "l2": l2, "lpips": percept, "p_norm": p_norm}


# ----------------------------------------------------------------------------- W+
def _w_plus_step(models, state, data, i, cfg):
    targets, units = data

    def loss_fn(w_plus):
        key = jax.random.fold_in(targets.key, i)
        image = models.generator.render(w_plus[None], noise=cfg.noise, key=key)[0]
        return _image_losses(models, image, targets, units, w_plus, cfg)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = Optimizer(cfg.w_optimizer).apply(grads, state.opt_state, state.params)
    return OptState(params, opt_state, state.params), metrics


def embed_w_plus(models: Models, targets: Targets, cfg: EmbedConfig = EmbedConfig(), *, hook=None):
    """W+ embedding of a batch. Returns (w_plus (B, n_latent, style_dim), last-step metrics).
    hook: the pipeline's stages.loop.LoopHook (progress, checkpoints), or None."""
    _check(models, targets, cfg)
    n = targets.full.shape[0]
    w_plus = models.generator.mean_w_plus(n)
    optimizer = Optimizer(cfg.w_optimizer)
    state = optimizer.start(w_plus, cfg.learning_rate, total_steps=cfg.w_steps)
    data = (targets, target_units(models.vgg, targets.small))
    state, metrics = loop.run(_w_plus_step, cfg, models, state, data, cfg.w_steps,
                              loop=loop.Loop("W+ embedding", rule=optimizer.rule), hook=hook)
    return state.result, metrics


# ----------------------------------------------------------------------------- FS
class FSParams(NamedTuple):
    s_code: jax.Array       # (n_latent - s_index, style_dim): the optimised latents
    structure_f: jax.Array  # (r, r, C): F


def _fs_latents(frozen, s_code):
    return jnp.concatenate([frozen, s_code], axis=0)


def _fs_step(models, state, data, i, cfg):
    targets, units, frozen, f_init = data
    g = models.generator

    def loss_fn(params):
        key = jax.random.fold_in(targets.key, i)
        w_plus = _fs_latents(frozen, params.s_code)
        image = g.render_from_features(params.structure_f[None], w_plus[None], block=cfg.fs_block,
                                       noise=cfg.noise, key=key)[0]
        loss, metrics = _image_losses(models, image, targets, units, w_plus, cfg)
        if cfg.l_f_lambda:
            l_f = jnp.mean(jnp.square(params.structure_f - f_init))
            loss = loss + cfg.l_f_lambda * l_f
            metrics = {**metrics, "loss": loss, "l_f": l_f}
        return loss, metrics

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = Optimizer(cfg.fs_optimizer).apply(grads, state.opt_state, state.params)
    # Official: S saved from before the last update, F from after it.
    result = FSParams(state.params.s_code, params.structure_f)
    return OptState(params, opt_state, result), metrics


@rehearsal.program(static_argnames="cfg")
def _f_init(models, w_plus, targets, cfg):
    """F from the W+ result, per image: the official computes it with one more fresh noise draw."""
    def one(w, key):
        key = jax.random.fold_in(key, 2**31 - 1)  # a step number the loops never reach
        return models.generator.features(w[None], block=cfg.fs_block, noise=cfg.noise, key=key)[0][0]
    return jax.vmap(one)(w_plus, targets.key)


def embed_fs(models: Models, targets: Targets, w_plus, cfg: EmbedConfig = EmbedConfig(), *, hook=None):
    """FS embedding of a batch from its W+ codes.

    Returns:
      (latent_in (B, n_latent, style_dim): the frozen W+ head with the optimised S,
       structure_f (B, r, r, C), last-step metrics).
    """
    _check(models, targets, cfg)
    g = models.generator
    s_index = cfg.s_index(g.config.n_latent)
    f_init = _f_init(models, w_plus, targets, cfg=cfg.step_config())  # step counts: no recompile
    params = FSParams(w_plus[:, s_index:], f_init)
    optimizer = Optimizer(cfg.fs_optimizer)
    state = optimizer.start(params, cfg.learning_rate, total_steps=cfg.fs_steps)
    data = (targets, target_units(models.vgg, targets.small), w_plus[:, :s_index], f_init)
    state, metrics = loop.run(_fs_step, cfg, models, state, data, cfg.fs_steps,
                              loop=loop.Loop("FS embedding", rule=optimizer.rule), hook=hook)
    latent_in = jnp.concatenate([w_plus[:, :s_index], state.result.s_code], axis=1)
    return latent_in, state.result.structure_f, metrics


def _check(models, targets, cfg):
    size = models.generator.config.size
    if targets.full.shape[1:3] != (size, size):
        raise ValueError(f"targets are {targets.full.shape[1]}x{targets.full.shape[2]}, the generator renders {size}x{size}")
    if size % cfg.lpips_size:
        raise ValueError(f"lpips_size {cfg.lpips_size} does not divide the generator size {size}")
    if targets.small.shape[1:3] != (cfg.lpips_size, cfg.lpips_size):
        raise ValueError(f"LPIPS targets are {targets.small.shape[1:3]}, expected {cfg.lpips_size}")


@rehearsal.program(static_argnames=("noise", "block"))
def render_saved(g, latents, structure_f, keys, step, noise, block):
    """Each image rendered with the noise its loop drew at `step` (per image): the official
    saves the render of its last iteration. W+ when structure_f is None, else FS."""
    def one(w, f, k):
        key = jax.random.fold_in(k, step)
        if f is None:
            return g.render(w[None], noise=noise, key=key)[0]
        return g.render_from_features(f[None], w[None], block=block, noise=noise, key=key)[0]

    return jax.vmap(one, in_axes=(0, None if structure_f is None else 0, 0))(latents, structure_f, keys)


def w_plus_render(models: Models, w_plus, keys, cfg: EmbedConfig):
    """The official W+ PNG: the saved W+ rendered with the noise of its last step."""
    return render_saved(models.generator, w_plus, None, keys, cfg.w_steps - 1, cfg.noise, cfg.fs_block)


def fs_render(models: Models, latent_in, structure_f, keys, cfg: EmbedConfig):
    """The FS PNG. The official one is rendered from the F before the last update; only the F
    after it is kept, so this render uses that one (a one-step difference)."""
    return render_saved(models.generator, latent_in, structure_f, keys, cfg.fs_steps - 1, cfg.noise, cfg.fs_block)
