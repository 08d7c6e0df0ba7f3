"""What a transfer takes and gives: a target-mask edit, a result, and the names of a
triple's alignments."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from barbershop_jax.pipeline.store import cache as cache_lib
from barbershop_jax.stages import target_mask
from barbershop_jax.pipeline.files.sources import content_hash


@dataclasses.dataclass
class TransferResult:
    """One triple's result and its intermediate results (numpy)."""
    face: str
    shape: str
    color: str
    structure: str              # the structure reference (the shape reference unless one is given)
    image: np.ndarray           # (size, size, 3) uint8: the result
    target_labels: np.ndarray   # (P, P) int32: the target mask of (face, shape)
    latent_in: np.ndarray       # (n_latent, d): the blended latents
    structure_f: np.ndarray     # (r, r, C): F aligned to the structure (= shape) reference
    face_mask: np.ndarray | None  # (L, L): the blend's face region (None when read from the cache)
    hair_mask: np.ndarray | None  # (L, L): the blend's colour-reference region (hair by default; likewise)
    path: Path                  # the result PNG
    pasted: np.ndarray | None = None    # with paste-back: the face's photo with the result in it
    pasted_path: Path | None = None     # ... and its PNG


@dataclasses.dataclass(frozen=True)
class TargetEdit:
    """A change to the target mask of a triple's (face, shape) pair.

    target: (P, P) class ids that replace the computed target mask (P: the parse size;
    store.read_label_png reads and checks one from a file); shape_transform:
    (scale, dx, dy) applied to the shape reference's region (hair by default) before the
    merge (stages.target_mask.move_region). Either may be None."""
    target: np.ndarray | None = None
    shape_transform: tuple | None = None

    def __post_init__(self):
        if self.shape_transform is not None:  # three finite numbers in range, before any work
            object.__setattr__(self, "shape_transform", target_mask.check_shape_transform(self.shape_transform))

    def tag(self) -> str:
        """A digest of the edit, for cache keys ("" for no edit)."""
        parts = []
        if self.target is not None:
            parts.append(content_hash(np.asarray(self.target, np.int32)))
        if self.shape_transform is not None:
            parts.append(repr(tuple(float(v) for v in self.shape_transform)))
        return cache_lib.digest(*parts) if parts else ""




def alignments(t) -> tuple:
    """The two alignments a triple (face, shape, color, structure) needs: the face to the
    structure reference under the (face, shape) target mask, and to the colour reference."""
    face, shape, color, structure = t
    return (face, shape, structure), (face, color, color)
