"""What every PyTorch -> Flax converter shares: a safe load and a strict key check."""
from __future__ import annotations

import argparse
import hashlib
import pickle
from pathlib import Path

import numpy as np

from barbershop_jax.pipeline.files.image_files import one_line, shown_path


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file and the reason."""


# The first bytes of what torch.save writes: a zip archive (PyTorch 1.6 on), or the pickle
# protocol marker of the legacy format (the lpips package's weights, among others).
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def torch_load(src) -> dict:
    """torch.load(src, weights_only=True) with one clear error per failure, naming the file.

    argparse.Namespace is allowed: rosinality's training checkpoints store their `args` as
    one, and it is a plain attribute bag. Anything else that needs code to unpickle is
    refused, so a malicious checkpoint never runs. A file that is no checkpoint at all (text,
    an image) is named as such from its first bytes, before torch reads it.
    """
    import torch

    src = Path(src)
    name = shown_path(src)
    if not src.is_file():
        raise ConversionError(f"{name}: no such file")
    try:
        with open(src, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ConversionError(f"{name}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise ConversionError(f"{name}: empty file")
    if not head.startswith(CHECKPOINT_MAGIC):
        raise ConversionError(f"{name}: not a PyTorch checkpoint (neither a zip archive nor a pickle; it begins "
                              f"with {head!r})")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):  # a pickle that the safe loader will not run
            raise ConversionError(f"{name}: refused: the file needs arbitrary code to unpickle "
                                  f"(only tensors, dicts and lists are loaded; {_unsafe_global(e)})") from None
        raise ConversionError(f"{name}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 (whatever torch raises on a damaged file, it is one line)
        raise ConversionError(f"{name}: not a readable PyTorch checkpoint, truncated or corrupt "
                              f"({_first_line(e)})") from None


def file_sha256(path) -> str:
    """The file's sha256 (hex): converted models record their checkpoint's in config.json."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return one_line(f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__)


def _unsafe_global(e) -> str:
    """The line of torch's refusal that names what the safe loader would not run."""
    for line in str(e).splitlines():
        if "Unsupported global" in line or "GLOBAL" in line or "Unsupported operand" in line:
            return one_line(line.strip()[:160])
    return "unsupported global"


def check_tensors(state, src, what: str) -> dict:
    """The state_dict `state` as it is, or a ConversionError naming the file and the first
    entries that are not tensors (lists, numbers, strings: a state_dict saved from something
    else), whose names are not strings, or that hold NaN or infinity."""
    import torch

    if not isinstance(state, dict):
        raise ConversionError(f"{shown_path(src)}: expected a {what} state_dict, found {type(state).__name__}")
    bad_keys = [repr(k) for k in state if not isinstance(k, str)]
    if bad_keys:
        raise ConversionError(f"{shown_path(src)}: not a {what} state_dict: non-string keys {_names(bad_keys)}")
    non_tensors = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ConversionError(f"{shown_path(src)}: not a {what} state_dict: non-tensor entries {_names(non_tensors)}")
    odd = [k for k, v in state.items() if v.is_complex() or (v.is_floating_point() and not torch.isfinite(v).all())]
    if odd:
        raise ConversionError(f"{shown_path(src)}: NaN, infinity or complex numbers in {_names(odd)}")
    return state


def check_keys(state: dict, expected: dict[str, tuple], src, what: str):
    """Raise a ConversionError naming missing, unexpected and mis-shaped keys."""
    problems = []
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing {_names(missing)}")
    if extra:
        problems.append(f"unexpected {_names(extra)}")
    for k, shape in expected.items():
        if k in state and tuple(state[k].shape) != tuple(shape):
            problems.append(f"{k} has shape {tuple(state[k].shape)}, expected {tuple(shape)}")
    if problems:
        raise ConversionError(f"{shown_path(src)}: not a {what} state_dict: " + "; ".join(problems))


def _names(keys, limit=8):
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()
