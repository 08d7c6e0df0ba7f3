"""BiSeNet face parser (zllrunning face-parsing.PyTorch, as Barbershop uses it) in Flax, NHWC.

Reads top to bottom: the label maps of the two public checkpoints, the layers (inference batch
norm, ConvBNReLU, the ResNet18 basic block), the context path with its attention refinement
modules, the feature fusion module and output heads, `BiSeNetNet`, the configuration,
`FaceParser` (frozen weights plus the official input handling) and `load()`.

Network (SPEC.md section 3): ResNet18 gives feat8, feat16, feat32 (strides 8, 16, 32). The
context path adds the global-average branch to ARM(feat32), nearest-upsamples x2, ConvBNReLU;
adds ARM(feat16), upsamples x2, ConvBNReLU. The "spatial path" is ResNet's feat8 itself;
the FFM fuses it with the context feature; three heads (ConvBNReLU 3x3 + 1x1 conv) give
logits at stride 8 (main) and at strides 8 and 16 (auxiliary), bilinearly upsampled
(align_corners=True) to the input size. Barbershop reads only the main head.

Input handling (Barbershop Alignment / Blending): an image in [0, 1] at 1024 px, bicubic-
downsampled to 512 (PULSE kernel), clamped to [0, 1] for real images only (generated images
(x + 1) / 2 are not clamped: SPEC.md section 7), normalised with the ImageNet mean and std.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from barbershop_jax.ops import resample
from barbershop_jax.models import initialised
from barbershop_jax.models.conv import conv_general_dilated

# ----------------------------------------------------------------------------- labels
# Barbershop's seg.pth (16 classes); the pipeline's hair is 10, background 0, cloth 15.
LABELS_16 = ("background", "skin", "nose", "eyeglasses", "eyes", "brows", "ears", "mouth",
             "upper_lip", "lower_lip", "hair", "hat", "earring", "necklace", "neck", "cloth")
# zllrunning's 79999_iter.pth (19 classes, CelebAMask-HQ order: prepropess_data.py `atts`).
LABELS_19 = ("background", "skin", "left_brow", "right_brow", "left_eye", "right_eye",
             "eyeglasses", "left_ear", "right_ear", "earring", "nose", "mouth", "upper_lip",
             "lower_lip", "neck", "necklace", "cloth", "hair", "hat")
# Regions the 19-class checkpoint splits into left and right, so that callers can name
# "eyes", "brows" or "ears" with either checkpoint; "lips" names both lips in either.
_GROUPS_16 = {"lips": ("upper_lip", "lower_lip")}
_GROUPS_19 = {"eyes": ("left_eye", "right_eye"), "brows": ("left_brow", "right_brow"),
              "ears": ("left_ear", "right_ear"), "lips": ("upper_lip", "lower_lip")}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Named regions of one checkpoint's classes. No other module hard-codes a class id."""
    names: tuple
    groups: tuple = ()  # ((region, (class name, ...)), ...)

    def ids(self, *regions: str) -> tuple:
        """Class ids of the named regions (a group names several classes)."""
        groups = dict(self.groups)
        out = []
        for region in regions:
            members = groups.get(region, (region,))
            for name in members:
                if name not in self.names:
                    known = sorted(set(self.names) | set(groups))
                    raise KeyError(f"no region {region!r} in this label map; known: {', '.join(known)}")
                out.append(self.names.index(name))
        return tuple(out)

    def id(self, region: str) -> int:
        """The single class id of `region` (a ValueError for a left/right group)."""
        ids = self.ids(region)
        if len(ids) != 1:
            raise ValueError(f"region {region!r} spans classes {ids}; use ids() or mask()")
        return ids[0]

    def mask(self, labels, *regions: str):
        """labels (any shape, int) -> bool array: True where the label is in `regions`."""
        return jnp.isin(labels, jnp.asarray(self.ids(*regions)))

    def region_ids(self, region: str) -> tuple:
        """Comma-separated region names ("hair", "brows,eyes", "lips") -> their sorted class
        ids; a ValueError naming the unknown ones and listing the valid names."""
        names = [n.strip() for n in region.split(",") if n.strip()]
        groups = dict(self.groups)
        unknown = [n for n in names if n not in self.names and n not in groups]
        if unknown or not names:
            valid = ", ".join([*self.names, *groups])
            what = f"unknown region name(s) {', '.join(map(repr, unknown))}" if unknown else "no region named"
            raise ValueError(f"region {region!r}: {what}; valid names: {valid}")
        return tuple(sorted(set(self.ids(*names))))


def label_map(n_classes: int) -> LabelMap:
    """The label map of the 16-class (seg.pth) or 19-class (79999_iter.pth) checkpoint."""
    if n_classes == 16:
        return LabelMap(LABELS_16, tuple(_GROUPS_16.items()))
    if n_classes == 19:
        return LabelMap(LABELS_19, tuple(_GROUPS_19.items()))
    raise ValueError(f"no label map for {n_classes} classes (16: seg.pth, 19: 79999_iter.pth)")


