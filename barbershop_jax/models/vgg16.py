"""torchvision's VGG16 `features` in Flax, NHWC, returning the named ReLU taps that LPIPS and
the style loss read, plus the LPIPS v0.1 linear weights stored beside it.

Reads top to bottom: the layer table, `VGG16Features` (13 3x3 convolutions with bias, ReLU,
2x2 max pools), the configuration, `VGG16` (frozen weights and the pure entry points) and
`load()`. The network is run only up to the deepest tap asked for: LPIPS needs all five taps,
the style loss four, the masked LPIPS of the blending stage three. The official code always
runs all of `features` (or all five LPIPS slices); the numbers of the taps read are the same.

torchvision indices of the taps in `vgg16().features`: relu1_2 = 3, relu2_2 = 8, relu3_3 = 15,
relu4_3 = 22, relu5_3 = 29 (the LPIPS slices [0:4], [4:9], [9:16], [16:23], [23:30], and the
style loss's VGG16_ACTIVATIONS_LIST [3, 8, 15, 22]).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from barbershop_jax.models import INIT_COMPILER_OPTIONS, initialised
from barbershop_jax.models.conv import conv_general_dilated

# (block, convolutions in the block); every block ends in a 2x2 max pool in torchvision.
BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
# torchvision `features` index of each conv, in order conv1_1 .. conv5_3.
TORCH_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def conv_names() -> list[str]:
    """conv1_1, conv1_2, conv2_1, ..., conv5_3: the Flax names of the 13 convolutions."""
    return [f"conv{b}_{i}" for b, n in BLOCKS for i in range(1, n + 1)]


# ----------------------------------------------------------------------------- network
class VGG16Features(nn.Module):
    """vgg16().features up to the deepest requested tap; returns {tap name: (B, h, w, C)}.

    Input: (B, H, W, 3), already normalised the way the caller wants (LPIPS scales it, the
    style loss feeds raw [-1, 1] images). Max pools floor odd sizes, as torch's MaxPool2d(2)."""
    widths: tuple = (64, 128, 256, 512, 512)
    precision: Any = None
    dtype: Any = jnp.float32    # compute dtype of the convolutions; the taps are returned in float32

    @nn.compact
    def __call__(self, x, taps=TAPS):
        unknown = set(taps) - set(TAPS)
        if unknown:
            raise ValueError(f"unknown VGG16 taps {sorted(unknown)}; known: {TAPS}")
        last_block = max(int(t[4]) for t in taps)
        out = {}
        for (block, n_convs), width in zip(BLOCKS, self.widths):
            if block > last_block:
                break
            if block > 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for i in range(1, n_convs + 1):
                x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), precision=self.precision, dtype=self.dtype,
                            conv_general_dilated=conv_general_dilated,
                            name=f"conv{block}_{i}")(x)
                x = jax.nn.relu(x)
            tap = f"relu{block}_{n_convs}"
            if tap in taps:
                out[tap] = x.astype(jnp.float32)
        return out


