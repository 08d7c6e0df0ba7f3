"""Weights directories: one folder per model, written atomically, read strictly.

Layout of a weights root (what `barbershop-jax convert ... DST_DIR` fills):

    DST_DIR/stylegan2/config.json   {"model": "stylegan2", "config": {...}, "format": 1, ...}
    DST_DIR/stylegan2/arrays/       orbax PyTree checkpoint of the frozen arrays
    DST_DIR/stylegan2/pca.npz       extra arrays beside them (no pickle)

A model folder appears whole or not at all: it is written under a temporary name beside its
final place and renamed into place at the end.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
ARRAYS_DIR = "arrays"


def model_dir(path, model: str) -> Path:
    """`path` itself if it holds a `model` config, else `path/model`; errors name the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: weights directory does not exist")
    for candidate in (path, path / model):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no {model} weights here (expected {path / model / CONFIG_FILE}); "
                            f"convert them with `barbershop-jax convert {model} SRC {path}`")


def read_config(root: Path, model: str) -> dict:
    file = root / CONFIG_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{file}: unreadable config ({e})") from None
    if meta.get("model") != model:
        raise ValueError(f"{file}: holds a {meta.get('model')!r} model, not {model!r}")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{file}: format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
    return meta


def open_model(path, model: str, config_cls):
    """(folder, config) of a converted model: finds the folder, reads config.json, and builds
    `config_cls` from it; unknown or invalid fields are named in a ValueError."""
    root = model_dir(path, model)
    meta = read_config(root, model)
    unknown = set(meta["config"]) - {f.name for f in dataclasses.fields(config_cls)}
    if unknown:
        raise ValueError(f"{root / CONFIG_FILE}: unknown {model} config fields {sorted(unknown)}")
    try:
        return root, config_cls(**meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{root / CONFIG_FILE}: invalid {model} config ({e})") from None


def _shape_diff(got: dict, expected: dict) -> list[str]:
    """Names of missing, unexpected and mis-shaped entries between two flat trees."""
    problems = []
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        problems.append("missing " + ", ".join("/".join(k) for k in missing))
    if extra:
        problems.append("unexpected " + ", ".join("/".join(k) for k in extra))
    for k in sorted(set(got) & set(expected)):
        if tuple(got[k].shape) != tuple(expected[k].shape):
            problems.append(f"{'/'.join(k)} has shape {tuple(got[k].shape)}, expected {tuple(expected[k].shape)}")
    return problems


def check_tree(got, expected, where: str):
    """Raise a ValueError naming every difference between two trees' keys and shapes."""
    problems = _shape_diff(traverse_util.flatten_dict(got), traverse_util.flatten_dict(expected))
    if problems:
        raise ValueError(f"{where}: arrays do not match the config: " + "; ".join(problems))


def restore_strict(root: Path, expected) -> dict:
    """Read the orbax arrays of a model folder and check them against `expected` shapes."""
    import orbax.checkpoint as ocp

    arrays = (root / ARRAYS_DIR).absolute()
    if not arrays.is_dir():
        raise FileNotFoundError(f"{arrays}: missing arrays folder (interrupted or partial copy?)")
    try:
        tree = ocp.PyTreeCheckpointer().restore(arrays)
    except Exception as e:  # orbax raises many types for damaged files
        raise ValueError(f"{arrays}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    check_tree(tree, expected, str(root))
    return tree


def save_model_dir(dst_root, model: str, config: dict, tree, extra_meta: dict | None = None,
                   npz_files: dict | None = None, overwrite: bool = False) -> Path:
    """Write `dst_root/model/` atomically: config.json, orbax arrays, optional npz files."""
    import orbax.checkpoint as ocp

    dst_root = Path(dst_root)
    final = dst_root / model
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: already exists (pass --overwrite to replace it)")
    dst_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model}.tmp-", dir=dst_root))
    try:
        host_tree = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), tree)
        ocp.PyTreeCheckpointer().save((tmp / ARRAYS_DIR).absolute(), host_tree)
        for name, arrays in (npz_files or {}).items():
            np.savez(tmp / name, **{k: np.asarray(v) for k, v in arrays.items()})
        meta = {"model": model, "format": FORMAT_VERSION, "config": config, **(extra_meta or {})}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            old = final.with_name(f".{model}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
