"""Grids: every face x every hairstyle (`transfer --faces --hairstyles`, HairTransfer.grid).
The triples are (face, hairstyle, colour), colour = the hairstyle unless colours are given;
each image is embedded once and each (face, reference) pair aligned once, however many cells
share it (run.py), and the results are laid out as a labelled contact sheet: faces as rows,
hairstyles as columns, the inputs in the margins."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from barbershop_jax.pipeline.files import contact_sheet
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.plan import Plan

MAX_SHEET_SIDE = 8192  # pixels: past it the panels shrink (100 x 100 cells of 256 px would be 26k px wide)
# The sheet's line where no weights file was given: its cells show the pipeline, not hairstyles.
RANDOM_WEIGHTS_NOTE = "weights: the embedded RANDOM-weight tiny models: no real hairstyle"


@dataclasses.dataclass
class GridResult:
    results: list          # rows (one per face) of TransferResult, or None where the cell failed
    sheet: np.ndarray      # the contact sheet, uint8 (H, W, 3)
    sheet_path: Path | None
    plan: Plan | None = None


def column_colours(hairstyles, colors=None) -> list:
    """The colour reference of each column: the hairstyle's own, the one given for all, or one
    per hairstyle."""
    hairstyles = list(hairstyles)
    if colors is None:
        return hairstyles
    colors = list(colors)
    if len(colors) == 1:
        colors = colors * len(hairstyles)
    if len(colors) != len(hairstyles):
        raise ValueError(f"{len(colors)} colour references for {len(hairstyles)} hairstyles: give one per "
                         "hairstyle, or one for all")
    return colors


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def title(n_faces: int, n_hairstyles: int) -> str:
    """The grid's name in its plan, its sheet and its log lines: "3 faces x 1 hairstyle"."""
    return f"{_count(n_faces, 'face')} x {_count(n_hairstyles, 'hairstyle')}"


def grid_triples(faces, hairstyles, colors=None):
    """(triples, cells): the (face, hairstyle, colour) of every cell, faces as rows, and each
    triple's (row, column). colors: None (each hairstyle's own colour), one image for every
    column, or one per hairstyle."""
    faces, hairstyles = list(faces), list(hairstyles)
    if not faces or not hairstyles:
        raise ValueError(f"a grid needs at least one face and one hairstyle (got {title(len(faces), len(hairstyles))})")
    colors = column_colours(hairstyles, colors)
    cells = [(i, j) for i in range(len(faces)) for j in range(len(hairstyles))]
    return [(faces[i], hairstyles[j], colors[j]) for i, j in cells], cells


def label(image, default: str) -> str:
    path = getattr(image, "path", None) or (image if isinstance(image, (str, Path)) else None)
    return Path(path).stem if path is not None else getattr(image, "name", None) or default


def _pixels(image, exif: bool = True) -> np.ndarray | None:
    try:
        if isinstance(image, (str, Path)):
            return image_io.load_rgb(image, exif=exif)
        if getattr(image, "path", None) is not None or getattr(image, "pixels", None) is not None:
            return image.load()
        return image_io.as_rgb_array(image)
    except (image_io.ImageError, ValueError, TypeError):
        return None  # shown as a failed panel: the run has said why


def _head(image, exif: bool) -> np.ndarray:
    pixels = _pixels(image, exif)
    return np.full((64, 64, 3), 128, np.uint8) if pixels is None else pixels


def panel_size(n_rows: int, n_cols: int) -> int:
    """The side of the sheet's panels, px: 256, less for a grid that would pass MAX_SHEET_SIDE."""
    return max(64, min(256, MAX_SHEET_SIDE // (max(n_rows, n_cols) + 1)))


def cell_panel(image, size: int) -> np.ndarray:
    """A result image as its cell of the sheet draws it (fitted into size x size): what a grid
    keeps of each result, instead of reading its file back, so that the cells of thousands of
    results hold no more than the sheet's own pixels."""
    return np.asarray(contact_sheet.fit(image, size))


def with_sources(images, sources: dict) -> list:
    """The images, each file that `sources` ({str(path): sources.ImageSource}) holds replaced by
    its source: a panel drawn from the pixels its read kept, not from its file decoded again
    (its label, the file's stem, is the same)."""
    return [sources.get(str(x), x) if isinstance(x, (str, Path)) else x for x in images]


def wrote_line(path, grid_title: str) -> str:
    """The line that says where the sheet went."""
    return f"wrote {path}: the contact sheet ({grid_title}: faces as rows, hairstyles as columns)"


def sheet(faces, hairstyles, colors, cells: dict, *, notes=(), title=None, exif: bool = True) -> np.ndarray:
    """The contact sheet: cells {(row, column): result image (array or PNG path; a cell_panel
    draws the same) or None}. exif: the input files' EXIF orientation honoured, as the run read
    them (--no-exif: not)."""
    n_rows, n_cols = len(faces), len(hairstyles)
    size = panel_size(n_rows, n_cols)
    colors = column_colours(hairstyles, colors)
    col_heads = []
    for j, (hair, color) in enumerate(zip(hairstyles, colors)):
        name = label(hair, f"hairstyle {j + 1}")
        colour = label(color, f"colour {j + 1}")
        col_heads.append((name if colour == name else f"{name} / colour {colour}", _head(hair, exif)))
    row_heads = [(label(face, f"face {i + 1}"), _head(face, exif)) for i, face in enumerate(faces)]
    grid_cells = [[None if cells.get((i, j)) is None else _pixels(cells[(i, j)]) for j in range(n_cols)]
                  for i in range(n_rows)]
    return contact_sheet.grid_sheet(grid_cells, row_heads, col_heads, size=size, title=title, notes=notes)


def write_sheet(path, faces, hairstyles, colors, cells: dict, **kwargs) -> tuple[np.ndarray, Path]:
    """sheet(...) written to `path` (OUT/grid.png: layout.Layout.grid_sheet; a --part host's
    is grid.partKofN.png)."""
    image = sheet(faces, hairstyles, colors, cells, **kwargs)
    return image, image_io.save_png(Path(path), image)
