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
import math
import os
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
ARRAYS_DIR = "arrays"

# What np.load of a damaged .npy or .npz can raise: besides OSError and ValueError, the errors
# of the zip and zlib modules under it (a truncated or altered archive), EOFError (an empty
# file), KeyError (a missing member) and MemoryError (a damaged header that claims a huge shape).
ARRAY_FILE_ERRORS = (OSError, ValueError, KeyError, EOFError, MemoryError, NotImplementedError, struct.error,
                     zipfile.BadZipFile, zlib.error)


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
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{file}: not a model config (an object with a \"config\" object expected)")
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
    for field in dataclasses.fields(config_cls):
        if field.name in meta["config"] and not _fits(meta["config"][field.name], field.default):
            raise ValueError(f"{root / CONFIG_FILE}: invalid {model} config ({field.name} is "
                             f"{meta['config'][field.name]!r}, not a value like {field.default!r})")
    try:
        return root, config_cls(**meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{root / CONFIG_FILE}: invalid {model} config ({e})") from None


def _fits(value, default) -> bool:
    """Whether a config value has the kind of its field's default: a positive integer for the
    integer fields (sizes and counts), a finite number, a string, a list of positive integers.
    A value of another kind would fail deep in the model's construction, not naming the file."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v > 0
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return count(value)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and all(count(v) for v in value)
    return True  # None and other defaults: the config class checks them


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
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_closed_loop(previous_hook)
    try:
        tree = ocp.PyTreeCheckpointer().restore(arrays)
    except Exception as e:  # orbax raises many types for damaged files
        # The filter stays: the reads still pending end later, each reporting the closed loop.
        raise ValueError(f"{arrays}: unreadable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    sys.unraisablehook = previous_hook
    check_tree(tree, expected, str(root))
    check_finite(tree, str(arrays))
    return tree


def _quiet_closed_loop(previous):
    """An unraisable-exception hook that drops the "Event loop is closed" errors of a failed
    orbax restore and passes every other one to `previous`. When one array of a checkpoint does
    not read, orbax's event loop closes while tensorstore's other reads are in flight; each
    of them then reports the closed loop as a traceback, after the error that names the file."""
    def hook(unraisable):
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            previous(unraisable)
    return hook


def check_finite(tree, where: str):
    """Raise a ValueError naming the first array of `tree` that holds NaN or infinity."""
    for path, leaf in traverse_util.flatten_dict(tree).items():
        if not np.isfinite(np.asarray(leaf)).all():
            raise ValueError(f"{where}: {'/'.join(map(str, path))} holds NaN or infinity (damaged weights?)")


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
