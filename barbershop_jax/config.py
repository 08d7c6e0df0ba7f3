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
import math

import numpy as np

DEFAULT_BATCH_SIZE = 4        # images, pairs or triples optimised together
DEFAULT_CHECKPOINT_EVERY = 50  # steps between loop checkpoints; at 1024 px on a GPU, well under a minute
FEATHER = 0.025               # paste-back: the mask's soft edge, a fraction of the side (25 px at 1024)
TRANSFER_WAVE = 256           # triples per transfer_many call of HairTransfer.transfer_files
EMBED_WAVE = 1024             # images per embed call of pipeline.embed_files
FS_BLOCK = 3                  # F = the features after this block (32x32 at any size), official


# ------------------------------------------------------------------ every number's range
# One table for every number a run takes, read by the command line's argparse types
# (cli/args.py), the configs' checks below, and the Python API's keyword arguments
# (check_numbers), so that a value refused in one is refused in all, before any work: a step
# count of 10**30 was taken as given, a seed of 2**32 draws the noise of seed 0
# (jax.random.PRNGKey keeps 32 bits), an infinite weight or learning rate can only give NaN,
# a smoothing of 10**6 would unroll a million mask operations into one compiled program.
MAX_STEPS = 1_000_000         # steps of one loop (the official at most 1100)
MAX_BATCH_SIZE = 4096         # images, pairs or triples optimised together
MAX_SEED = 2**32 - 1          # jax.random.PRNGKey keeps 32 bits
MAX_SMOOTH = 1024             # mask dilations, unrolled when compiled; a 1024 px mask is full long before
MAX_SIZE = 4096               # image sides: crops, the LPIPS, parse and loss sizes
MAX_FS_BLOCK = 8              # F's block: 2 ** (block + 2) px, up to the largest generator (1024 px)
MAX_LATENTS = 18              # W+ vectors of the largest generator (1024 px)
MAX_COUNT = 2**31 - 1         # any other count or index: the devices' int32
FLOAT32_MAX = float(np.finfo(np.float32).max)  # weights are float32 on the device: larger is infinity


@dataclasses.dataclass(frozen=True)
class Limit:
    """The range of one number: whole (`kind` int) or real (float, finite), least..most;
    above: least itself refused (a learning rate of 0 learns nothing)."""
    kind: type
    least: float
    most: float
    above: bool = False

    def problem(self, value) -> str | None:
        """Why `value` is refused (what it must be), or None when it is within the limit."""
        if self.kind is int:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            ok = ok and self.least <= value <= self.most
            return None if ok else f"must be a whole number of at least {self.least} and at most {self.most}"
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        try:
            number = float(value) if ok else math.nan  # a Python int past float's range overflows
        except OverflowError:
            number = math.nan
        ok = math.isfinite(number) and (self.least < number if self.above else self.least <= number)
        return None if ok and number <= self.most else f"must be {self.words()}"

    def words(self) -> str:
        low = f"above {self.least:g}" if self.above else f"at least {self.least:g}"
        return f"{low} and at most {self.most:g} (a finite number)"


_STEPS, _LAMBDA = Limit(int, 0, MAX_STEPS), Limit(float, 0.0, FLOAT32_MAX)
_SIZE = Limit(int, 1, MAX_SIZE)
LIMITS = {
    **dict.fromkeys(("w_steps", "fs_steps", "inpaint_steps", "align_steps1", "align_steps2", "blend_steps",
                     "checkpoint_every"), _STEPS),
    "chunk": Limit(int, 1, MAX_STEPS),
    "batch_size": Limit(int, 1, MAX_BATCH_SIZE),
    "wave": Limit(int, 1, MAX_COUNT),
    "seed": Limit(int, 0, MAX_SEED),
    **dict.fromkeys(("smooth", "blend_smooth"), Limit(int, 0, MAX_SMOOTH)),
    "align_latents": Limit(int, 1, MAX_LATENTS),
    "fs_block": Limit(int, 0, MAX_FS_BLOCK),
    **dict.fromkeys(("size", "lpips_size", "parse_size", "loss_size", "blend_parse_size"), _SIZE),
    "learning_rate": Limit(float, 0.0, FLOAT32_MAX, above=True),
    "warmup": Limit(float, 0.0, 1.0),  # an optimiser's warmup: a fraction of its stage's steps
    "stop": Limit(float, 0.0, 1.0),    # its stopping rule: the least relative improvement
    "window": Limit(int, 1, MAX_STEPS),  # ... over this many steps
    **dict.fromkeys(("l2_lambda", "percept_lambda", "p_norm_lambda", "l_f_lambda", "ce_lambda", "style_lambda",
                     "face_lambda", "hair_lambda"), _LAMBDA),
    # paste-back: the soft edge, a fraction of the side; past half, no pixel is fully pasted
    "feather": Limit(float, 0.0, 0.5),
    "min_face": Limit(float, 0.0, FLOAT32_MAX),  # photo pixels
    "face_index": Limit(int, 0, MAX_COUNT),
    "scale": Limit(float, 0.0, 100.0, above=True),  # shape transform: the region's scale
    **dict.fromkeys(("dx", "dy"), Limit(float, -MAX_SIZE, MAX_SIZE)),  # and its move, pixels
}


