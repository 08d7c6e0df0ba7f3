"""Every setting of the pipeline in one place: its official default, its checks, and its
resolution by generator size.

Defaults are the official command-line defaults (Barbershop main.py) and the constants its
stages hard-code; every departure is a named option.

- `EmbedConfig`: the W+ and FS embedding (models/Embedding.py).
- `TransferConfig`: the target mask, alignment and blending. Sizes: the official code parses
  faces at 512 px (`parse_size`), computes its masks, style and blend losses at 256 px
  (`loss_size`), and mixes F on its own grid (32x32 at `fs_block` 3); `resolve` shrinks the
  first two for generators below 1024 px, so that the small configs of tests and the demo run
  the same code. `region` generalises the official's hair to any labels of the parser
  (stages/target_mask.py: the rule).
- The run's own settings (batch size, checkpoints, waves, paste-back feather), which the
  command line, the Python API and the pipeline share.
"""
from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_BATCH_SIZE = 4        # images, pairs or triples optimised together
DEFAULT_CHECKPOINT_EVERY = 50  # steps between loop checkpoints; at 1024 px on a GPU, well under a minute
FEATHER = 0.025               # paste-back: the mask's soft edge, a fraction of the side (25 px at 1024)
TRANSFER_WAVE = 256           # triples per transfer_many call of HairTransfer.transfer_files
EMBED_WAVE = 1024             # images per embed call of pipeline.embed_files
FS_BLOCK = 3                  # F = the features after this block (32x32 at any size), official


