"""W+ and FS embedding (Barbershop models/Embedding.py), batched: pure stage functions.

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

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from barbershop_jax import compile_cache, optimize, resample
from barbershop_jax.losses import lpips as lpips_loss
from barbershop_jax.losses.p_norm import p_norm_loss


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """Embedding hyperparameters; defaults are the official command-line defaults."""
    w_steps: int = 1100            # W+ Adam steps (W_steps)
    fs_steps: int = 250            # FS Adam steps (FS_steps)
    learning_rate: float = 0.01    # Adam learning rate (lr_embedding)
    l2_lambda: float = 1.0         # weight of the full-size MSE
    percept_lambda: float = 1.0    # weight of the LPIPS term
    p_norm_lambda: float = 0.001   # weight of the p-norm latent regulariser
    l_f_lambda: float = 0.0        # weight of mean((F - F_init)^2); official declares 0.1, applies 0
    lpips_size: int = 256          # LPIPS resolution (generated image bicubic-downsampled to it)
    fs_block: int = 3              # F = features after this block (3: 32x32 at any size)
    noise: str = "random"          # "random" (official), "const" or "none"
    seed: int = 0                  # root of the per-image noise keys
    chunk: int | None = None       # steps per compiled scan (None: optimize.loop_defaults)

    def __post_init__(self):
        optimize.check_counts("EmbedConfig", w_steps=self.w_steps, fs_steps=self.fs_steps, fs_block=self.fs_block)
        if self.chunk is not None:
            optimize.check_counts("EmbedConfig", 1, chunk=self.chunk)
        if not self.learning_rate > 0:
            raise ValueError(f"EmbedConfig: learning_rate must be above 0, got {self.learning_rate!r}")
        for name in ("l2_lambda", "percept_lambda", "p_norm_lambda", "l_f_lambda"):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ValueError(f"EmbedConfig: {name} must be at least 0, got {getattr(self, name)!r}")

    def step_config(self) -> "EmbedConfig":
        """The fields the optimisation steps read; the rest blanked (optimize.run's compile key)."""
        return dataclasses.replace(self, w_steps=0, fs_steps=0, seed=0, chunk=None)

    def s_index(self, n_latent: int) -> int:
        """First optimised S vector: n_latent - 11 as the official code (7 at 1024 px); the ones
        before first_latent(fs_block + 1) are optimised but only the p-norm sees them."""
        return max(0, n_latent - 11)


class Targets(NamedTuple):
    """One image's targets, batched along axis 0."""
    full: jax.Array    # (S, S, 3) in [-1, 1] at the generator's size (ref_im_H)
    small: jax.Array   # (lpips_size, lpips_size, 3) in [-1, 1], PIL LANCZOS (ref_im_L)
    key: jax.Array     # PRNG key of the image (optimize.image_key)


class Consts(NamedTuple):
    generator: object  # StyleGAN2
    vgg: object        # VGG16 with LPIPS lins
    pca: dict          # p-norm statistics


class AdamState(NamedTuple):
    params: object
    opt_state: object
    result: object     # what the official loop saves (see the module docstring)


def _optimizer(cfg):
    return optax.adam(cfg.learning_rate)  # torch.optim.Adam defaults: b1 .9, b2 .999, eps 1e-8


def _adam_state(params, cfg):
    return AdamState(params, jax.vmap(_optimizer(cfg).init)(params), params)


@compile_cache.jit
def target_units(vgg, small):
    """The targets' LPIPS features, computed once per stage rather than at every step."""
    return lpips_loss.unit_features(vgg, small)  # {tap: (B, h, w, C)}: batched like the targets


def _image_losses(consts, image, targets, units, w_plus, cfg):
    g = consts.generator
    l2 = jnp.mean(jnp.square(image - targets.full))
    small = resample.bicubic_downsample(image[None], g.config.size // cfg.lpips_size)
    percept = lpips_loss.lpips_to_features(consts.vgg, small, jax.tree.map(lambda u: u[None], units))[0]
    p_norm = p_norm_loss(w_plus, consts.pca)
    loss = cfg.l2_lambda * l2 + cfg.percept_lambda * percept + cfg.p_norm_lambda * p_norm
    return loss, {"loss": loss, "l2": l2, "lpips": percept, "p_norm": p_norm}


# ----------------------------------------------------------------------------- W+
def _w_plus_step(consts, state, data, i, cfg):
    targets, units = data

    def loss_fn(w_plus):
        key = jax.random.fold_in(targets.key, i)
        image = consts.generator.render(w_plus[None], noise=cfg.noise, key=key)[0]
        return _image_losses(consts, image, targets, units, w_plus, cfg)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = _optimizer(cfg).update(grads, state.opt_state, state.params)
    return AdamState(optax.apply_updates(state.params, updates), opt_state, state.params), metrics


def embed_w_plus(consts: Consts, targets: Targets, cfg: EmbedConfig = EmbedConfig(), *,
                 progress=True, devices=None, checkpoint=None):
    """W+ embedding of a batch. Returns (w_plus (B, n_latent, style_dim), last-step metrics)."""
    _check(consts, targets, cfg)
    n = targets.full.shape[0]
    w_plus = consts.generator.mean_w_plus(n)
    state = _adam_state(w_plus, cfg)
    data = (targets, target_units(consts.vgg, targets.small))
    state, metrics = optimize.run(_w_plus_step, cfg, consts, state, data, cfg.w_steps,
                                  chunk=cfg.chunk, desc="W+ embedding", progress=progress, devices=devices,
                                  checkpoint=checkpoint)
    return state.result, metrics


# ----------------------------------------------------------------------------- FS
class FSParams(NamedTuple):
    s_code: jax.Array       # (n_latent - s_index, style_dim): the optimised latents
    structure_f: jax.Array  # (r, r, C): F


def _fs_latents(frozen, s_code):
    return jnp.concatenate([frozen, s_code], axis=0)


def _fs_step(consts, state, data, i, cfg):
    targets, units, frozen, f_init = data
    g = consts.generator

    def loss_fn(params):
        key = jax.random.fold_in(targets.key, i)
        w_plus = _fs_latents(frozen, params.s_code)
        image = g.render_from_features(params.structure_f[None], w_plus[None], block=cfg.fs_block,
                                       noise=cfg.noise, key=key)[0]
        loss, metrics = _image_losses(consts, image, targets, units, w_plus, cfg)
        if cfg.l_f_lambda:
            l_f = jnp.mean(jnp.square(params.structure_f - f_init))
            loss = loss + cfg.l_f_lambda * l_f
            metrics = {**metrics, "loss": loss, "l_f": l_f}
        return loss, metrics

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = _optimizer(cfg).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Official: S saved from before the last update, F from after it.
    result = FSParams(state.params.s_code, params.structure_f)
    return AdamState(params, opt_state, result), metrics


@compile_cache.jit(static_argnames="cfg")
def _f_init(consts, w_plus, targets, cfg):
    """F from the W+ result, per image: the official computes it with one more fresh noise draw."""
    def one(w, key):
        key = jax.random.fold_in(key, 2**31 - 1)  # a step number the loops never reach
        return consts.generator.features(w[None], block=cfg.fs_block, noise=cfg.noise, key=key)[0][0]
    return jax.vmap(one)(w_plus, targets.key)


def embed_fs(consts: Consts, targets: Targets, w_plus, cfg: EmbedConfig = EmbedConfig(), *,
             progress=True, devices=None, checkpoint=None):
    """FS embedding of a batch from its W+ codes.

    Returns:
      (latent_in (B, n_latent, style_dim): the frozen W+ head with the optimised S,
       structure_f (B, r, r, C), last-step metrics).
    """
    _check(consts, targets, cfg)
    g = consts.generator
    s_index = cfg.s_index(g.config.n_latent)
    f_init = _f_init(consts, w_plus, targets, cfg=cfg.step_config())  # step counts: no recompile
    params = FSParams(w_plus[:, s_index:], f_init)
    state = _adam_state(params, cfg)
    data = (targets, target_units(consts.vgg, targets.small), w_plus[:, :s_index], f_init)
    state, metrics = optimize.run(_fs_step, cfg, consts, state, data, cfg.fs_steps,
                                  chunk=cfg.chunk, desc="FS embedding", progress=progress, devices=devices,
                                  checkpoint=checkpoint)
    latent_in = jnp.concatenate([w_plus[:, :s_index], state.result.s_code], axis=1)
    return latent_in, state.result.structure_f, metrics


def _check(consts, targets, cfg):
    size = consts.generator.config.size
    if targets.full.shape[1:3] != (size, size):
        raise ValueError(f"targets are {targets.full.shape[1]}x{targets.full.shape[2]}, the generator renders {size}x{size}")
    if size % cfg.lpips_size:
        raise ValueError(f"lpips_size {cfg.lpips_size} does not divide the generator size {size}")
    if targets.small.shape[1:3] != (cfg.lpips_size, cfg.lpips_size):
        raise ValueError(f"LPIPS targets are {targets.small.shape[1:3]}, expected {cfg.lpips_size}")