def shown(value, limit: int = 40) -> str:
    """repr(value) cut to `limit` characters (a 5,000-digit number is refused by repr)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"a {type(value).__name__} of more than 4,300 digits"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_numbers(owner: str, **values):
    """ValueError naming `owner` and the field unless every value is within its LIMITS entry
    (of its name): of the right kind (no bools, no strings), finite, in range."""
    for name, value in values.items():
        problem = LIMITS[name].problem(value)
        if problem:
            raise ValueError(f"{owner}: {name} {problem}, got {shown(value)}")


# ------------------------------------------------------------------ optimisers as data
# Each optimisation stage's optimiser is a short text, so that it fits a config field, a command
# line flag, a CSV cell and a cache key: an optax optimiser's name and keyword arguments, as in
# "adam" (the official, every stage's default), "lion(b1=0.95, learning_rate=0.001)" or
# "sgd(momentum=0.9, schedule='cosine', warmup=0.05)". Some keywords are ours: `schedule`, the
# learning rate over the stage's steps ("constant", "cosine" or "linear" decay to 0), and
# `warmup`, the fraction of the steps over which it first rises linearly; `learning_rate`
# overrides the stage's (the config's learning_rate); `stop` and `window`, a stopping rule: an
# image stops once its loss has improved by less than the fraction `stop` over its last `window`
# steps (stages/loop.py, per image inside a batch; off unless `stop` is given).
# stages/optim.py builds the optax transform; the text is checked here, before any work.
DEFAULT_OPTIMIZER = "adam"
SCHEDULES = ("constant", "cosine", "linear")
DEFAULT_WINDOW = 50  # steps of the stopping rule's window (stop=...): 5% of the official W+ loop
OPTIMIZER_FIELDS = ("w_optimizer", "fs_optimizer", "inpaint_optimizer", "align_optimizer", "blend_optimizer")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimiser text, parsed: optax's `name`, its keyword arguments (sorted (name, value)
    pairs), the learning-rate schedule and warmup fraction, and the learning rate when the
    text sets one (None: the stage's)."""
    name: str
    hyperparams: tuple = ()
    schedule: str = "constant"
    warmup: float = 0.0
    learning_rate: float | None = None
    stop: float | None = None   # the stopping rule's relative tolerance (None: no rule)
    window: int = DEFAULT_WINDOW  # ... over this many steps

    def text(self) -> str:
        """The one spelling of this spec (config fields, cache keys and file names use it)."""
        args = dict(self.hyperparams)
        if self.learning_rate is not None:
            args["learning_rate"] = self.learning_rate
        if self.schedule != "constant":
            args["schedule"] = self.schedule
        if self.warmup:
            args["warmup"] = self.warmup
        if self.stop is not None:
            args.update(stop=self.stop, window=self.window)
        inner = ", ".join(f"{k}={v!r}" for k, v in sorted(args.items()))
        return f"{self.name}({inner})" if inner else self.name


def optimizer_spec(text: str, owner: str = "optimizer") -> OptimizerSpec:
    """Parse and check an optimiser text (see above): ValueError naming `owner` and what is
    wrong. Values are Python literals (numbers, True/False/None, quoted strings), read with
    ast.literal_eval: nothing in the text is ever run."""
    import ast
    if not isinstance(text, str):
        raise ValueError(f"{owner}: must be a text such as 'adam' or 'lion(b1=0.95)', got {shown(text)}")
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        node = None
    if isinstance(node, ast.Name):
        node = ast.Call(func=node, args=[], keywords=[])
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args
            and all(k.arg for k in node.keywords)):
        raise ValueError(f"{owner}: {shown(text)} is not an optimiser: write NAME or NAME(key=value, ...), "
                         f"e.g. 'adam' or 'lion(b1=0.95)'")
    try:
        args = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
        raise ValueError(f"{owner}: the values in {shown(text)} must be numbers, True, False, None or quoted "
                         f"text") from None
    return _checked_spec(owner, node.func.id, args)