def check_counts(owner: str, minimum: int = 0, **values):
    """ValueError naming `owner` and the field unless every value is a whole number (not a
    bool) of at least `minimum`: step counts (0 skips a stage), batch sizes (minimum 1), chunk
    lengths. Checked before any work: a negative batch size once ran nothing and reported
    success, a negative step count silently skipped its stage."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{owner}: {name} must be a whole number of at least {minimum}, got {value!r}")


def _check_weights(owner, cfg, names):
    for name in names:
        if not getattr(cfg, name) >= 0:  # NaN fails too
            raise ValueError(f"{owner}: {name} must be at least 0, got {getattr(cfg, name)!r}")
    if not cfg.learning_rate > 0:
        raise ValueError(f"{owner}: learning_rate must be above 0, got {cfg.learning_rate!r}")


def f_shape(generator_config, block: int = FS_BLOCK) -> tuple:
    """(r, r, C) of F, the features after `block`: (32, 32, 512) at block 3 at any size."""
    r = 2 ** (block + 2)
    return (r, r, generator_config.channels(r))


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """Embedding hyperparameters; defaults are the official command-line defaults."""
    w_steps: int = 1100            # W+ Adam steps (W_steps)
    fs_steps: int = 250            # FS Adam steps (FS_steps)
    learning_rate: float = 0.01    # Adam learning rate (lr_embedding)
    l2_lambda: float = 1.0         # weight of the full-size MSE
    percept_lambda: float = 1.0    # weight of the LPIPS term
    p_norm_lambda: float = 0.001   # weight of the p-norm latent regulariser
    l_f_lambda: float = 0.0        # weight of mean((F - F_init)^2); official declares 0.1, applies 0
    lpips_size: int = 256          # LPIPS resolution (generated image bicubic-downsampled to it)
    fs_block: int = FS_BLOCK       # F = features after this block (3: 32x32 at any size)
    noise: str = "random"          # "random" (official), "const" or "none"
    seed: int = 0                  # root of the per-image noise keys
    chunk: int | None = None       # steps per compiled scan (None: stages.loop.loop_defaults)

    def __post_init__(self):
        check_counts("EmbedConfig", w_steps=self.w_steps, fs_steps=self.fs_steps, fs_block=self.fs_block)
        if self.chunk is not None:
            check_counts("EmbedConfig", 1, chunk=self.chunk)
        _check_weights("EmbedConfig", self, ("l2_lambda", "percept_lambda", "p_norm_lambda", "l_f_lambda"))

    @classmethod
    def for_size(cls, size: int, **overrides) -> "EmbedConfig":
        """The official settings, with the LPIPS size shrunk for generators below 256 px."""
        base = {} if size >= 256 else {"lpips_size": size // 2}
        return cls(**{**base, **overrides})

    def step_config(self) -> "EmbedConfig":
        """The fields the optimisation steps read; the rest blanked (the loop's compile key).
        The learning rate is data (the optimiser's state: stages/optim.py), so a new value
        compiles nothing either."""
        return dataclasses.replace(self, w_steps=0, fs_steps=0, seed=0, chunk=None, learning_rate=0.01)

    def s_index(self, n_latent: int) -> int:
        """First optimised S vector: n_latent - 11 as the official code (7 at 1024 px); the ones
        before first_latent(fs_block + 1) are optimised but only the p-norm sees them."""
        return max(0, n_latent - 11)


SIGNS = ("realistic", "fidelity")
DEFAULT_REGION = "hair"  # the official code transfers hair only


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    sign: str = "realistic"         # target-mask inpainting loss: "realistic" or "fidelity"
    region: str = DEFAULT_REGION    # what is transferred: label names, comma-separated ("brows,eyes")
    smooth: int = 5                 # dilation/erosion iterations of the F-mixing masks
    learning_rate: float = 0.01     # Adam, every stage
    ce_lambda: float = 1.0          # segmentation cross-entropy weight
    style_lambda: float = 4e4       # align step 2 Gram style loss weight
    face_lambda: float = 1.0        # blend: masked LPIPS against the face
    hair_lambda: float = 1.0        # blend: masked LPIPS against the colour reference's hair
    inpaint_steps: int = 80         # each of the two GAN-inpainting rounds (hard-coded 80)
    align_steps1: int = 140
    align_steps2: int = 100
    blend_steps: int = 400
    align_latents: int = 6          # alignment and inpainting optimise w[0:6] (hard-coded)
    align_more_region: bool = False  # official option (main.py always passes False)
    blend_smooth: int = 5           # the blend mask helper's hard-coded 5 iterations
    parse_size: int | None = None   # parser input size (official: size // (size // 512) = 512)
    loss_size: int | None = None    # masks, style loss, blend LPIPS (official: 256)
    blend_parse_size: int | None = None  # blend's real-image hair masks (official: size // 2)
    guard_empty: bool = True        # an empty mask gives a 0 loss term (official: NaN)
    noise: str = "random"           # "random" (official: fresh at every render), "const", "none"
    fs_block: int = FS_BLOCK        # F's block: the embedding's (EmbedConfig.fs_block), which F mixing uses
    seed: int = 0
    chunk: int | None = None        # steps per compiled scan (None: stages.loop.loop_defaults)

    def __post_init__(self):
        # One spelling per region set ("eyes, brows" -> "brows,eyes"): it is part of cache keys
        # and file names. The names are checked against the parser's labels by region_ids.
        names = self.region.split(",") if isinstance(self.region, str) else list(self.region)
        object.__setattr__(self, "region", ",".join(sorted({n.strip() for n in names if n.strip()})))
        if not self.region:
            raise ValueError(f"region: no label name given (e.g. {DEFAULT_REGION!r} or 'brows,eyes')")
        if self.sign not in SIGNS:
            raise ValueError(f"sign must be one of {SIGNS}, got {self.sign!r}")
        check_counts("TransferConfig", smooth=self.smooth, blend_smooth=self.blend_smooth,
                     inpaint_steps=self.inpaint_steps, align_steps1=self.align_steps1,
                     align_steps2=self.align_steps2, blend_steps=self.blend_steps)
        check_counts("TransferConfig", 1, align_latents=self.align_latents,
                     **({} if self.chunk is None else {"chunk": self.chunk}))
        check_counts("TransferConfig", fs_block=self.fs_block)
        _check_weights("TransferConfig", self, ("ce_lambda", "style_lambda", "face_lambda", "hair_lambda"))

    def resolve(self, size: int) -> "TransferConfig":
        """Fill the sizes for a generator of `size` px: the official values at 1024."""
        parse = self.parse_size or min(512, size)
        loss = self.loss_size or min(256, size // 2)
        blend_parse = self.blend_parse_size or size // 2
        for name, value in (("parse_size", parse), ("loss_size", loss), ("blend_parse_size", blend_parse)):
            if value <= 0 or size % value:
                raise ValueError(f"{name} {value} must divide the generator size {size}")
        return dataclasses.replace(self, parse_size=parse, loss_size=loss, blend_parse_size=blend_parse)

    def step_config(self, keep: tuple = ()) -> "TransferConfig":
        """A compiled program's key: the fields the optimisation steps read, the others blanked
        (the inpainting rounds and align step 1 share one compiled step whatever the sign;
        step counts, seed and chunking recompile nothing). The region is blanked too: the
        stages take it as data (masks.class_mask), so every region runs the same programs.
        keep: blanked fields that a program outside the loops also reads (the F mixing's
        `smooth`, the blend masks' `blend_smooth`)."""
        blank = dict(sign="realistic", region=DEFAULT_REGION, smooth=0, inpaint_steps=0, align_steps1=0,
                     align_steps2=0, blend_steps=0, align_more_region=False, blend_smooth=0, blend_parse_size=None,
                     seed=0, chunk=None, learning_rate=0.01)  # the learning rate is data (stages/optim.py)
        for name in keep:
            del blank[name]
        return dataclasses.replace(self, **blank)

    def region_ids(self, label_map) -> tuple:
        """The class ids of `region` in a parser's label map (a ValueError for unknown names)."""
        return label_map.region_ids(self.region)

    def region_classes(self, label_map):
        """`region` as the stages take it: (n_classes,) float32, 1.0 at its classes."""
        from barbershop_jax.ops import masks
        return masks.class_mask(self.region_ids(label_map), len(label_map.names))

    def check_resolved(self):
        if None in (self.parse_size, self.loss_size, self.blend_parse_size):
            raise ValueError("TransferConfig sizes unset: call cfg.resolve(generator size) first")


_EMBED_FIELDS = {f.name for f in dataclasses.fields(EmbedConfig)}
_TRANSFER_FIELDS = {f.name for f in dataclasses.fields(TransferConfig)}


def split_options(options: dict):
    """Keyword options -> (EmbedConfig overrides, TransferConfig overrides). Names both know
    (learning_rate, noise, seed, chunk, fs_block) go to both, as the official's one set of
    flags does."""
    unknown = set(options) - _EMBED_FIELDS - _TRANSFER_FIELDS
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return ({k: v for k, v in options.items() if k in _EMBED_FIELDS},
            {k: v for k, v in options.items() if k in _TRANSFER_FIELDS})
