"""BiSeNet face-parser checkpoint (.pth) -> barbershop-jax weights directory.

Accepts the plain state_dicts of Barbershop's `seg.pth` (16 classes) and zllrunning's
`79999_iter.pth` (19 classes); the number of classes is read from the shapes. Batch-norm
`num_batches_tracked` counters are dropped (inference does not use them), and a uniform
`module.` prefix (a DataParallel save) is stripped; every other key must be exactly the
official architecture's. The name map is explicit, one small function per layer type; the
OIHW -> HWIO transposes happen here and nowhere else.
"""
from __future__ import annotations

import jax
import numpy as np

from barbershop_jax.models import bisenet
from barbershop_jax.models.bisenet import BiSeNetConfig

from .common import ConversionError, check_keys, check_tensors, file_sha256, to_numpy, torch_load

WHAT = "BiSeNet face parser (ResNet18 context path)"
HEAD_KEY = "conv_out.conv_out.weight"
# (ResNet layer, input width, output width, stride of its first block)
RESNET_LAYERS = ((1, 64, 64, 1), (2, 64, 128, 2), (3, 128, 256, 2), (4, 256, 512, 2))


# ------------------------------------------------------------------ the official key layout
def torch_shapes(config: BiSeNetConfig) -> dict[str, tuple]:
    """Every key of the official state_dict (without num_batches_tracked), with its shape."""
    shapes = {}

    def conv(prefix, n_in, n_out, k):
        shapes[f"{prefix}.weight"] = (n_out, n_in, k, k)

    def bn(prefix, n):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (n,)

    def conv_bn_relu(prefix, n_in, n_out, k):
        conv(f"{prefix}.conv", n_in, n_out, k)
        bn(f"{prefix}.bn", n_out)

    conv("cp.resnet.conv1", 3, 64, 7)
    bn("cp.resnet.bn1", 64)
    for layer, n_in, n_out, stride in RESNET_LAYERS:
        for block in (0, 1):
            p = f"cp.resnet.layer{layer}.{block}"
            conv(f"{p}.conv1", n_in if block == 0 else n_out, n_out, 3)
            bn(f"{p}.bn1", n_out)
            conv(f"{p}.conv2", n_out, n_out, 3)
            bn(f"{p}.bn2", n_out)
            if block == 0 and (stride != 1 or n_in != n_out):
                conv(f"{p}.downsample.0", n_in, n_out, 1)
                bn(f"{p}.downsample.1", n_out)
    for arm, n_in in (("arm16", 256), ("arm32", 512)):
        conv_bn_relu(f"cp.{arm}.conv", n_in, 128, 3)
        conv(f"cp.{arm}.conv_atten", 128, 128, 1)
        bn(f"cp.{arm}.bn_atten", 128)
    conv_bn_relu("cp.conv_head32", 128, 128, 3)
    conv_bn_relu("cp.conv_head16", 128, 128, 3)
    conv_bn_relu("cp.conv_avg", 512, 128, 1)
    conv_bn_relu("ffm.convblk", 256, 256, 1)
    conv("ffm.conv1", 256, 64, 1)
    conv("ffm.conv2", 64, 256, 1)
    for head, n_in, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        conv_bn_relu(f"{head}.conv", n_in, mid, 3)
        conv(f"{head}.conv_out", mid, config.n_classes, 1)
    return shapes


# ------------------------------------------------------------------ the name map
def _conv(sd, prefix):
    return {"kernel": to_numpy(sd[f"{prefix}.weight"]).transpose(2, 3, 1, 0)}  # OIHW -> HWIO


def _bn(sd, prefix):
    return {"scale": to_numpy(sd[f"{prefix}.weight"]), "bias": to_numpy(sd[f"{prefix}.bias"]),
            "mean": to_numpy(sd[f"{prefix}.running_mean"]), "var": to_numpy(sd[f"{prefix}.running_var"])}


def _conv_bn_relu(sd, prefix):
    return {"conv": _conv(sd, f"{prefix}.conv"), "bn": _bn(sd, f"{prefix}.bn")}


