"""Settings and models of the transfer stages (target mask, alignment, blending).

Defaults are the official command-line defaults (Barbershop main.py) and the constants its
stages hard-code; every departure is a named option. Sizes: the official code parses faces at
512 px (`parse_size`), computes its masks, style and blend losses at 256 px (`loss_size`), and
mixes F on its own grid (32x32 at block 3); `resolve` shrinks the first two for generators
below 1024 px so that the small configs of tests and the demo run the same code. `region`
generalises the official's hair to any labels of the parser (target_mask.py: the rule).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

SIGNS = ("realistic", "fidelity")
DEFAULT_REGION = "hair"  # the official code transfers hair only


class Models(NamedTuple):
    """The frozen models the transfer stages share (replicated over devices)."""
    generator: object  # models.stylegan2.StyleGAN2
    parser: object     # models.bisenet.FaceParser
    vgg: object        # models.vgg16.VGG16 with its LPIPS linear layers


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
    seed: int = 0
    chunk: int | None = None        # steps per compiled scan (None: optimize.loop_defaults)

    def __post_init__(self):
        # One spelling per region set ("eyes, brows" -> "brows,eyes"): it is part of cache keys
        # and file names. The names are checked against the parser's labels by region_ids.
        names = self.region.split(",") if isinstance(self.region, str) else list(self.region)
        object.__setattr__(self, "region", ",".join(sorted({n.strip() for n in names if n.strip()})))
        if not self.region:
            raise ValueError(f"region: no label name given (e.g. {DEFAULT_REGION!r} or 'brows,eyes')")
        if self.sign not in SIGNS:
            raise ValueError(f"sign must be one of {SIGNS}, got {self.sign!r}")
        from barbershop_jax.optimize import check_counts
        check_counts("TransferConfig", smooth=self.smooth, blend_smooth=self.blend_smooth,
                     inpaint_steps=self.inpaint_steps, align_steps1=self.align_steps1,
                     align_steps2=self.align_steps2, blend_steps=self.blend_steps)
        check_counts("TransferConfig", 1, align_latents=self.align_latents,
                     **({} if self.chunk is None else {"chunk": self.chunk}))
        for name in ("ce_lambda", "style_lambda", "face_lambda", "hair_lambda"):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ValueError(f"TransferConfig: {name} must be at least 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TransferConfig: learning_rate must be above 0, got {self.learning_rate!r}")

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
                     seed=0, chunk=None)
        for name in keep:
            del blank[name]
        return dataclasses.replace(self, **blank)

    def region_ids(self, label_map) -> tuple:
        """The class ids of `region` in a parser's label map (a ValueError for unknown names)."""
        return label_map.region_ids(self.region)

    def region_classes(self, label_map):
        """`region` as the stages take it: (n_classes,) float32, 1.0 at its classes."""
        from barbershop_jax import masks
        return masks.class_mask(self.region_ids(label_map), len(label_map.names))

    def check_resolved(self):
        if None in (self.parse_size, self.loss_size, self.blend_parse_size):
            raise ValueError("TransferConfig sizes unset: call cfg.resolve(generator size) first")
