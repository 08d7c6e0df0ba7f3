"""What the stages of one run share: the models and settings, the output folder's layout, the
run's images and edits, and the cache keys built from them, with the run's bookkeeping (time
per stage, failures, what was reused, the background writes).

Internally a triple is (face, shape, color, structure), structure = shape unless given; an
alignment is (face, mask reference, latent reference): the face aligned to the latent
reference under the target mask of (face, mask reference)."""
from __future__ import annotations

import contextlib
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax import config as config_lib
from barbershop_jax.config import EmbedConfig, TransferConfig
from barbershop_jax.models.bundle import Models
from barbershop_jax.pipeline.files import sources as sources_lib
from barbershop_jax.pipeline.runtime.settings import RunSettings
from barbershop_jax.pipeline.store import cache
from barbershop_jax.pipeline.store.layout import Layout
from barbershop_jax.pipeline.store.records import TargetEdit
from barbershop_jax.stages import rehearsal
from barbershop_jax.stages.loop import image_key


class _Done:
    """The future of a write done at once (outside a run's BackgroundWrites)."""

    @staticmethod
    def exception():
        return None


@dataclasses.dataclass(kw_only=True)
class RunContext:
    """A run's output folder and settings, and its bookkeeping: what every batched stage
    (stage_runner.py) needs."""
    layout: Layout
    settings: RunSettings = RunSettings()
    reuse: cache.Reuse = dataclasses.field(default_factory=cache.Reuse)
    decoded: sources_lib.DecodedImages | None = None              # each image decoded once for the run
    timings: dict = dataclasses.field(default_factory=dict)      # stage -> seconds (the end-of-run table)
    failures: list = dataclasses.field(default_factory=list)     # (what failed, reason)
    writes: object = None             # files.image_files.BackgroundWrites while a run writes in the background

    @contextlib.contextmanager
    def timed(self, stage: str):
        """Adds the block's wall time to timings[stage]."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    def write(self, fn, *args, after=(), cleanup: bool = False):
        """fn(*args) on the run's writer threads (BackgroundWrites: `after`, `cleanup`), or now
        outside a run; never in a rehearsal (stages/rehearsal.py), whose arrays are zeros."""
        if rehearsal.active():
            return _Done()
        if self.writes is None:
            if not any(f.exception() is not None for f in after):
                fn(*args)
            return _Done()
        return self.writes.submit(fn, *args, after=after, cleanup=cleanup)


@dataclasses.dataclass(kw_only=True)
class TransferContext(RunContext):
    """A transfer's run: its models and settings, its images (by name) and target-mask edits
    (by (face, shape) pair), and the cache keys and noise keys built from them."""
    models: Models
    embed_cfg: EmbedConfig
    cfg: TransferConfig               # resolved for the generator's size
    sources: dict = dataclasses.field(default_factory=dict)      # name -> sources.ImageSource
    edits: dict = dataclasses.field(default_factory=dict)        # (face, shape) -> TargetEdit
    parsed: dict = dataclasses.field(default_factory=dict)       # name -> (labels, blend labels): parse.py

    def __post_init__(self):
        self.decoded = self.decoded or sources_lib.DecodedImages(self.size)
        self.weights = cache.transfer_weights(self.models)
        self.region = self.cfg.region_ids(self.models.parser.labels)  # checks the names before any work
        self.region_classes = self.cfg.region_classes(self.models.parser.labels)  # as the stages take it
        g = self.models.generator.config
        self.latent_shape = (g.n_latent, g.style_dim)
        self.f_shape = config_lib.f_shape(g, self.cfg.fs_block)

    @property
    def size(self) -> int:
        return self.models.generator.config.size

    # --- what a stage's items depend on
    def edit(self, face: str, shape: str) -> TargetEdit:
        return self.edits.get((face, shape)) or TargetEdit()

    def noise_key(self, *names) -> jax.Array:
        """The optimisation's noise key, from the images it depends on."""
        return image_key(self.cfg.seed, cache.digest(*(self.sources[n].image_hash for n in names)))

    def align_key(self, face: str, shape: str, ref: str) -> str:
        """The cache key of an alignment: its images (the official pair, or all three), weights,
        settings and target-mask edit."""
        names = (face, ref) if ref == shape else (face, shape, ref)
        return cache.stage_key("Align", [self.sources[n].image_hash for n in names], self.weights, self.embed_cfg,
                               self.cfg, cache.ALIGN_FIELDS, self.edit(face, shape).tag())

    def blend_key(self, t) -> str:
        """The cache key of a triple's blend: its images, weights, settings and edits."""
        face, shape, color, structure = t
        names = (face, shape, color) if structure == shape else t
        edits = (self.edit(face, shape).tag(), self.edit(face, color).tag())
        return cache.stage_key("Blend", [self.sources[n].image_hash for n in names], self.weights, self.embed_cfg,
                               self.cfg, cache.ALIGN_FIELDS + cache.BLEND_FIELDS,
                               cache.digest(*edits) if any(edits) else "")

    # --- the transferred region
    def region_of(self, labels) -> np.ndarray:
        """The transferred region of a label map, float 0/1."""
        return np.isin(labels, self.region).astype(np.float32)

    def region_batch(self, n: int) -> jax.Array:
        """The region as the stages take it (a class mask), for a batch of n."""
        return jnp.asarray(np.stack([self.region_classes] * n))
