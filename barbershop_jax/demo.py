"""The embedded default: a tiny generator with fixed random weights, so the whole program
runs on a CPU in seconds with nothing downloaded. Real results need the converted official
weights (README: "Real weights")."""
from __future__ import annotations

import functools
from pathlib import Path

import jax

from barbershop_jax import image_io
from barbershop_jax.models import stylegan2

EMBEDDED_SEED = 20211119  # fixed: the embedded weights are the same on every machine


def embedded_generator() -> stylegan2.StyleGAN2:
    """The embedded default generator (64 px, see stylegan2.tiny_config)."""
    return stylegan2.init(stylegan2.tiny_config(), jax.random.PRNGKey(EMBEDDED_SEED))


def embedded_consts():
    """The embedded default for the stages: the tiny generator, a VGG16 with fixed random
    weights (LPIPS) and p-norm statistics of the generator (20,000 samples)."""
    from barbershop_jax.embedding import Consts
    from barbershop_jax.losses import p_norm

    g = embedded_generator()
    pca = p_norm.pca_stats(g, 20_000, jax.random.PRNGKey(EMBEDDED_SEED + 2))
    return Consts(g, embedded_vgg(), pca)


def embedded_parser():
    """The embedded default face parser: BiSeNet (16 classes) with fixed random weights."""
    from barbershop_jax.models import bisenet
    return bisenet.init(bisenet.BiSeNetConfig(), jax.random.PRNGKey(EMBEDDED_SEED + 3))


def embedded_vgg():
    """The embedded default VGG16 (LPIPS, style loss): fixed random weights."""
    from barbershop_jax.models import vgg16
    return vgg16.init(vgg16.VGG16Config(), jax.random.PRNGKey(EMBEDDED_SEED + 1))


@functools.partial(jax.jit, static_argnames=("n",))
def render_samples(model: stylegan2.StyleGAN2, n: int, seed, truncation=1.0):
    """n images from z ~ N(0, 1) with per-call random noise; (n, size, size, 3) in [-1, 1]."""
    k_z, k_noise = jax.random.split(jax.random.PRNGKey(seed))
    z = jax.random.normal(k_z, (n, model.config.style_dim))
    w = model.latent_avg + truncation * (model.map(z) - model.latent_avg)
    return model.render(model.w_plus_from_w(w), noise="random", key=k_noise)


def run(out_dir, n: int = 16, seed: int = 0, weights=None, truncation: float = 1.0, log=print) -> Path:
    """`barbershop-jax demo`: render a grid of samples to OUT/samples.png."""
    model = stylegan2.load(weights) if weights else embedded_generator()
    images = image_io.to_uint8(render_samples(model, n, seed, truncation))
    cols = int(n ** 0.5 + 0.999)
    path = image_io.save_png(Path(out_dir) / "samples.png", image_io.grid(images, cols))
    which = f"weights {weights}" if weights else "the embedded random-weight generator"
    log(f"wrote {path}: {n} samples, {model.config.size} px, from {which}")
    return path