def _basic_block(sd, prefix):
    block = {"conv1": _conv(sd, f"{prefix}.conv1"), "bn1": _bn(sd, f"{prefix}.bn1"),
             "conv2": _conv(sd, f"{prefix}.conv2"), "bn2": _bn(sd, f"{prefix}.bn2")}
    if f"{prefix}.downsample.0.weight" in sd:
        block["downsample_conv"] = _conv(sd, f"{prefix}.downsample.0")
        block["downsample_bn"] = _bn(sd, f"{prefix}.downsample.1")
    return block


def _arm(sd, prefix):
    return {"conv": _conv_bn_relu(sd, f"{prefix}.conv"), "conv_atten": _conv(sd, f"{prefix}.conv_atten"),
            "bn_atten": _bn(sd, f"{prefix}.bn_atten")}


def _head(sd, prefix):
    return {"conv": _conv_bn_relu(sd, f"{prefix}.conv"), "conv_out": _conv(sd, f"{prefix}.conv_out")}


def params_from_state_dict(sd) -> dict:
    resnet = {"conv1": _conv(sd, "cp.resnet.conv1"), "bn1": _bn(sd, "cp.resnet.bn1")}
    for layer, *_ in RESNET_LAYERS:
        for block in (0, 1):
            resnet[f"layer{layer}_{block}"] = _basic_block(sd, f"cp.resnet.layer{layer}.{block}")
    context = {"resnet": resnet, "arm16": _arm(sd, "cp.arm16"), "arm32": _arm(sd, "cp.arm32"),
               "conv_head32": _conv_bn_relu(sd, "cp.conv_head32"),
               "conv_head16": _conv_bn_relu(sd, "cp.conv_head16"),
               "conv_avg": _conv_bn_relu(sd, "cp.conv_avg")}
    fusion = {"convblk": _conv_bn_relu(sd, "ffm.convblk"), "conv1": _conv(sd, "ffm.conv1"),
              "conv2": _conv(sd, "ffm.conv2")}
    return {"cp": context, "ffm": fusion, "conv_out": _head(sd, "conv_out"),
            "conv_out16": _head(sd, "conv_out16"), "conv_out32": _head(sd, "conv_out32")}


# ------------------------------------------------------------------ entry points
def state_dict_from_checkpoint(ckpt, src) -> dict:
    """The plain state_dict, with num_batches_tracked dropped and a `module.` prefix stripped."""
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{src}: expected a state_dict, found {type(ckpt).__name__}")
    keys = list(ckpt)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    check_tensors(ckpt, src, WHAT)
    return {k: v for k, v in ckpt.items() if not k.endswith(".num_batches_tracked")}


def infer_config(sd, src) -> BiSeNetConfig:
    if HEAD_KEY not in sd:
        shown = ", ".join(list(sd)[:6])
        raise ConversionError(f"{src}: not a {WHAT} state_dict: missing {HEAD_KEY} (first keys: {shown})")
    n_classes = int(sd[HEAD_KEY].shape[0])
    if n_classes not in (16, 19):
        raise ConversionError(f"{src}: {HEAD_KEY} has {n_classes} classes; expected 16 (Barbershop seg.pth) "
                              f"or 19 (face-parsing 79999_iter.pth)")
    return BiSeNetConfig(n_classes=n_classes)


def convert(src):
    """Read and check a checkpoint; returns (FaceParser, info dict). Writes nothing."""
    sd = state_dict_from_checkpoint(torch_load(src), src)
    config = infer_config(sd, src)
    check_keys(sd, torch_shapes(config), src, f"{WHAT} with {config.n_classes} classes")
    for name, value in sd.items():
        if name.endswith("running_var") and float(value.min()) < 0:
            raise ConversionError(f"{src}: {name} has negative variances")
    params = jax.tree.map(np.asarray, params_from_state_dict(sd))
    return bisenet.FaceParser(params=params, config=config), {"source": str(src), "source_sha256": file_sha256(src)}


def run(src, dst, overwrite=False, log=print):
    """`barbershop-jax convert bisenet`: convert and save to DST/bisenet/."""
    model, info = convert(src)
    labels = "Barbershop seg.pth labels" if model.config.n_classes == 16 else "face-parsing 79999_iter.pth labels"
    log(f"{src}: BiSeNet, {model.config.n_classes} classes ({labels})")
    out = bisenet.save(model, dst, extra_meta={"converted": info}, overwrite=overwrite)
    log(f"wrote {out}")
    return out