# ----------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class VGG16Config:
    """The architecture. Defaults: torchvision's vgg16 (ImageNet weights, LPIPS v0.1 lins)."""
    widths: tuple = (64, 128, 256, 512, 512)   # channels of blocks 1..5 (torchvision: fixed)
    lpips_version: str = "0.1"                  # which lpips weights/v*/vgg.pth the lins come from
    dtype: str = "float32"                      # compute dtype of the convolutions: float32 or bfloat16
                                                # (a run-time choice, not saved with the weights)

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != len(BLOCKS):
            raise ValueError(f"widths needs {len(BLOCKS)} entries, got {self.widths}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    def to_json(self) -> dict:
        return {"widths": list(self.widths), "lpips_version": self.lpips_version}


def abstract_params(config: VGG16Config):
    """Shapes and dtypes of the conv parameter tree, without allocating it."""
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    return jax.eval_shape(lambda x: VGG16Features(config.widths).init(jax.random.PRNGKey(0), x), x)["params"]


def abstract_lpips_lin(config: VGG16Config) -> dict:
    """The LPIPS linear layers: one non-negative weight per channel of each tap (the
    1x1 conv lin{k}.model.1.weight of shape (1, C, 1, 1), flattened)."""
    return {tap: jax.ShapeDtypeStruct((w,), jnp.float32) for tap, w in zip(TAPS, config.widths)}


# ----------------------------------------------------------------------------- frozen model
@struct.dataclass
class VGG16:
    """Frozen VGG16 features and LPIPS linear weights: a pytree for jit and vmap."""
    params: Any
    lpips_lin: dict             # {tap: (C,)} LPIPS v0.1 linear weights
    config: VGG16Config = struct.field(pytree_node=False)

    def features(self, x, taps=TAPS) -> dict:
        """x (B, H, W, 3) -> {tap: (B, h, w, C)} for the requested taps (no normalisation)."""
        return VGG16Features(self.config.widths, dtype=jnp.dtype(self.config.dtype)).apply(
            {"params": self.params}, x, tuple(taps))


def init(config: VGG16Config, key) -> VGG16:
    """Random weights (He-normal convolutions, small random biases, uniform positive lins)
    for tests and benchmarks. One compiled program, which the persistent compilation cache
    keeps: drawn op by op, every layer's shapes compiled small programs of their own in every
    process (the embedded default: 12 s on 2 CPU cores, against 5 s compiled once and 0.8 s
    with the cache warm). Kept across processes where the runtime keeps them
    (models.initialised)."""
    return initialised(_drawn, config, key)


def _drawn(config: VGG16Config, key) -> VGG16:
    return _init(config, key)  # (a function, not the jitted one: its name is its key's)


def _draw(sample, *args, **kwargs):
    """A random draw that XLA may not fuse with the scaling after it: the weights keep the
    bits they had when drawn op by op."""
    return jax.lax.optimization_barrier(sample(*args, **kwargs))


@functools.partial(jax.jit, static_argnums=0, compiler_options=INIT_COMPILER_OPTIONS)
def _init(config: VGG16Config, key) -> VGG16:
    k_params, k_bias, k_lin = jax.random.split(key, 3)
    shapes = abstract_params(config)
    params = {}
    for i, name in enumerate(conv_names()):
        kernel = shapes[name]["kernel"].shape
        fan_in = kernel[0] * kernel[1] * kernel[2]
        params[name] = {
            "kernel": _draw(jax.random.normal, jax.random.fold_in(k_params, i), kernel) * (2.0 / fan_in) ** 0.5,
            "bias": 0.05 * _draw(jax.random.normal, jax.random.fold_in(k_bias, i), shapes[name]["bias"].shape),
        }
    lins = {tap: _draw(jax.random.uniform, jax.random.fold_in(k_lin, i), (w,), maxval=0.1)
            for i, (tap, w) in enumerate(zip(TAPS, config.widths))}
    return VGG16(params=params, lpips_lin=lins, config=config)


# ----------------------------------------------------------------------------- load
MODEL_NAME = "vgg16"


def load(path) -> VGG16:
    """Load a converted VGG16 directory (or a weights root holding `vgg16/`), strictly:
    the stored arrays must match config.json key for key and shape for shape."""
    from barbershop_jax.models import weights as checkpoint

    root, config = checkpoint.open_model(path, MODEL_NAME, VGG16Config)
    expected = {"params": abstract_params(config), "lpips_lin": abstract_lpips_lin(config)}
    tree = checkpoint.restore_strict(root, expected)
    return VGG16(params=jax.tree.map(jnp.asarray, tree["params"]),
                 lpips_lin={k: jnp.asarray(v) for k, v in tree["lpips_lin"].items()}, config=config)


def save(model: VGG16, dst_root, extra_meta: dict | None = None, overwrite: bool = False):
    """Write `model` as `dst_root/vgg16/` atomically."""
    from barbershop_jax.models import weights as checkpoint

    tree = {"params": model.params, "lpips_lin": model.lpips_lin}
    return checkpoint.save_model_dir(dst_root, MODEL_NAME, model.config.to_json(), tree,
                                     extra_meta=extra_meta, overwrite=overwrite)