def _checked_spec(owner: str, name: str, args: dict) -> OptimizerSpec:
    import inspect

    import optax
    factory = getattr(optax, name, None)
    parameters = inspect.signature(factory).parameters if callable(factory) and not name.startswith("_") else {}
    if list(parameters)[:1] != ["learning_rate"]:
        raise ValueError(f"{owner}: {name!r} is not an optax optimiser taking a learning rate (e.g. adam, adamw, "
                         f"lion, sgd, rmsprop, adabelief)")
    schedule, warmup = args.pop("schedule", "constant"), args.pop("warmup", 0.0)
    learning_rate = args.pop("learning_rate", None)
    stop, window = args.pop("stop", None), args.pop("window", None)
    unknown = sorted(set(args) - set(parameters))
    if unknown:
        raise ValueError(f"{owner}: optax.{name} takes no {', '.join(unknown)} (it takes "
                         f"{', '.join(list(parameters)[1:])}; ours: schedule, warmup, stop, window)")
    for key, value in args.items():  # the program takes them as float32 constants
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                finite = math.isfinite(float(value)) and abs(float(value)) <= FLOAT32_MAX
            except OverflowError:  # an int past float's range
                finite = False
            if not finite:
                raise ValueError(f"{owner}: {key} must be a finite number within float32's range, got {shown(value)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"{owner}: schedule must be one of {', '.join(SCHEDULES)}, got {shown(schedule)}")
    check_numbers(owner, warmup=warmup)
    if learning_rate is not None:
        check_numbers(owner, learning_rate=learning_rate)
    if window is not None and stop is None:
        raise ValueError(f"{owner}: window is the stopping rule's: give stop too, e.g. stop=0.001, window={window}")
    if stop is not None:
        check_numbers(owner, stop=stop, window=DEFAULT_WINDOW if window is None else window)
    return OptimizerSpec(name, tuple(sorted(args.items())), schedule, float(warmup),
                         None if learning_rate is None else float(learning_rate),
                         None if stop is None else float(stop), DEFAULT_WINDOW if window is None else window)


def _normalise_optimizers(owner: str, cfg):
    """Each optimiser field of `cfg` checked and rewritten in its one spelling."""
    for field in OPTIMIZER_FIELDS:
        if hasattr(cfg, field):
            spec = optimizer_spec(getattr(cfg, field), f"{owner}: {field}")
            object.__setattr__(cfg, field, spec.text())


NOISE_MODES = ("random", "const", "none")  # models.stylegan2's, which this module does not import (jax)
OPTIONAL_FLAGS = ("unroll",)  # flags whose None means the backend's default


def check_fields(owner: str, cfg):
    """Every field of a config dataclass checked before any work: numbers by LIMITS (None
    allowed where the field's default is None: resolved later), flags are bools (those of
    OPTIONAL_FLAGS may be None), the noise mode one of NOISE_MODES."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name in LIMITS and not (value is None and field.default is None):
            check_numbers(owner, **{field.name: value})
        elif isinstance(field.default, bool) or (field.name in OPTIONAL_FLAGS and value is not None):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{owner}: {field.name} must be True or False, got {shown(value)}")
    if cfg.noise not in NOISE_MODES:
        raise ValueError(f"{owner}: noise must be one of {', '.join(NOISE_MODES)}, got {shown(cfg.noise)}")


def check_block(owner: str, block: int, size: int):
    """F's block must lie inside a generator of `size` px: its features are 2 ** (block + 2) px."""
    if 2 ** (block + 2) > size:
        raise ValueError(f"{owner}: fs_block {block} has {2 ** (block + 2)} px features, more than the generator's "
                         f"{size} px")


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
    unroll: bool | None = None     # unroll each scan's steps (None: stages.loop.loop_defaults)
    w_optimizer: str = DEFAULT_OPTIMIZER   # the W+ loop's optimiser (official: Adam; see OptimizerSpec)
    fs_optimizer: str = DEFAULT_OPTIMIZER  # the FS loop's

    def __post_init__(self):
        check_fields("EmbedConfig", self)
        _normalise_optimizers("EmbedConfig", self)

    @classmethod
    def for_size(cls, size: int, **overrides) -> "EmbedConfig":
        """The official settings, with the LPIPS size shrunk for generators below 256 px."""
        base = {} if size >= 256 else {"lpips_size": size // 2}
        return cls(**{**base, **overrides}).check_size(size)

    def check_size(self, size: int) -> "EmbedConfig":
        """self, or a ValueError when it does not fit a generator of `size` px (F's block, the
        LPIPS size), found before any work rather than when the first program compiles."""
        check_block("EmbedConfig", self.fs_block, size)
        if size % self.lpips_size:
            raise ValueError(f"EmbedConfig: lpips_size {self.lpips_size} must divide the generator size {size}")
        return self

    def step_config(self) -> "EmbedConfig":
        """The fields the optimisation steps read; the rest blanked (the loop's compile key).
        The learning rate is data (the optimiser's state: stages/optim.py), so a new value
        compiles nothing either."""
        return dataclasses.replace(self, w_steps=0, fs_steps=0, seed=0, chunk=None, unroll=None, learning_rate=0.01)

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
    unroll: bool | None = None      # unroll each scan's steps (None: stages.loop.loop_defaults)
    inpaint_optimizer: str = DEFAULT_OPTIMIZER  # the target mask's inpainting rounds (official: Adam)
    align_optimizer: str = DEFAULT_OPTIMIZER    # both alignment steps
    blend_optimizer: str = DEFAULT_OPTIMIZER    # the blend (its [0, 1] projection follows any update)

    def __post_init__(self):
        # One spelling per region set ("eyes, brows" -> "brows,eyes"): it is part of cache keys
        # and file names. The names are checked against the parser's labels by region_ids.
        if not (isinstance(self.region, str) or isinstance(self.region, (list, tuple))
                and all(isinstance(n, str) for n in self.region)):
            raise ValueError(f"TransferConfig: region must be label names (a string, e.g. {DEFAULT_REGION!r}, "
                             f"or a list of them), got {shown(self.region)}")
        names = self.region.split(",") if isinstance(self.region, str) else list(self.region)
        object.__setattr__(self, "region", ",".join(sorted({n.strip() for n in names if n.strip()})))
        if not self.region:
            raise ValueError(f"region: no label name given (e.g. {DEFAULT_REGION!r} or 'brows,eyes')")
        if self.sign not in SIGNS:
            raise ValueError(f"sign must be one of {SIGNS}, got {self.sign!r}")
        check_fields("TransferConfig", self)
        _normalise_optimizers("TransferConfig", self)

    def resolve(self, size: int) -> "TransferConfig":
        """Fill the sizes for a generator of `size` px: the official values at 1024."""
        parse = self.parse_size or min(512, size)
        loss = self.loss_size or min(256, size // 2)
        blend_parse = self.blend_parse_size or size // 2
        for name, value in (("parse_size", parse), ("loss_size", loss), ("blend_parse_size", blend_parse)):
            if value <= 0 or size % value:
                raise ValueError(f"{name} {value} must divide the generator size {size}")
        check_block("TransferConfig", self.fs_block, size)
        n_latent = 2 * int(math.log2(size)) - 2
        if self.align_latents > n_latent:
            raise ValueError(f"TransferConfig: align_latents {self.align_latents} is more than the {n_latent} W+ "
                             f"vectors of a {size} px generator")
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
                     seed=0, chunk=None, unroll=None, learning_rate=0.01)  # the learning rate is data (stages/optim.py)
        for name in keep:
            del blank[name]
        return dataclasses.replace(self, **blank)

    def for_inpainting(self) -> "TransferConfig":
        """The config of the target mask's inpainting rounds: they run align step 1's step
        (stages/align.py segmentation_step, which reads `align_optimizer`) with their own
        optimiser. With the same optimiser (the default) it is the same program."""
        return dataclasses.replace(self, align_optimizer=self.inpaint_optimizer)

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
    (learning_rate, noise, seed, chunk, unroll, fs_block) go to both, as the official's one set of
    flags does."""
    unknown = set(options) - _EMBED_FIELDS - _TRANSFER_FIELDS
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return ({k: v for k, v in options.items() if k in _EMBED_FIELDS},
            {k: v for k, v in options.items() if k in _TRANSFER_FIELDS})
