"""Image files in and out. Writes are atomic: a temporary file renamed into place."""
from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from barbershop_jax.pipeline.runtime import stopping
from barbershop_jax.pipeline.runtime.stopping import atomic_write  # noqa: F401 (its callers' name for it)


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file."""


# What Pillow can raise for a damaged or hostile file: OSError (truncated, unidentified),
# ValueError, SyntaxError (a broken PNG chunk), its decompression-bomb error, and zlib's.
IMAGE_FILE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, zlib.error)


def shown_path(path) -> str:
    """A file name as a one-line message names it: as it is, or repr() when it holds characters
    that would break or hide in the line (a newline, a tab, a terminal escape, bytes that are
    not UTF-8, which Python keeps as surrogates)."""
    text = os.fsdecode(path)
    return text if text.isprintable() else repr(text)


def one_line(text: str) -> str:
    """`text` with each character that would break or hide in a one-line message (a newline,
    a tab, an escape, a surrogate) written as its Python escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def load_rgb(path, *, exif: bool = True) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3), as the official `Image.open(p).convert('RGB')`
    does for 8-bit images (alpha is dropped). 16-bit and float images are scaled to 8 bits
    rather than clipped. `exif`: turn the image upright by its EXIF orientation. The official
    code ignores it (a phone photo taken upright but stored sideways is processed sideways);
    `--no-exif` (exif=False) reads as it does. Images without an orientation tag read the
    same either way."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{shown_path(path)}: no such file")
    try:
        with Image.open(path) as im:
            if exif:
                im = ImageOps.exif_transpose(im)
            pixels = _rgb_of(im)
    except IMAGE_FILE_ERRORS as e:
        raise ImageError(f"{shown_path(path)}: not a readable image ({one_line(str(e))})") from None
    if pixels.size == 0:
        raise ImageError(f"{shown_path(path)}: the image is empty ({pixels.shape[1]}x{pixels.shape[0]})")
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


def as_rgb_array(image, what: str = "image") -> np.ndarray:
    """A PIL image, or an array (H, W), (H, W, 3) or (H, W, 4) (alpha dropped) of uint8 or of
    floats in [0, 1], as uint8 RGB. Anything else is an ImageError naming `what` (the
    argument) and the problem: an empty image, another rank or channel count, NaN or infinity,
    floats outside [0, 1] (which were clipped into a plausible image), other integer dtypes
    (int64 0..255 or uint16 0..65535: the scale is a guess), booleans."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ImageError(f"{what}: the image is empty ({image.width}x{image.height})")
        return np.asarray(image.convert("RGB"))
    try:
        array = np.asarray(image)
    except (ValueError, TypeError):  # ragged nested lists, objects numpy cannot read
        raise ImageError(f"{what}: not an image array (a {type(image).__name__} numpy cannot read as one)") from None
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"{what}: an image array must be (H, W, 3), (H, W, 4) or (H, W), got shape {array.shape}"
                         + ("" if array.ndim else f" ({type(image).__name__})"))
    if array.size == 0:
        raise ImageError(f"{what}: the image is empty (shape {array.shape})")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise ImageError(f"{what}: an image array must be uint8 (0..255) or float in [0, 1], got {array.dtype}")
    if not np.isfinite(array).all():
        raise ImageError(f"{what}: the image holds NaN or infinity")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise ImageError(f"{what}: float pixels must be in [0, 1], got {low:g} to {high:g} (give uint8 for 0..255)")
    return np.ascontiguousarray((array * 255.0 + 0.5).astype(np.uint8))


def to_uint8(image) -> np.ndarray:
    """A generator image (H, W, 3), about [-1, 1], to uint8 as the official code saves it:
    (x + 1) / 2 clamped to [0, 1], times 255, truncated (torchvision's ToPILImage)."""
    # NaN (a diverged image, which is not written) maps to black rather than to a cast warning.
    x = np.clip(np.nan_to_num((np.asarray(image, np.float32) + 1.0) / 2.0), 0.0, 1.0)
    return (x * 255.0).astype(np.uint8)


class BackgroundWrites:
    """File writes run on a few threads while the caller goes on with the next batch.

    Why: encoding a 1024 px PNG takes a fair fraction of a second on one core. Measured on an
    H100 at batch 8 (benchmarks/README.md), the embedding stage spent as long writing its
    renders and codes as in its optimisation loops, a tenth of the official steps. Each write
    stays atomic (atomic_write) and keeps its own order (arrays, then PNG, then the key);
    leaving the block waits for every write, also when the block raises, and re-raises the
    first failed write's error (when the block raised, its error goes on and failed writes are
    logged). On a stop (SIGINT/SIGTERM: stopping.py) the writes not yet started are dropped and
    only the running ones are waited for: the run ends within seconds, with every file whole or
    absent (a dropped result's loop checkpoint stays, so the same command writes it)."""

    def __init__(self, workers: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1),
                                        thread_name_prefix="barbershop-write")
        self._pending = []
        self._cleanups = set()

    def submit(self, fn, *args, after=(), cleanup: bool = False, **kwargs):
        """Run fn(*args, **kwargs) on a writer thread. after: futures of earlier submits that
        must succeed first (fn is skipped if one failed or was dropped). cleanup: fn is quick
        and runs on a stop too, once `after` is written (a checkpoint's removal: left behind,
        no later run would remove it). Returns fn's future."""
        after = tuple(after)

        def run():
            # Submitted earlier: no deadlock. Dropped by a stop: this one is dropped too.
            if any(f.cancelled() or f.exception() is not None for f in after):
                return None
            return fn(*args, **kwargs)

        future = self._pool.submit(run)
        self._pending.append(future)
        if cleanup:
            self._cleanups.add(future)
        return future

    def wait(self):
        """Block until every write so far is done; re-raise the first error."""
        errors = [f.exception() for f in self._pending]  # kept while waiting: a stop drops the rest
        self._pending = []
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.wait()
            else:  # the block's own error (an interruption, say) is the one to report
                if stopping.stop_requested() or issubclass(exc_type, KeyboardInterrupt):
                    self._drop_queued()
                for future in self._pending:
                    if not future.cancelled() and future.exception() is not None:
                        logging.getLogger("barbershop_jax").error("a result was not written: %s",
                                                                  future.exception())
        except BaseException:  # a stop while this waits (the handler raises here)
            self._drop_queued()
            raise
        finally:
            self._pool.shutdown(wait=True)
        return False

    def _drop_queued(self):
        """Cancel the writes not started yet (a running one ends whole), except clean-ups."""
        for future in self._pending:
            if future not in self._cleanups:
                future.cancel()


def save_png(path, image_uint8) -> Path:
    """Write a uint8 (H, W, 3) array as PNG atomically."""
    return atomic_write(path, lambda f: Image.fromarray(np.asarray(image_uint8)).save(f, format="PNG"))


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
