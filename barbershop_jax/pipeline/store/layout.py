"""Every file name under an output folder, in one place: the official layout, so that the
official code reads ours and ours reads theirs, and ours beside it.

    W+/{name}.npy, FS/{name}.npz                        embeddings (cache.py)
    vis_mask_{face}_{shape}_{tag}.png                   a target mask, coloured
    Align_{tag}/{face}_{ref}.npz  (.png)                latent_in, latent_F (NCHW)
    Blend_{tag}/{face}_{shape}_{color}.npz  (.png)      latent_in, latent_F
    {face}_{shape}_{color}_{tag}.png                    the result

tag = sign (official) for hair, {sign}_{region} otherwise (e.g. realistic_brows+eyes), and
{shape} written {shape}+{structure} where a structure reference is given. Ours: a JSON key
beside each npz (cache.py), Align_{tag}/{face}_{ref}_labels.png (the target label map, grey
levels = class ids), {result}_pasted.png (paste-back), target_masks{_region}/ (with
--save-target-mask), aligned/ (the face crops), results.csv, failures.csv and grid.png (a
`--part K/N` host writes results.partKofN.csv and so on).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from barbershop_jax.config import DEFAULT_REGION

W_DIR, FS_DIR = "W+", "FS"
CROPS_DIR = "aligned"  # the official scripts' name for FFHQ crops


def references(shape, structure) -> str:
    """The shape and structure references in file names and messages: shape, or shape+structure."""
    return shape if structure == shape else f"{shape}+{structure}"


@dataclasses.dataclass(frozen=True)
class Layout:
    """The files of one output folder, for one sign and region (the tag of the stage files).

    Triples are (face, shape, color, structure) and alignments (face, shape, ref) of image
    names; `part` is a `--part K/N` host's (K, N), whose run files get a .partKofN suffix."""
    root: Path
    sign: str = "realistic"
    region: str = DEFAULT_REGION
    part: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def region_suffix(self) -> str:
        """"" for hair (the official names), else "_" and the region's classes joined by +."""
        return "" if self.region == DEFAULT_REGION else "_" + self.region.replace(",", "+")

    @property
    def tag(self) -> str:
        return self.sign + self.region_suffix

    # --- embeddings
    def w_plus(self, name: str) -> Path:
        return self.root / W_DIR / f"{name}.npy"

    def fs(self, name: str) -> Path:
        return self.root / FS_DIR / f"{name}.npz"

    # --- target masks and alignments
    @staticmethod
    def alignment_stem(face: str, shape: str, ref: str) -> str:
        """{face}_{shape}, or {face}_{shape}+{ref} for an alignment to another latent reference."""
        return f"{face}_{references(shape, ref)}"

    def alignment(self, face: str, shape: str, ref: str) -> Path:
        return self.root / f"Align_{self.tag}" / f"{self.alignment_stem(face, shape, ref)}.npz"

    def alignment_labels(self, face: str, shape: str, ref: str) -> Path:
        return self.root / f"Align_{self.tag}" / f"{self.alignment_stem(face, shape, ref)}_labels.png"

    def vis_mask(self, face: str, shape: str) -> Path:
        return self.root / f"vis_mask_{face}_{shape}_{self.tag}.png"

    def target_masks_dir(self) -> Path:
        return self.root / f"target_masks{self.region_suffix}"

    def target_mask(self, face: str, shape: str) -> Path:
        return self.target_masks_dir() / f"{face}_{shape}.png"

    # --- blends and results
    def triple_stem(self, t) -> str:
        face, shape, color, structure = t
        return f"{self.alignment_stem(face, shape, structure)}_{color}"

    def blend(self, t) -> Path:
        return self.root / f"Blend_{self.tag}" / f"{self.triple_stem(t)}.npz"

    def result(self, t) -> Path:
        return self.root / f"{self.triple_stem(t)}_{self.tag}.png"

    def pasted(self, t) -> Path:
        return self.root / f"{self.triple_stem(t)}_{self.tag}_pasted.png"

    # --- the run's files
    def crops_dir(self) -> Path:
        return self.root / CROPS_DIR

    def _run_file(self, stem: str, suffix: str) -> Path:
        part = "" if self.part is None else f".part{self.part[0]}of{self.part[1]}"
        return self.root / f"{stem}{part}{suffix}"

    def results_csv(self) -> Path:
        return self._run_file("results", ".csv")

    def failures_csv(self) -> Path:
        return self._run_file("failures", ".csv")

    def grid_sheet(self) -> Path:
        return self._run_file("grid", ".png")
