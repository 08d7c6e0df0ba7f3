"""rosinality StyleGAN2 checkpoint (.pt) -> barbershop-jax weights directory.

Accepts the `{'g_ema', 'latent_avg'}` dict that rosinality's convert_weight.py writes from
NVIDIA's FFHQ pickle (Barbershop's ffhq.pt), a training checkpoint (`g`, `d`, `g_ema`,
optimiser states, `args`; no `latent_avg`: it is then computed from the mapping network), or
a bare g_ema state_dict. Size, channel multiplier, channel cap, style_dim and n_mlp are read
from the shapes; flags override. The name map is explicit, one small function per layer
type; the OIHW -> HWIO transposes happen here and nowhere else.
"""
from __future__ import annotations

import re

import jax
import numpy as np

from barbershop_jax.models import pca as pca_lib
from barbershop_jax.models import stylegan2, stylegan2_layers
from barbershop_jax.models.stylegan2 import GeneratorConfig

from .common import ConversionError, check_keys, check_tensors, file_sha256, to_numpy, torch_load

WHAT = "rosinality StyleGAN2 generator"


# ------------------------------------------------------------------ the official key layout
def torch_shapes(c: GeneratorConfig) -> dict[str, tuple]:
    """Every key of the official g_ema state_dict for config `c`, with its shape."""
    d = c.style_dim
    shapes = {}
    for i in range(1, c.n_mlp + 1):
        shapes[f"style.{i}.weight"] = (d, d)
        shapes[f"style.{i}.bias"] = (d,)

    def modconv(prefix, n_in, n_out, k):
        shapes[f"{prefix}.weight"] = (1, n_out, n_in, k, k)
        shapes[f"{prefix}.modulation.weight"] = (n_in, d)
        shapes[f"{prefix}.modulation.bias"] = (n_in,)

    def styled(prefix, n_in, n_out, up):
        modconv(f"{prefix}.conv", n_in, n_out, 3)
        if up:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)
        shapes[f"{prefix}.noise.weight"] = (1,)
        shapes[f"{prefix}.activate.bias"] = (n_out,)

    def to_rgb(prefix, n_in, up):
        shapes[f"{prefix}.bias"] = (1, 3, 1, 1)
        if up:
            shapes[f"{prefix}.upsample.kernel"] = (4, 4)
        modconv(f"{prefix}.conv", n_in, 3, 1)

    ch4 = c.channels(4)
    shapes["input.input"] = (1, ch4, 4, 4)
    styled("conv1", ch4, ch4, False)
    to_rgb("to_rgb1", ch4, False)
    n_in = ch4
    for b in range(1, c.n_blocks + 1):
        n_out = c.channels(2 ** (b + 2))
        styled(f"convs.{2 * b - 2}", n_in, n_out, True)
        styled(f"convs.{2 * b - 1}", n_out, n_out, False)
        to_rgb(f"to_rgbs.{b - 1}", n_out, True)
        n_in = n_out
    for i in range(c.num_noises):
        r = c.noise_shape(i)[1]
        shapes[f"noises.noise_{i}"] = (1, 1, r, r)
    return shapes


