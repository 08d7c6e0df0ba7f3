"""Which weights a run uses: the folder given, else the default weights folder where it holds
converted weights, else the embedded tiny models.

The default folder is `$BARBERSHOP_JAX_WEIGHTS`, else `weights/` in the user's cache folder
(platformdirs: ~/.cache/barbershop-jax/weights on Linux). `barbershop-jax weights download`
fills it; every command, the web page and `HairTransfer()` use it when no weights are named.
`embedded` names the embedded tiny models where a default folder exists.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "BARBERSHOP_JAX_WEIGHTS"
EMBEDDED = "embedded"  # --weights embedded: the tiny models even where converted weights exist
MODELS = ("stylegan2", "bisenet", "vgg16")  # the folders a converted weights folder holds
GET_WEIGHTS = "barbershop-jax weights download"  # the command that fills the default folder


class _NotNamed:
    """No weights named (the command line without --weights, `HairTransfer()`): the default
    folder where it holds converted weights, else the embedded models. Distinct from None,
    which names the embedded models in the Python API, as it always has."""
    def __repr__(self):
        return "weights_folder.FIND"


FIND = _NotNamed()


def default_folder() -> Path:
    """`$BARBERSHOP_JAX_WEIGHTS`, else the user's cache folder's `weights/` (which may not exist)."""
    setting = os.environ.get(ENV, "").strip()
    if setting:
        return Path(setting).expanduser()
    import platformdirs
    return platformdirs.user_cache_path("barbershop-jax", appauthor=False) / "weights"


def missing_models(folder) -> list[str]:
    """The models (of MODELS) that `folder` does not hold converted (no config.json of theirs)."""
    return [model for model in MODELS if not (Path(folder) / model / "config.json").is_file()]


def holds_weights(folder) -> bool:
    """Whether `folder` holds the three converted models (each with its config.json)."""
    return not missing_models(folder)


def find() -> Path | None:
    """The default folder where it holds converted weights, else None (the embedded models)."""
    folder = default_folder()
    return folder if holds_weights(folder) else None


def resolve(weights) -> Path | None:
    """The weights folder a run uses (None: the embedded tiny models). `weights` FIND: the
    default folder where it holds converted weights; None or "embedded": the embedded models;
    anything else: that folder, which the loaders then read strictly (their errors name it)."""
    if weights is FIND:
        return find()
    if weights is None or str(weights) == EMBEDDED:
        return None
    return Path(weights)


def resolution(folder) -> int | None:
    """The generator's output size recorded in a converted folder's config, or None."""
    try:
        meta = json.loads((Path(folder) / "stylegan2" / "config.json").read_text())
        return int(meta["config"]["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def describe(weights) -> str:
    """One line saying which weights a run uses (`weights`: what resolve() returned)."""
    if weights is None:
        folder = default_folder()
        return (f"weights: the embedded tiny models (fixed random weights: no real hairstyle); no converted weights "
                f"in {folder}: get the official ones with `{GET_WEIGHTS}`")
    size = resolution(weights)
    where = " (the default folder)" if Path(weights) == default_folder() else ""
    return f"weights: {weights}{where}" + (f", StyleGAN2 at {size} px" if size else "")
