"""StyleGAN2 generator (rosinality's PyTorch port, as Barbershop uses it) in Flax, NHWC.

Reads top to bottom (the resampling and the layers named after the paper, EqualDense,
ModulatedConv2d, StyledConv, ToRGB, are models/stylegan2_layers.py): the configuration, the
mapping and synthesis networks,
`StyleGAN2` (the frozen weights plus the pure entry points the pipeline uses) and `load()`.

Numbers match the official code (SPEC.md section 2) with one change of *how*, not *what*:
the official ModulatedConv2d builds a separate weight tensor per sample and runs a grouped
convolution. Here the style scales the input activations, one convolution with the shared
weight runs for the whole batch, and the demodulation scales the output channels:

    conv(x, W * s_in * d_out) == conv(x * s_in, W) * d_out,
    d_out = rsqrt(scale^2 * sum_in s_in^2 * sum_{kh,kw} W[out, in]^2 + 1e-8).

The two are equal in exact arithmetic. A batch then runs one dense convolution, and a gradient
to the latents needs no weight-gradient convolution (measured here for one 1024 px
forward+backward on CPU: 89 s with per-sample weights, 14 s with this form).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct, traverse_util


from barbershop_jax.models import INIT_COMPILER_OPTIONS, initialised
from barbershop_jax.models.stylegan2_layers import EqualDense, PixelNorm, StyledConv, ToRGB

NOISE_MODES = ("random", "const", "none")


# ----------------------------------------------------------------------------- networks
@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """The architecture. Defaults: the official FFHQ config-f generator."""
    size: int = 1024                # output resolution, a power of two from 8 to 1024
    style_dim: int = 512            # width of z, w and the mapping network
    n_mlp: int = 8                  # dense layers in the mapping network
    channel_multiplier: int = 2     # widens the layers of 64 px and above (official: 2)
    channel_max: int = 512          # cap on the channels (official: 512); smaller for tests
    lr_mlp: float = 0.01            # equalised learning-rate multiplier of the mapping network
    dtype: str = "float32"          # compute dtype of the convolutions: float32 or bfloat16
    precision: str | None = None    # XLA conv precision; None is the backend default (TF32 on
                                    # recent NVIDIA GPUs, like PyTorch's cudnn default), "highest" is strict fp32

    def __post_init__(self):
        if self.size < 8 or self.size > 1024 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two from 8 to 1024, got {self.size}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.precision not in (None, "default", "high", "highest"):
            raise ValueError(f"precision must be None, default, high or highest, got {self.precision!r}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        """Number of W+ vectors (18 at 1024 px)."""
        return 2 * self.log_size - 2

    @property
    def n_blocks(self) -> int:
        """Synthesis blocks after the 4x4 block 0: block b renders 2**(b + 2) px."""
        return self.log_size - 2

    @property
    def num_noises(self) -> int:
        return 2 * self.log_size - 3

    def channels(self, resolution: int) -> int:
        """rosinality's channel table: 512 up to 32 px, then 16384 * cm / resolution."""
        return min(self.channel_max, 16384 * self.channel_multiplier // resolution)

    def noise_shape(self, i: int) -> tuple[int, int, int, int]:
        r = 2 ** ((i + 5) // 2)
        return (1, r, r, 1)

    def first_latent(self, block: int) -> int:
        """Index of the first W+ vector used by `block` (block 4 -> 7: the S code)."""
        return 0 if block == 0 else 2 * block - 1

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "GeneratorConfig":
        return dataclasses.replace(self, **changes)


def tiny_config(**overrides) -> GeneratorConfig:
    """A small generator for tests and the embedded demo (64 px, 64 channels)."""
    base = dict(size=64, style_dim=64, n_mlp=2, channel_multiplier=2, channel_max=64)
    base.update(overrides)
    return GeneratorConfig(**base)


class MappingNetwork(nn.Module):
    """z -> w: PixelNorm, then n_mlp EqualDense layers (lr_mul 0.01, fused leaky ReLU)."""
    style_dim: int
    n_mlp: int
    lr_mul: float

    @nn.compact
    def __call__(self, z):
        x = PixelNorm()(z)
        for i in range(self.n_mlp):
            x = EqualDense(self.style_dim, lr_mul=self.lr_mul, activation=True, name=f"dense_{i}")(x)
        return x


class Generator(nn.Module):
    """Mapping and synthesis networks. Parameter names follow the PyTorch module names."""
    config: GeneratorConfig

    def setup(self):
        c = self.config
        opts = dict(dtype=jnp.dtype(c.dtype), precision=c.precision)
        self.mapping = MappingNetwork(c.style_dim, c.n_mlp, c.lr_mlp)
        self.const_input = self.param("input", nn.initializers.normal(1.0), (1, 4, 4, c.channels(4)))
        self.conv1 = StyledConv(c.channels(4), **opts)
        self.to_rgb1 = ToRGB(**opts)
        convs, to_rgbs = [], []
        for b in range(1, c.n_blocks + 1):
            ch = c.channels(2 ** (b + 2))
            convs += [StyledConv(ch, upsample=True, **opts), StyledConv(ch, **opts)]
            to_rgbs.append(ToRGB(**opts))
        self.convs = convs
        self.to_rgbs = to_rgbs

    def map(self, z):
        return self.mapping(z)

    def __call__(self, w_plus, noise):
        """Initialisation entry: mapping + full synthesis."""
        self.mapping(w_plus[:, 0])
        return self.synthesize(w_plus, noise)

    def synthesize(self, w_plus, noise, start_block=0, end_block=None, features=None, skip=None):
        """Barbershop's partial forward(start_layer, end_layer, layer_in, skip), NHWC.

        Args:
          w_plus: (B, n_latent, style_dim); only the vectors of the blocks run are read.
          noise: list of num_noises arrays (B or 1, r, r, 1), or None entries for no noise.
          start_block: 0 starts from the constant input; b > 0 resumes from `features`, the
            output of block b - 1.
          end_block: last block to run (default: the last one).
          features: the feature map entering `start_block` (start_block > 0).
          skip: the RGB skip entering `start_block`; None restarts it (the official FS
            behaviour, which drops the colour of the low resolutions).
        Returns:
          (features after end_block, RGB skip after end_block). After the last block the
          skip is the image.
        """
        c = self.config
        end_block = c.n_blocks if end_block is None else end_block
        if start_block == 0:
            x = jnp.broadcast_to(self.const_input, (w_plus.shape[0],) + self.const_input.shape[1:])
            x = self.conv1(x, w_plus[:, 0], noise[0])
            skip = self.to_rgb1(x, w_plus[:, 1], None)
        else:
            x = features
        for b in range(max(start_block, 1), end_block + 1):
            i = 2 * b - 1
            x = self.convs[2 * b - 2](x, w_plus[:, i], noise[i])
            x = self.convs[2 * b - 1](x, w_plus[:, i + 1], noise[i + 1])
            skip = self.to_rgbs[b - 1](x, w_plus[:, i + 2], skip)
        return x, skip


# ----------------------------------------------------------------------------- frozen model
@struct.dataclass
class StyleGAN2:
    """A generator with frozen weights: a pytree, so it can be passed through jit and vmap.

    Every entry point is a pure function of its arguments. Noise is 'random' (a fresh
    N(0, 1) draw from `key` per call and per sample: the official behaviour, reproducible),
    'const' (the checkpoint's noise buffers), 'none', or a list of arrays in the buffer order
    (shapes (B or 1, r, r, 1)).
    """
    params: Any
    noise_const: tuple          # num_noises arrays (1, r, r, 1): the checkpoint's buffers
    latent_avg: jax.Array       # (style_dim,): the stored average w, for truncation and init
    config: GeneratorConfig = struct.field(pytree_node=False)

    @property
    def module(self) -> Generator:
        return Generator(self.config)

    def map(self, z, truncation: float = 1.0):
        """z (B, style_dim) -> w (B, style_dim), optionally truncated towards latent_avg."""
        w = self.module.apply({"params": self.params}, z, method=Generator.map)
        return self.truncate(w, truncation) if truncation != 1.0 else w

    def truncate(self, w, psi: float):
        """w_avg + psi * (w - w_avg), for w or W+."""
        return self.latent_avg + psi * (w - self.latent_avg)

    def w_plus_from_w(self, w):
        """(B, style_dim) -> (B, n_latent, style_dim): the same w at every layer."""
        return jnp.broadcast_to(w[:, None], (w.shape[0], self.config.n_latent, w.shape[-1]))

    def mean_w_plus(self, batch: int = 1):
        """W+ filled with latent_avg: the official start of every embedding."""
        return jnp.broadcast_to(self.latent_avg, (batch, self.config.n_latent, self.config.style_dim))

    def make_noise(self, noise="random", batch: int = 1, key=None) -> list:
        """The per-layer noise list for `synthesize`, from a mode name or caller arrays."""
        c = self.config
        if isinstance(noise, str):
            if noise == "random":
                if key is None:
                    raise ValueError("noise='random' needs a PRNG key (noise is drawn per call)")
                keys = jax.random.split(key, c.num_noises)
                return [jax.random.normal(keys[i], (batch,) + c.noise_shape(i)[1:])
                        for i in range(c.num_noises)]
            if noise == "const":
                return list(self.noise_const)
            if noise == "none":
                return [None] * c.num_noises
            raise ValueError(f"noise must be one of {NOISE_MODES} or a list of arrays, got {noise!r}")
        noise = list(noise)
        if len(noise) != c.num_noises:
            raise ValueError(f"expected {c.num_noises} noise arrays, got {len(noise)}")
        for i, n in enumerate(noise):
            want = c.noise_shape(i)[1:]
            if n is not None and tuple(n.shape[1:]) != want:
                raise ValueError(f"noise {i}: expected shape (B, {want[0]}, {want[1]}, 1), got {tuple(n.shape)}")
        return noise

    def _synth(self, w_plus, noise, key, **kw):
        noise = self.make_noise(noise, w_plus.shape[0], key)
        return self.module.apply({"params": self.params}, w_plus, noise,
                                 method=Generator.synthesize, **kw)

    def render(self, w_plus, *, noise="random", key=None):
        """W+ (B, n_latent, style_dim) -> image (B, size, size, 3), about [-1, 1] (no tanh)."""
        return self._synth(w_plus, noise, key)[1]

    def features(self, w_plus, *, block: int = 3, noise="random", key=None):
        """Run blocks 0..block; returns (F, skip): F (B, r, r, C) is the structure tensor
        (32x32x512 at block 3), skip the RGB image so far (B, r, r, 3)."""
        self._check_block(block, last_ok=True)
        return self._synth(w_plus, noise, key, end_block=block)

    def render_from_features(self, structure_f, latents, *, block: int = 3, skip=None,
                             noise="random", key=None):
        """Resume from F (the output of `block`) and S: render blocks block+1 onwards.

        Args:
          structure_f: (B, r, r, C) features after `block`.
          latents: either the full W+ (B, n_latent, style_dim), of which the vectors from
            first_latent(block + 1) on are read, or just that S code (B, n_latent -
            first_latent(block + 1), style_dim), e.g. 11 vectors at 1024 px and block 3.
          skip: None (default) drops the low-resolution RGB skip, as the official FS render
            does; pass the skip from `features` to carry it, and then
            render_from_features(*features(w)) == render(w) with the same noise.
        """
        self._check_block(block, last_ok=False)
        c = self.config
        start = c.first_latent(block + 1)
        n_s = c.n_latent - start
        if latents.shape[1] == n_s and n_s != c.n_latent:
            pad = jnp.zeros((latents.shape[0], start, latents.shape[2]), latents.dtype)
            latents = jnp.concatenate([pad, latents], axis=1)
        elif latents.shape[1] != c.n_latent:
            raise ValueError(f"latents: expected {c.n_latent} (W+) or {n_s} (S) vectors, got {latents.shape[1]}")
        return self._synth(latents, noise, key, start_block=block + 1, features=structure_f, skip=skip)[1]

    def _check_block(self, block, last_ok):
        top = self.config.n_blocks if last_ok else self.config.n_blocks - 1
        if not 0 <= block <= top:
            raise ValueError(f"block must be in 0..{top} for a {self.config.size} px generator, got {block}")


def init(config: GeneratorConfig, key) -> StyleGAN2:
    """Random weights at the official initial scale, plus small non-zero noise strengths and
    biases (zero at the official init) so that every path of the network is exercised. Kept
    across processes where the runtime keeps them (models.initialised)."""
    return initialised(_drawn, config, key)


def _drawn(config: GeneratorConfig, key) -> StyleGAN2:
    k_params, k_noise, k_extra, k_avg = jax.random.split(key, 4)
    model = _init(config, k_params, k_noise, k_extra)
    # latent_avg as the official code's mean_latent: the mean of 4096 mapped samples.
    z = jax.random.normal(k_avg, (4096, config.style_dim))
    return model.replace(latent_avg=jnp.mean(jax.jit(StyleGAN2.map)(model, z), axis=0))


@functools.partial(jax.jit, static_argnums=0, compiler_options=INIT_COMPILER_OPTIONS)
def _init(config: GeneratorConfig, k_params, k_noise, k_extra) -> StyleGAN2:
    # One compiled program, which the persistent compilation cache keeps for the next process.
    # Drawn op by op, every noise and bias shape compiled a small program of its own in every
    # process (the embedded default: 5 s on 2 CPU cores, against 1.8 s with the cache warm).
    noise = [jax.random.normal(jax.random.fold_in(k_noise, i), config.noise_shape(i))
             for i in range(config.num_noises)]
    w0 = jnp.zeros((1, config.n_latent, config.style_dim))
    params = Generator(config).init(k_params, w0, noise)["params"]
    flat = traverse_util.flatten_dict(params)
    for i, (path, value) in enumerate(sorted(flat.items())):
        if path[-1] in ("noise_strength",) or (path[-1] == "bias" and "modulation" not in path and "mapping" not in path):
            # (the barrier: no fusion with the scaling, so the bits are those drawn op by op)
            flat[path] = 0.1 * jax.lax.optimization_barrier(jax.random.normal(jax.random.fold_in(k_extra, i), value.shape))
    return StyleGAN2(params=traverse_util.unflatten_dict(flat), noise_const=tuple(noise),
                     latent_avg=jnp.zeros((config.style_dim,)), config=config)


def abstract_params(config: GeneratorConfig):
    """Shapes and dtypes of the parameter tree, computed without allocating it."""
    w0 = jax.ShapeDtypeStruct((1, config.n_latent, config.style_dim), jnp.float32)
    noise = [jax.ShapeDtypeStruct(config.noise_shape(i), jnp.float32) for i in range(config.num_noises)]
    return jax.eval_shape(lambda w, n: Generator(config).init(jax.random.PRNGKey(0), w, n), w0, noise)["params"]


# ----------------------------------------------------------------------------- load
PCA_FILE = "pca.npz"
MODEL_NAME = "stylegan2"


def load(path, dtype: str | None = None) -> StyleGAN2:
    """Load a converted generator directory (or a weights root holding `stylegan2/`).

    Strict: the stored arrays must match the architecture in config.json key for key and
    shape for shape; anything else raises a ValueError that names the differences.
    """
    from barbershop_jax.models import weights as checkpoint

    root, config = checkpoint.open_model(path, MODEL_NAME, GeneratorConfig)
    if dtype is not None:
        config = config.replace(dtype=dtype)
    expected = {
        "params": abstract_params(config),
        "noise_const": {f"noise_{i}": jax.ShapeDtypeStruct(config.noise_shape(i), jnp.float32)
                        for i in range(config.num_noises)},
        "latent_avg": jax.ShapeDtypeStruct((config.style_dim,), jnp.float32),
    }
    tree = checkpoint.restore_strict(root, expected)
    noise = tuple(jnp.asarray(tree["noise_const"][f"noise_{i}"]) for i in range(config.num_noises))
    return StyleGAN2(params=jax.tree.map(jnp.asarray, tree["params"]), noise_const=noise,
                     latent_avg=jnp.asarray(tree["latent_avg"]), config=config)


def save(model: StyleGAN2, dst_root, extra_meta: dict | None = None, pca: dict | None = None,
         overwrite: bool = False):
    """Write `model` as `dst_root/stylegan2/` (orbax arrays, config.json, pca.npz), atomically."""
    from barbershop_jax.models import weights as checkpoint

    tree = {
        "params": model.params,
        "noise_const": {f"noise_{i}": n for i, n in enumerate(model.noise_const)},
        "latent_avg": model.latent_avg,
    }
    files = {}
    if pca is not None:
        files[PCA_FILE] = pca
    return checkpoint.save_model_dir(dst_root, MODEL_NAME, model.config.to_json(), tree,
                                     extra_meta=extra_meta, npz_files=files, overwrite=overwrite)


def load_pca(path) -> dict:
    """The p-norm PCA statistics stored beside the weights (official ffhq_PCA.npz keys),
    checked against the generator's config: a damaged file is a ValueError naming it."""
    from barbershop_jax.models import pca as pca_lib
    from barbershop_jax.models import weights as checkpoint

    root, config = checkpoint.open_model(path, MODEL_NAME, GeneratorConfig)
    file = root / PCA_FILE
    if not file.exists():
        raise FileNotFoundError(f"{file}: no PCA statistics; convert with --pca-samples N or --pca FILE")
    return pca_lib.read_pca_file(file, config.style_dim)
