"""What every PyTorch -> Flax converter shares: a safe load and a strict key check."""
from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path

import numpy as np


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file and the reason."""


def torch_load(src) -> dict:
    """torch.load(src, weights_only=True) with one clear error per failure.

    argparse.Namespace is allowed: rosinality's training checkpoints store their `args` as
    one, and it is a plain attribute bag. Anything else that needs code to unpickle is
    refused, so a malicious checkpoint never runs.
    """
    import torch

    src = Path(src)
    if not src.is_file():
        raise ConversionError(f"{src}: no such file")
    if src.stat().st_size == 0:
        raise ConversionError(f"{src}: empty file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e):
            raise ConversionError(f"{src}: refused: the file needs arbitrary code to unpickle "
                                  f"(only tensors, dicts and lists are loaded; {_unsafe_global(e)})") from None
        raise ConversionError(f"{src}: not a readable PyTorch checkpoint ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConversionError(f"{src}: not a readable PyTorch checkpoint, truncated or corrupt ({first})") from None


def _unsafe_global(e) -> str:
    for line in str(e).splitlines():
        if "Unsupported global" in line or "GLOBAL" in line:
            return line.strip()[:160]
    return "unsupported global"


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
        raise ConversionError(f"{src}: not a {what} state_dict: " + "; ".join(problems))


def _names(keys, limit=8):
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()
