"""The one bundle of frozen models every stage takes, and its one loader.

    models = bundle.load("weights/")   # or bundle.load() for the embedded tiny models
    models.generator, models.parser, models.vgg, models.pca

A converted weights directory holds stylegan2/ (with pca.npz), bisenet/ and vgg16/, each read
strictly (models/weights.py); without one, the embedded default (models/embedded.py).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

from barbershop_jax.models import bisenet, embedded, stylegan2, vgg16

COMPUTE_DTYPES = ("float32", "bfloat16")


class Models(NamedTuple):
    """The frozen models the stages share (a pytree: replicated over devices)."""
    generator: object  # models.stylegan2.StyleGAN2
    parser: object     # models.bisenet.FaceParser (None where only the embedding runs)
    vgg: object        # models.vgg16.VGG16 with its LPIPS linear layers
    pca: dict          # the p-norm statistics of the generator (losses/p_norm.py)


def load(weights=None, dtype: str = "float32", parser_dtype: str = "float32", *, parser: bool = True) -> Models:
    """The models from a converted weights directory (stylegan2/, bisenet/, vgg16/), or the
    embedded default (tiny random models) when `weights` is None.

    dtype: the generator's and VGG16's compute dtype (with_dtype); parser_dtype: the face
    parser's, apart because its labels are the target masks themselves. parser=False: no face
    parser (the embedding alone needs none; its field is None)."""
    if weights is None:
        g = embedded.generator()
        models = Models(g, embedded.parser() if parser else None, embedded.vgg(), embedded.pca(g))
    else:
        models = Models(stylegan2.load(weights), bisenet.load(weights) if parser else None, vgg16.load(weights),
                        stylegan2.load_pca(weights))
    return models._replace(generator=with_dtype(models.generator, dtype), vgg=with_dtype(models.vgg, dtype),
                           parser=with_dtype(models.parser, parser_dtype) if parser else None)


def load_vgg(weights=None) -> vgg16.VGG16:
    """Only the VGG16 (LPIPS): from a converted weights directory, or the embedded default."""
    return embedded.vgg() if weights is None else vgg16.load(weights)


def with_dtype(model, dtype: str):
    """The generator or VGG16 computing its convolutions in `dtype`, or the face parser
    computing in it throughout: "float32" (the default, as the official code) or "bfloat16"
    (about 1.4x the speed of the embedding steps on an H100; its effect on quality is measured
    in benchmarks/README.md). Weights, latents, Adam and the losses' sums stay float32;
    results are cached apart from float32 ones."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    if model.config.dtype == dtype:
        return model
    return model.replace(config=dataclasses.replace(model.config, dtype=dtype))
