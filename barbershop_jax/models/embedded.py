"""The embedded default: tiny models with fixed random weights, so that the whole pipeline
runs on a CPU in minutes with nothing downloaded. Random weights give no real hairstyle: real
results need the official weights (`barbershop-jax weights download`)."""
from __future__ import annotations

import jax

from barbershop_jax.models import pca as pca_lib
from barbershop_jax.models import bisenet, stylegan2, vgg16

EMBEDDED_SEED = 20211119  # fixed: the embedded weights are the same on every machine
PCA_SAMPLES = 20_000      # the p-norm statistics of the tiny generator (official: 1e6 for ffhq.pt)


def generator() -> stylegan2.StyleGAN2:
    """The embedded default generator (64 px, see stylegan2.tiny_config)."""
    return stylegan2.init(stylegan2.tiny_config(), jax.random.PRNGKey(EMBEDDED_SEED))


def vgg() -> vgg16.VGG16:
    """The embedded default VGG16 (LPIPS, style loss): fixed random weights."""
    return vgg16.init(vgg16.VGG16Config(), jax.random.PRNGKey(EMBEDDED_SEED + 1))


def pca(g: stylegan2.StyleGAN2) -> dict:
    """p-norm statistics of the embedded generator."""
    return pca_lib.pca_stats(g, PCA_SAMPLES, jax.random.PRNGKey(EMBEDDED_SEED + 2))


def parser() -> bisenet.FaceParser:
    """The embedded default face parser: BiSeNet (16 classes) with fixed random weights."""
    return bisenet.init(bisenet.BiSeNetConfig(), jax.random.PRNGKey(EMBEDDED_SEED + 3))