# ----------------------------------------------------------------------------- layers
class BatchNorm(nn.Module):
    """BatchNorm2d in eval mode: (x - mean) * scale / sqrt(var + 1e-5) + bias."""
    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        return (x - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias


def conv(features, kernel, stride=1, name=None):
    """A bias-free convolution with torch's symmetric padding kernel // 2."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, conv_general_dilated=conv_general_dilated, name=name)


class ConvBNReLU(nn.Module):
    features: int
    kernel: int = 3

    @nn.compact
    def __call__(self, x):
        return jax.nn.relu(BatchNorm(name="bn")(conv(self.features, self.kernel, name="conv")(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: relu(shortcut(x) + bn2(conv2(relu(bn1(conv1(x))))))."""
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        residual = jax.nn.relu(BatchNorm(name="bn1")(conv(self.features, 3, self.stride, name="conv1")(x)))
        residual = BatchNorm(name="bn2")(conv(self.features, 3, name="conv2")(residual))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = BatchNorm(name="downsample_bn")(conv(self.features, 1, self.stride, name="downsample_conv")(x))
        return jax.nn.relu(shortcut + residual)


class ResNet18(nn.Module):
    """The context path's backbone; returns feat8, feat16, feat32 (no fc)."""
    @nn.compact
    def __call__(self, x):
        x = jax.nn.relu(BatchNorm(name="bn1")(conv(64, 7, 2, name="conv1")(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        feats = []
        for i, (width, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
            x = BasicBlock(width, stride, name=f"layer{i}_0")(x)
            x = BasicBlock(width, 1, name=f"layer{i}_1")(x)
            feats.append(x)
        return feats[1], feats[2], feats[3]


def global_average(x):
    return jnp.mean(x, axis=(1, 2), keepdims=True)


class AttentionRefinement(nn.Module):
    """ARM: feat = ConvBNReLU3x3(x); feat * sigmoid(bn(conv1x1(global_average(feat))))."""
    features: int

    @nn.compact
    def __call__(self, x):
        feat = ConvBNReLU(self.features, 3, name="conv")(x)
        attention = BatchNorm(name="bn_atten")(conv(self.features, 1, name="conv_atten")(global_average(feat)))
        return feat * jax.nn.sigmoid(attention)


class ContextPath(nn.Module):
    """Returns feat8 (ResNet), the context feature at stride 8 and the one at stride 16."""
    @nn.compact
    def __call__(self, x):
        feat8, feat16, feat32 = ResNet18(name="resnet")(x)
        avg = ConvBNReLU(128, 1, name="conv_avg")(global_average(feat32))
        feat32_sum = AttentionRefinement(128, name="arm32")(feat32) + avg  # broadcast == nearest up
        feat32_up = ConvBNReLU(128, 3, name="conv_head32")(resample.nearest_resize(feat32_sum, feat16.shape[1:3]))
        feat16_sum = AttentionRefinement(128, name="arm16")(feat16) + feat32_up
        feat16_up = ConvBNReLU(128, 3, name="conv_head16")(resample.nearest_resize(feat16_sum, feat8.shape[1:3]))
        return feat8, feat16_up, feat32_up


class FeatureFusion(nn.Module):
    """FFM: feat = ConvBNReLU1x1(cat(spatial, context)); feat * (1 + sigmoid(SE(feat)))."""
    features: int = 256

    @nn.compact
    def __call__(self, spatial, context):
        feat = ConvBNReLU(self.features, 1, name="convblk")(jnp.concatenate([spatial, context], axis=-1))
        attention = jax.nn.relu(conv(self.features // 4, 1, name="conv1")(global_average(feat)))
        attention = jax.nn.sigmoid(conv(self.features, 1, name="conv2")(attention))
        return feat * attention + feat


class OutputHead(nn.Module):
    """BiSeNetOutput: ConvBNReLU3x3 to `mid` channels, then a 1x1 conv to the classes."""
    mid: int
    n_classes: int

    @nn.compact
    def __call__(self, x):
        return conv(self.n_classes, 1, name="conv_out")(ConvBNReLU(self.mid, 3, name="conv")(x))


class BiSeNetNet(nn.Module):
    """Normalised image (B, H, W, 3) -> {head: logits at the head's own stride}."""
    n_classes: int

    @nn.compact
    def __call__(self, x):
        feat8, context8, context16 = ContextPath(name="cp")(x)
        fused = FeatureFusion(256, name="ffm")(feat8, context8)
        return {"out": OutputHead(256, self.n_classes, name="conv_out")(fused),
                "out16": OutputHead(64, self.n_classes, name="conv_out16")(context8),
                "out32": OutputHead(64, self.n_classes, name="conv_out32")(context16)}


# ----------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class BiSeNetConfig:
    """The architecture. Default: Barbershop's seg.pth."""
    n_classes: int = 16      # 16 (Barbershop seg.pth) or 19 (zllrunning 79999_iter.pth)
    parse_size: int = 512    # the network's input size in the official pipeline
    dtype: str = "float32"   # compute dtype: float32, or bfloat16 for the whole network (weights
                             # cast at each call, logits returned in float32); a run-time choice,
                             # not saved with the weights

    def __post_init__(self):
        label_map(self.n_classes)  # validates n_classes
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    def to_json(self) -> dict:
        return {"n_classes": self.n_classes, "parse_size": self.parse_size}


def abstract_params(config: BiSeNetConfig):
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(lambda x: BiSeNetNet(config.n_classes).init(jax.random.PRNGKey(0), x), x)["params"]


# ----------------------------------------------------------------------------- frozen model
def normalize(image01):
    """ImageNet normalisation of an image in [0, 1], NHWC."""
    return (image01 - IMAGENET_MEAN) / IMAGENET_STD


def preprocess(image01, *, clamp: bool, parse_size: int = 512):
    """The official parser input: bicubic-downsample by size // parse_size (also at factor 1,
    where it is not the identity), clamp to [0, 1] if `clamp`, ImageNet-normalise."""
    size = image01.shape[1]
    if size % parse_size or image01.shape[2] != size:
        raise ValueError(f"expected a square image whose size is a multiple of {parse_size}, got {image01.shape}")
    x = resample.bicubic_downsample(image01, size // parse_size)
    if clamp:
        x = jnp.clip(x, 0.0, 1.0)
    return normalize(x)


@struct.dataclass
class FaceParser:
    """BiSeNet with frozen weights (a pytree) and the official input handling."""
    params: Any
    config: BiSeNetConfig = struct.field(pytree_node=False)

    @property
    def labels(self) -> LabelMap:
        return label_map(self.config.n_classes)

    def logits(self, x, heads=("out",)):
        """Normalised input (B, H, W, 3) -> {head: (B, H, W, n_classes)} logits, upsampled
        bilinearly (align_corners=True) to H, W. Heads: "out" (main), "out16", "out32"."""
        params = self.params
        if self.config.dtype != "float32":
            # The whole network, batch norms included: with float32 statistics every batch
            # norm would promote the activations back to float32 between the convolutions.
            dtype = jnp.dtype(self.config.dtype)
            params, x = jax.tree.map(lambda p: p.astype(dtype), params), x.astype(dtype)
        raw = BiSeNetNet(self.config.n_classes).apply({"params": params}, x)
        size = x.shape[1:3]
        return {h: resample.bilinear_resize(raw[h].astype(jnp.float32), size, align_corners=True) for h in heads}

    def segment(self, image01, *, clamp: bool = True, parse_size: int | None = None):
        """Main-head logits (B, parse_size, parse_size, n_classes) of an image in [0, 1].

        clamp=True is the official handling of real images (ToTensor of the file); use
        `segment_generated` for generator outputs, which the official code does not clamp."""
        parse_size = parse_size or self.config.parse_size
        return self.logits(preprocess(image01, clamp=clamp, parse_size=parse_size))["out"]

    def segment_generated(self, image, *, parse_size: int | None = None):
        """Logits of a generator image (about [-1, 1]): (image + 1) / 2, not clamped."""
        return self.segment((image + 1.0) / 2.0, clamp=False, parse_size=parse_size)

    def labels_of(self, image01, **kwargs):
        """argmax labels (B, parse_size, parse_size) int32 of `segment`."""
        return jnp.argmax(self.segment(image01, **kwargs), axis=-1).astype(jnp.int32)


def init(config: BiSeNetConfig, key) -> FaceParser:
    """Random weights (normal, variance 1 / fan-in) and identity batch-norm statistics, for
    tests, benchmarks and the embedded default. Drawn with numpy from `key`: no compilation.
    Kept across processes where the runtime keeps them (models.initialised)."""
    return initialised(_drawn, config, key)


def _drawn(config: BiSeNetConfig, key) -> FaceParser:
    shapes = jax.eval_shape(lambda: BiSeNetNet(config.n_classes).init(jax.random.PRNGKey(0),
                                                                       jnp.zeros((1, 64, 64, 3))))["params"]
    # A raw key's bits as they are (not through key_data: runtime/init_cache.py traces this
    # drawing with the key as a constant, which numpy can read only untraced).
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key) if typed else key))

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) / np.sqrt(fan_in))
        return jnp.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

    return FaceParser(params=jax.tree_util.tree_map_with_path(draw, shapes), config=config)


# ----------------------------------------------------------------------------- load
MODEL_NAME = "bisenet"


def load(path) -> FaceParser:
    """Load a converted BiSeNet directory (or a weights root holding `bisenet/`), strictly."""
    from barbershop_jax.models import weights as checkpoint

    root, config = checkpoint.open_model(path, MODEL_NAME, BiSeNetConfig)
    tree = checkpoint.restore_strict(root, {"params": abstract_params(config)})
    return FaceParser(params=jax.tree.map(jnp.asarray, tree["params"]), config=config)


def save(model: FaceParser, dst_root, extra_meta: dict | None = None, overwrite: bool = False):
    """Write `model` as `dst_root/bisenet/` atomically."""
    from barbershop_jax.models import weights as checkpoint

    return checkpoint.save_model_dir(dst_root, MODEL_NAME, model.config.to_json(), {"params": model.params},
                                     extra_meta=extra_meta, overwrite=overwrite)