def infer_config(state: dict, src, size=None, channel_multiplier=None) -> GeneratorConfig:
    """Read the architecture from the shapes; explicit arguments win."""
    def need(key):
        if key not in state:
            raise ConversionError(f"{src}: not a {WHAT} state_dict: missing {key}")
        return state[key]

    style_dim = need("style.1.weight").shape[1]
    n_mlp = len([k for k in state if re.fullmatch(r"style\.\d+\.weight", k)])
    n_rgbs = len([k for k in state if re.fullmatch(r"to_rgbs\.\d+\.bias", k)])
    channel_max = need("input.input").shape[1]
    if size is None:
        size = 2 ** (n_rgbs + 2)
    if channel_multiplier is None:
        channel_multiplier = 2  # the official value; irrelevant when every layer is capped
        for b in range(n_rgbs, 0, -1):
            key = f"to_rgbs.{b - 1}.conv.weight"
            if key in state and state[key].shape[2] < channel_max:
                res = 2 ** (b + 2)
                channel_multiplier = max(1, state[key].shape[2] * res // 16384)
                break
    try:
        return GeneratorConfig(size=size, style_dim=style_dim, n_mlp=n_mlp,
                               channel_multiplier=channel_multiplier, channel_max=channel_max)
    except ValueError as e:
        raise ConversionError(f"{src}: {e}") from None


# ------------------------------------------------------------------ the name map
def _equal_linear(sd, prefix):
    return {"kernel": to_numpy(sd[f"{prefix}.weight"]).T, "bias": to_numpy(sd[f"{prefix}.bias"])}


def _modulated_conv(sd, prefix):
    weight = to_numpy(sd[f"{prefix}.weight"])[0]  # (out, in, kh, kw)
    return {"kernel": weight.transpose(2, 3, 1, 0),  # -> HWIO
            "modulation": _equal_linear(sd, f"{prefix}.modulation")}


def _styled_conv(sd, prefix):
    return {"conv": _modulated_conv(sd, f"{prefix}.conv"),
            "noise_strength": to_numpy(sd[f"{prefix}.noise.weight"]).reshape(()),
            "bias": to_numpy(sd[f"{prefix}.activate.bias"])}


def _to_rgb(sd, prefix):
    return {"conv": _modulated_conv(sd, f"{prefix}.conv"),
            "bias": to_numpy(sd[f"{prefix}.bias"]).reshape(3)}


def _check_blur_kernels(sd, src):
    """The blur buffers must be the standard [1, 3, 3, 1] filter the Flax model hard-codes."""
    k1 = stylegan2_layers.BLUR_TAPS * 2.0
    expected = np.outer(k1, k1)
    for key, value in sd.items():
        if key.endswith("blur.kernel") or key.endswith("upsample.kernel"):
            if not np.allclose(to_numpy(value), expected, atol=1e-6):
                raise ConversionError(f"{src}: {key} is not the standard [1, 3, 3, 1] blur kernel")


def params_from_state_dict(sd, c: GeneratorConfig):
    params = {"mapping": {f"dense_{i - 1}": _equal_linear(sd, f"style.{i}") for i in range(1, c.n_mlp + 1)},
              "input": to_numpy(sd["input.input"]).transpose(0, 2, 3, 1),
              "conv1": _styled_conv(sd, "conv1"),
              "to_rgb1": _to_rgb(sd, "to_rgb1")}
    for j in range(2 * c.n_blocks):
        params[f"convs_{j}"] = _styled_conv(sd, f"convs.{j}")
    for k in range(c.n_blocks):
        params[f"to_rgbs_{k}"] = _to_rgb(sd, f"to_rgbs.{k}")
    noise = tuple(to_numpy(sd[f"noises.noise_{i}"]).transpose(0, 2, 3, 1) for i in range(c.num_noises))
    return params, noise


# ------------------------------------------------------------------ entry points
def state_dict_from_checkpoint(ckpt, src):
    """The g_ema state_dict and the stored latent_avg (or None) of any accepted layout."""
    import torch

    if not isinstance(ckpt, dict):
        raise ConversionError(f"{src}: expected a dict checkpoint, found {type(ckpt).__name__}")
    if "g_ema" in ckpt:
        sd, latent_avg = ckpt["g_ema"], ckpt.get("latent_avg")
    elif "style.1.weight" in ckpt:
        sd, latent_avg = ckpt, None
    else:
        keys = ", ".join(list(map(str, ckpt))[:6])
        raise ConversionError(f"{src}: not a {WHAT} checkpoint: no 'g_ema' entry (top-level keys: {keys})")
    if not isinstance(sd, dict):
        raise ConversionError(f"{src}: 'g_ema' is a {type(sd).__name__}, not a state_dict")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise ConversionError(f"{src}: latent_avg is a {type(latent_avg).__name__}, not a tensor")
    return check_tensors(sd, src, WHAT), latent_avg


def convert(src, size=None, channel_multiplier=None, n_mean_latent=4096, seed=0):
    """Read and check a checkpoint; returns (StyleGAN2, info dict). Writes nothing."""
    sd, latent_avg = state_dict_from_checkpoint(torch_load(src), src)
    config = infer_config(sd, src, size, channel_multiplier)
    check_keys(sd, torch_shapes(config), src, f"{WHAT} ({config.size} px, channel multiplier "
                                              f"{config.channel_multiplier})")
    _check_blur_kernels(sd, src)
    params, noise = params_from_state_dict(sd, config)
    model = stylegan2.StyleGAN2(params=jax.tree.map(np.asarray, params), noise_const=noise,
                                latent_avg=np.zeros(config.style_dim, np.float32), config=config)
    info = {"source": str(src), "source_sha256": file_sha256(src)}
    if latent_avg is not None:
        latent_avg = to_numpy(latent_avg).reshape(-1)
        if latent_avg.shape != (config.style_dim,):
            raise ConversionError(f"{src}: latent_avg has shape {latent_avg.shape}, expected ({config.style_dim},)")
        info["latent_avg"] = "stored"
    else:
        # rosinality's mean_latent: the mean of the mapped w of n_mean_latent samples.
        z = jax.random.normal(jax.random.PRNGKey(seed), (n_mean_latent, config.style_dim))
        latent_avg = np.asarray(jax.jit(model.map)(z).mean(0))
        info["latent_avg"] = f"computed from {n_mean_latent} mapped samples, seed {seed}"
    return model.replace(latent_avg=latent_avg), info


def run(src, dst, size=None, channel_multiplier=None, pca_samples=1_000_000, pca_file=None,
        n_mean_latent=4096, seed=0, overwrite=False, log=print):
    """`barbershop-jax convert stylegan2`: convert, compute or import the PCA, save."""
    model, info = convert(src, size, channel_multiplier, n_mean_latent, seed)
    c = model.config
    log(f"{src}: StyleGAN2 {c.size} px, channel multiplier {c.channel_multiplier}, "
        f"style_dim {c.style_dim}, n_mlp {c.n_mlp}; latent_avg {info['latent_avg']}")
    if pca_file is not None:
        pca = pca_lib.read_pca_file(pca_file, c.style_dim)
        info["pca"] = f"imported from {pca_file}"
    elif pca_samples:
        log(f"computing p-norm PCA statistics from {pca_samples} mapped samples ...")
        pca = pca_lib.pca_stats(model, pca_samples, jax.random.PRNGKey(seed + 1))
        info["pca"] = f"computed from {pca_samples} mapped samples, seed {seed + 1}"
    else:
        pca = None
        info["pca"] = "none"
    out = stylegan2.save(model, dst, extra_meta={"converted": info}, pca=pca, overwrite=overwrite)
    log(f"wrote {out}")
    return out
