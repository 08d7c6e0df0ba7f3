"""torchvision VGG16 state_dict + LPIPS v0.1 linear weights -> barbershop-jax weights directory.

The backbone is torchvision's `vgg16` state_dict (ImageNet weights, e.g. vgg16-397923af.pth):
`features.{0,2,5,...,28}.{weight,bias}`; the `classifier.*` entries, if present, are not used
and are skipped. The LPIPS linear layers (`lin{0..4}.model.1.weight`, (1, C, 1, 1)) come from
the `lpips` package's shipped `weights/v0.1/vgg.pth` (found without importing the package,
whose import pulls in torchvision) or from a given file. Both are read with
torch.load(weights_only=True); the lpips file is a legacy (non-zip) torch pickle, which the
weights-only loader reads too. The OIHW -> HWIO transposes happen here and nowhere else.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from barbershop_jax.models import vgg16
from barbershop_jax.models.vgg16 import TAPS, TORCH_CONV_INDEX, VGG16Config

from .common import ConversionError, check_keys, check_tensors, file_sha256, to_numpy, torch_load

WHAT = "torchvision VGG16"
LPIPS_WHAT = "LPIPS VGG linear-layer"


# ------------------------------------------------------------------ the official key layouts
def torch_shapes(config: VGG16Config) -> dict[str, tuple]:
    """The `features.*` keys of torchvision's vgg16 state_dict, with their shapes."""
    shapes = {}
    n_in = 3
    widths = [w for (block, n), w in zip(vgg16.BLOCKS, config.widths) for _ in range(n)]
    for index, width in zip(TORCH_CONV_INDEX, widths):
        shapes[f"features.{index}.weight"] = (width, n_in, 3, 3)
        shapes[f"features.{index}.bias"] = (width,)
        n_in = width
    return shapes


def lpips_shapes(config: VGG16Config) -> dict[str, tuple]:
    return {f"lin{k}.model.1.weight": (1, w, 1, 1) for k, w in enumerate(config.widths)}


def default_lpips_weights(version: str = "0.1") -> Path:
    """The lpips package's weights/v{version}/vgg.pth, located without importing lpips."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError("the lpips package is not installed, so its LPIPS weights cannot be found; "
                              "pass --lpips-weights PATH (lpips/weights/v0.1/vgg.pth from the lpips wheel)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / f"v{version}" / "vgg.pth"
    if not path.is_file():
        raise ConversionError(f"{path}: missing from the installed lpips package; pass --lpips-weights PATH")
    return path


# ------------------------------------------------------------------ the name map
def _conv(sd, index):
    return {"kernel": to_numpy(sd[f"features.{index}.weight"]).transpose(2, 3, 1, 0),  # OIHW -> HWIO
            "bias": to_numpy(sd[f"features.{index}.bias"])}


def params_from_state_dict(sd) -> dict:
    return {name: _conv(sd, index) for name, index in zip(vgg16.conv_names(), TORCH_CONV_INDEX)}


def lins_from_state_dict(sd) -> dict:
    return {tap: to_numpy(sd[f"lin{k}.model.1.weight"]).reshape(-1) for k, tap in enumerate(TAPS)}


# ------------------------------------------------------------------ entry points
def convert(src, lpips_weights=None):
    """Read and check both files; returns (VGG16, info dict). Writes nothing."""
    config = VGG16Config()
    sd = check_tensors(torch_load(src), src, WHAT)
    features = {k: v for k, v in sd.items() if not str(k).startswith("classifier.")}
    check_keys(features, torch_shapes(config), src, WHAT)

    lpips_path = Path(lpips_weights) if lpips_weights is not None else default_lpips_weights(config.lpips_version)
    lins = check_tensors(torch_load(lpips_path), lpips_path, LPIPS_WHAT)
    check_keys(lins, lpips_shapes(config), lpips_path, f"{LPIPS_WHAT} (v{config.lpips_version})")

    model = vgg16.VGG16(params=params_from_state_dict(features), lpips_lin=lins_from_state_dict(lins),
                        config=config)
    for tap, w in model.lpips_lin.items():
        if not np.all(np.isfinite(w)):
            raise ConversionError(f"{lpips_path}: the {tap} linear weights are not finite")
    info = {"source": str(src), "source_sha256": file_sha256(src), "lpips_weights": str(lpips_path),
            "lpips_sha256": file_sha256(lpips_path),
            "classifier": "skipped" if len(features) < len(sd) else "absent"}
    return model, info


def run(src, dst, lpips_weights=None, overwrite=False, log=print):
    """`barbershop-jax convert vgg16`: convert and save to DST/vgg16/."""
    model, info = convert(src, lpips_weights)
    log(f"{src}: VGG16 features (classifier {info['classifier']}); LPIPS v{model.config.lpips_version} "
        f"linear layers from {info['lpips_weights']}")
    out = vgg16.save(model, dst, extra_meta={"converted": info}, overwrite=overwrite)
    log(f"wrote {out}")
    return out
