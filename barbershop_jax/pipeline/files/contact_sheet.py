"""Labelled image sheets: a row of titled panels (the demo's demo_grid.png) and a grid with
its inputs in the margins (`transfer --faces A --hairstyles B`: faces as rows, hairstyles as
columns). Drawn with Pillow and its bundled font (ImageFont.load_default(size=...), Pillow >=
10.1), so that no system font is needed.

Each image is fitted into a size x size box keeping its aspect ratio (a square image fills
it), centred on the sheet's background, with its title in a band above. Photos are resized
with Lanczos; a label-colour mask must be resized with nearest (a panel's optional third
element, `nearest=True`), so that no blended colour appears that the legend does not name.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.stages import target_mask

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)            # text
FAILED_GREY = (128, 128, 128)  # a cell that has no image
FAILED_INK = (255, 255, 255)
MARGIN_RULE = (160, 160, 160)  # the line between a grid's margins and its cells


@functools.lru_cache(maxsize=None)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


def _text_px(size: int) -> int:
    """Text height for panels of `size` px: 16 px at 256, never under 11 (legible)."""
    return max(11, size // 16)


def _gap(size: int) -> int:
    return max(4, size // 32)


def _text_width(text: str, font) -> int:
    return int(np.ceil(font.getlength(text)))


def _wrap(text: str, font, width: int) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` (a longer word is cut short
    with an ellipsis: a sheet's layout never depends on what a label says)."""
    lines, line = [], ""
    for word in str(text).split():
        candidate = f"{line} {word}" if line else word
        if line and _text_width(candidate, font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    return [_shorten(x, font, width) for x in lines]


def _shorten(line: str, font, width: int) -> str:
    if _text_width(line, font) <= width:
        return line
    while line and _text_width(line + "…", font) > width:
        line = line[:-1]
    return line + "…"


def _line_height(font) -> int:
    top, bottom = font.getbbox("Hgjy|")[1::2]
    return int(bottom - top) + 4


def _text_block(lines, width: int, px: int, *, centred: bool = False) -> Image.Image | None:
    """Lines of text wrapped to `width`, as an image `width` wide (None for no lines)."""
    font = _font(px)
    wrapped = [w for line in lines for w in _wrap(line, font, width)]
    if not wrapped:
        return None
    step = _line_height(font)
    block = Image.new("RGB", (width, step * len(wrapped) + 2), BACKGROUND)
    draw = ImageDraw.Draw(block)
    for i, line in enumerate(wrapped):
        x = (width - _text_width(line, font)) // 2 if centred else 0
        draw.text((x, i * step), line, fill=INK, font=font)
    return block


def fit(image, size: int, nearest: bool = False) -> Image.Image:
    """The image fitted into a size x size box (aspect kept), centred on the background; a
    grey box saying "failed" for None. A box fitted again is unchanged (Pillow's resize to
    the same size is a copy), so a grid may keep its cells at their panel's size."""
    box = Image.new("RGB", (size, size), BACKGROUND)
    if image is None:
        box.paste(FAILED_GREY, (0, 0, size, size))
        font = _font(max(12, size // 10))
        ImageDraw.Draw(box).text((size // 2, size // 2), "failed", fill=FAILED_INK, font=font, anchor="mm")
        return box
    pil = Image.fromarray(image_io.as_rgb_array(image))
    scale = size / max(pil.size)
    w, h = max(1, round(pil.width * scale)), max(1, round(pil.height * scale))
    pil = pil.resize((w, h), Image.NEAREST if nearest else Image.LANCZOS)
    box.paste(pil, ((size - w) // 2, (size - h) // 2))
    return box


def _titled_panel(title: str, image, size: int, nearest: bool = False) -> Image.Image:
    """One panel: its title (one line, shortened to fit) in a band above its image."""
    font = _font(_text_px(size))
    band = _line_height(font) + 2
    panel = Image.new("RGB", (size, band + size), BACKGROUND)
    ImageDraw.Draw(panel).text((size // 2, band // 2), _shorten(str(title or ""), font, size), fill=INK,
                               font=font, anchor="mm")
    panel.paste(fit(image, size, nearest), (0, band))
    return panel


def _legend_block(legend, width: int, px: int, heading=None) -> Image.Image | None:
    """(name, (r, g, b)) entries as colour swatches with their names, flowing in lines after
    an optional heading."""
    if not legend:
        return None
    font = _font(px)
    step = _line_height(font)
    swatch = step - 4
    gap = max(8, px)
    heading = _shorten(heading, font, width // 2) if heading else ""
    items, x, y = [], (_text_width(heading, font) + gap if heading else 0), 0
    for name, colour in legend:
        name = _shorten(str(name), font, width - swatch - 6)
        item_w = swatch + 6 + _text_width(name, font)
        if x and x + item_w > width:
            x, y = 0, y + step
        items.append((x, y, name, tuple(int(c) for c in colour)))
        x += item_w + gap
    block = Image.new("RGB", (width, y + step + 2), BACKGROUND)
    draw = ImageDraw.Draw(block)
    if heading:
        draw.text((0, swatch // 2 + 1), heading, fill=INK, font=font, anchor="lm")
    for x, y, name, colour in items:
        draw.rectangle((x, y + 1, x + swatch - 1, y + swatch), fill=colour, outline=INK)
        draw.text((x + swatch + 6, y + swatch // 2 + 1), name, fill=INK, font=font, anchor="lm")
    return block


def _stack(blocks, width: int, gap: int) -> np.ndarray:
    """Blocks one under another, `gap` px apart and around, as one uint8 (H, W, 3) sheet."""
    blocks = [b for b in blocks if b is not None]
    height = sum(b.height for b in blocks) + gap * (len(blocks) + 1)
    sheet = Image.new("RGB", (width + 2 * gap, height), BACKGROUND)
    y = gap
    for block in blocks:
        sheet.paste(block, (gap, y))
        y += block.height + gap
    return np.asarray(sheet)


def _row(panels, gap: int) -> Image.Image:
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    row = Image.new("RGB", (width, max(p.height for p in panels)), BACKGROUND)
    x = 0
    for panel in panels:
        row.paste(panel, (x, 0))
        x += panel.width + gap
    return row


def titled_row(panels, size: int = 256, title=None, notes=(), legend=None, legend_title=None) -> np.ndarray:
    """A sheet of panels in one row, each titled.

    Args:
      panels: (title, image) or (title, image, nearest) tuples: image a uint8 (H, W, 3) array
        (or None: a grey "failed" panel); nearest=True resizes with nearest neighbours (for
        label-colour masks), else Lanczos.
      size: the box each image is fitted into, px.
      title: a line over the whole sheet, or None.
      notes: lines under the panels (e.g. which weights made the results).
      legend: (class name, (r, g, b)) entries drawn as colour swatches, or None.
      legend_title: text before the swatches (e.g. "target mask:"), or None.
    Returns:
      uint8 (H, W, 3): the sheet, white background.
    """
    if not panels:
        raise ValueError("titled_row: no panels")
    gap = _gap(size)
    tiles = [_titled_panel(p[0], p[1], size, nearest=bool(p[2]) if len(p) > 2 else False) for p in panels]
    row = _row(tiles, gap)
    px = _text_px(size)
    return _stack([_text_block([title] if title else [], row.width, px + 4, centred=True), row,
                   _legend_block(legend, row.width, px, legend_title), _text_block(notes, row.width, px)], row.width,
                  gap)


def grid_sheet(cells, row_heads, col_heads, size: int = 256, title=None, notes=(), corner=None) -> np.ndarray:
    """A grid of results with their inputs in the margins: one row per row head (a face), one
    column per column head (a hairstyle).

    Args:
      cells: rows (one per row head) of images, one per column head: uint8 (H, W, 3) arrays,
        or None for a cell that failed (drawn grey, saying "failed").
      row_heads: (label, image) per row, shown in the left margin column.
      col_heads: (label, image) per column, shown in the top margin row.
      size, title, notes: as `titled_row`.
      corner: text for the top left corner (e.g. "face \\ hairstyle"), or None.
    Returns:
      uint8 (H, W, 3): the sheet.
    """
    cells = [list(row) for row in cells]
    if len(cells) != len(row_heads) or any(len(row) != len(col_heads) for row in cells):
        shape = [len(row) for row in cells]
        raise ValueError(f"grid_sheet: cells {shape} do not match {len(row_heads)} row heads x "
                         f"{len(col_heads)} column heads")
    gap = _gap(size)
    font = _font(_text_px(size))
    band = _line_height(font) + 2
    corner_tile = Image.new("RGB", (size, band + size), BACKGROUND)
    if corner:
        lines = _wrap(corner, font, size)
        step = _line_height(font)
        top = band + (size - step * len(lines)) // 2
        draw = ImageDraw.Draw(corner_tile)
        for i, line in enumerate(lines):
            draw.text((size // 2, top + i * step + step // 2), line, fill=INK, font=font, anchor="mm")
    rows = [_row([corner_tile, *(_titled_panel(label, image, size) for label, image in col_heads)], gap)]
    for (label, image), row in zip(row_heads, cells):
        rows.append(_row([_titled_panel(label, image, size), *(_titled_panel("", cell, size) for cell in row)], gap))
    width = rows[0].width
    body = Image.new("RGB", (width, sum(r.height for r in rows) + gap * (len(rows) - 1)), BACKGROUND)
    y = 0
    for r in rows:
        body.paste(r, (0, y))
        y += r.height + gap
    # Rules between the margins (the inputs) and the cells (the results).
    draw = ImageDraw.Draw(body)
    draw.line((size + gap // 2, 0, size + gap // 2, body.height), fill=MARGIN_RULE)
    draw.line((0, rows[0].height + gap // 2, width, rows[0].height + gap // 2), fill=MARGIN_RULE)
    px = _text_px(size)
    return _stack([_text_block([title] if title else [], width, px + 4, centred=True), body,
                   _text_block(notes, width, px)], width, gap)


def legend_entries(target, label_map, palette=None) -> list:
    """Legend entries (name, (r, g, b)) for the classes present in a target mask, in the
    colours `stages.target_mask.colourise` draws it with; classes that share a colour (the
    official palette gives both eyes, both brows one) share one entry, "l_eye/r_eye".

    Args:
      target: the label map (P, P) int, as colourised.
      label_map: the parser's LabelMap (names by class id).
      palette: (n, 3) colours by class id; default the one colourise uses for `target`.
    """
    target = np.asarray(target)
    present = np.unique(target)
    if palette is None:
        # colourise picks its palette by the largest label: colourise the present ids themselves.
        colours = target_mask.colourise(present)
    else:
        colours = np.asarray(palette)[np.clip(present, 0, len(palette) - 1)]
    names = label_map.names
    merged: dict = {}
    for class_id, colour in zip(present.tolist(), colours.tolist()):
        name = names[class_id] if 0 <= class_id < len(names) else f"class {class_id}"
        merged.setdefault(tuple(colour), []).append(name)
    return [("/".join(group), colour) for colour, group in merged.items()]
