"""Image files in and out. Writes are atomic: a temporary file renamed into place."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file."""


# Turn images upright by their EXIF orientation. The official code ignores it (a phone photo
# taken upright but stored sideways is processed sideways); `--no-exif` restores that.
HONOUR_EXIF = True


def load_rgb(path, *, exif: bool | None = None) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), as the official `Image.open(p).convert('RGB')`
    does for 8-bit images (alpha is dropped). 16-bit and float images are scaled to 8 bits
    rather than clipped. `exif`: turn the image upright by its EXIF orientation (default:
    HONOUR_EXIF); images without an orientation tag read the same either way."""
    exif = HONOUR_EXIF if exif is None else exif
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            if exif:
                im = ImageOps.exif_transpose(im)
            pixels = _rgb_of(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None
    if pixels.size == 0:
        raise ImageError(f"{path}: the image is empty ({pixels.shape[1]}x{pixels.shape[0]})")
    return pixels


def _rgb_of(im: Image.Image) -> np.ndarray:
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        # Pillow's convert('RGB') clips these at 255: scale them instead.
        values = np.asarray(im, np.float64)
        peak = values.max(initial=0)
        if im.mode.startswith("I;16"):
            top = 65535.0
        elif im.mode == "F" and peak <= 1.0:
            top = 1.0
        else:  # 32-bit integers or floats: 8-bit values, or 16-bit ones when they exceed 255
            top = 255.0 if peak <= 255 else 65535.0
        grey = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def as_rgb_array(image) -> np.ndarray:
    """A PIL image or an array (H, W, 3) or (H, W), uint8 or float in [0, 1], as uint8 RGB."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageError(f"an image array must be (H, W, 3), got shape {array.shape}")
    array = array[..., :3]
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ImageError(f"an image array must be uint8 or float in [0, 1], got {array.dtype}")
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array)


def to_uint8(image) -> np.ndarray:
    """A generator image (H, W, 3), about [-1, 1], to uint8 as the official code saves it:
    (x + 1) / 2 clamped to [0, 1], times 255, truncated (torchvision's ToPILImage)."""
    # NaN (a diverged image, which is not written) maps to black rather than to a cast warning.
    x = np.clip(np.nan_to_num((np.asarray(image, np.float32) + 1.0) / 2.0), 0.0, 1.0)
    return (x * 255.0).astype(np.uint8)


def atomic_write(path, write) -> Path:
    """Create `path` whole or not at all: `write(file)` fills a temporary file beside it
    (opened for binary writing), which is then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_png(path, image_uint8) -> Path:
    """Write a uint8 (H, W, 3) array as PNG atomically."""
    return atomic_write(path, lambda f: Image.fromarray(np.asarray(image_uint8)).save(f, format="PNG"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def grid(images, cols: int) -> np.ndarray:
    """(N, H, W, C) -> one (rows * H, cols * W, C) mosaic, padded with black."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    rows = -(-n // cols)
    out = np.zeros((rows * h, cols * w, c), images.dtype)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        out[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
    return out
