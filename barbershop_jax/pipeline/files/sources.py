"""The run's inputs: each distinct image read once (files on up to 16 threads, in-memory
arrays as given), named, hashed and checked. The pixels' hash is every cache key."""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from barbershop_jax.config import shown
from barbershop_jax.ops import resample
from barbershop_jax.pipeline.files import image_files as image_io

log = logging.getLogger("barbershop_jax")


def content_hash(pixels: np.ndarray) -> str:
    """sha256 of an image's decoded RGB pixels and shape (not of its file bytes)."""
    pixels = np.ascontiguousarray(pixels)
    h = hashlib.sha256(str(pixels.shape).encode())
    h.update(pixels.tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One distinct input image: a file (read again when needed, so memory stays flat, unless
    its pixels are kept for the run) or pixels given in memory (Python API). A file is read
    again as it was read first: with its EXIF orientation, or without (`exif`)."""
    name: str
    image_hash: str
    path: Path | None = None
    pixels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    shape: tuple = ()  # (H, W, 3) of the decoded image
    exif: bool = True  # the file is turned upright by its EXIF orientation (image_files.load_rgb)

    def load(self) -> np.ndarray:
        """uint8 RGB (H, W, 3)."""
        return self.pixels if self.pixels is not None else image_io.load_rgb(self.path, exif=self.exif)


# An image name is part of every output file name of its image: W+/{name}.npy and its
# temporary twin .{name}.npy.XXXXXXXX.tmp must fit the file systems' 255 bytes.
MAX_NAME_BYTES = 200
NAME_MAX = 255  # bytes of one file name (ext4, XFS, APFS, NTFS in UTF-16 units)


def check_name(name: str, path=None) -> str:
    """Image names become file names under the output folder: no folders, no way out of it,
    no name too long to write (found before any work, not when the first result is written).
    The ImageError names the file `path` the name comes from, when it comes from one."""
    where = f"{image_io.shown_path(path)}: its name {name!r}" if path is not None else repr(name)
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise image_io.ImageError(f"{where}: not usable as an image name (it names output files; no '/', "
                                  "'\\' or '..')")
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise image_io.ImageError(f"{image_io.shown_path(path) if path is not None else shown(name)}: the name is "
                                  f"{len(os.fsencode(name))} bytes long, over the {MAX_NAME_BYTES} its output file "
                                  "names allow; rename it")
    return name


def as_source(image, name: str | None = None, keep_pixels: bool = False, *, what: str = "image",
              exif: bool = True) -> ImageSource:
    """A path, PIL image, uint8 array (H, W, 3) or ImageSource as an ImageSource. In-memory
    images are named `name`, or after their content hash. keep_pixels: a file's decoded pixels
    stay with it (a run that reads it again), instead of being read again when needed.
    what: the argument an in-memory image came as, named by its ImageError (as_rgb_array).
    exif: a file is turned upright by its EXIF orientation (False: read as stored, as the
    official code; `--no-exif`)."""
    if isinstance(image, ImageSource):
        return image
    if isinstance(image, (str, Path)):
        name = check_name(name or Path(image).stem, image)
        pixels = image_io.load_rgb(image, exif=exif)
        return ImageSource(name, content_hash(pixels), Path(image), pixels if keep_pixels else None,
                           pixels.shape, exif)
    if name is not None:
        check_name(name)
    pixels = image_io.as_rgb_array(image, what)
    image_hash = content_hash(pixels)
    return ImageSource(name or f"image_{image_hash[:12]}", image_hash, None, pixels, pixels.shape)


def without_pixels(image):
    """A file's ImageSource without the pixels kept with it (its name and hash are what a plan
    reads); anything else as it is."""
    if isinstance(image, ImageSource) and image.path is not None and image.pixels is not None:
        return dataclasses.replace(image, pixels=None)
    return image


def in_memory(image, what: str):
    """An in-memory image (array or PIL) as its ImageSource, checked now and named `what` in
    the ImageError that refuses it (before any work, and before the run loses track of which
    argument it was); paths, ImageSources and None as they are."""
    if image is None or isinstance(image, (str, Path, ImageSource)):
        return image
    return as_source(image, what=what)


_WARNED: set = set()


def fit_to_size(pixels: np.ndarray, size: int, what) -> np.ndarray:
    """uint8 pixels at the generator's size; others are resized (LANCZOS) with a warning (once
    per input)."""
    if pixels.shape[:2] != (size, size):
        if (str(what), size) not in _WARNED:
            _WARNED.add((str(what), size))
            log.warning("%s: %dx%d, resized to the generator's %dx%d (LANCZOS)", what, pixels.shape[1],
                        pixels.shape[0], size, size)
        pixels = resample.lanczos_resize(pixels, size)
    return pixels


READ_THREADS = min(16, os.cpu_count() or 1)
READ_BAR_FROM = 32  # images: fewer are read without a progress bar
# The decoded pixels one read keeps with its sources (keep_pixels), and a run's DecodedImages
# holds: about 680 images at 1024 px. Past it a file's pixels are dropped and decoded again
# when the run needs them, so that a manifest of thousands of images keeps memory flat.
KEPT_PIXELS_BYTES = 2 * 2**30


def read_sources(paths, progress: bool = True, keep_pixels: bool = False, exif: bool = True) -> dict:
    """{str(path): ImageSource, or the ImageError that says why it cannot be used} for each
    distinct path, decoded and hashed on READ_THREADS threads, with a bar from READ_BAR_FROM.
    Every run hashes every input before its first step, cached or not, and a 1024 px PNG takes
    about 32 ms of one core: read one by one, a large batch would wait minutes without a word.
    PIL's decoders and hashlib release the GIL, so threads share that work.
    keep_pixels: each source keeps its decoded pixels, up to KEPT_PIXELS_BYTES in all (the
    first images read first); the rest are read again when needed. exif: as as_source's."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    kept, lock = [0], threading.Lock()  # bytes of pixels kept so far

    def read(path):
        try:
            source = as_source(path, keep_pixels=keep_pixels, exif=exif)
        except image_io.ImageError as e:
            return e
        if source.pixels is not None:
            with lock:
                keep = kept[0] + source.pixels.nbytes <= KEPT_PIXELS_BYTES
                kept[0] += source.pixels.nbytes if keep else 0
            source = source if keep else dataclasses.replace(source, pixels=None)
        return source

    distinct = list(dict.fromkeys(str(p) for p in paths))
    pool = ThreadPoolExecutor(READ_THREADS)
    try:
        with tqdm(total=len(distinct), desc="Reading images", unit="image", dynamic_ncols=True,
                  disable=not progress or len(distinct) < READ_BAR_FROM) as bar:
            read_all = [pool.submit(read, Path(p)) for p in distinct]
            for future in read_all:
                future.add_done_callback(lambda _: bar.update())
            return {p: future.result() for p, future in zip(distinct, read_all)}
    finally:
        # A stop (SIGINT/SIGTERM raises here while this thread waits: stopping.py) drops the
        # reads not started; only the running ones, one image each, are waited for.
        pool.shutdown(wait=True, cancel_futures=True)


def as_sources(images, progress: bool = False, keep_pixels: bool = False, what: str = "images",
               exif: bool = True) -> list[ImageSource]:
    """as_source of each image, the files read in parallel (read_sources; `exif` as there); the
    first image that cannot be used raises its ImageError (an in-memory one named `what[i]`)."""
    images = list(images)
    read = read_sources([x for x in images if isinstance(x, (str, Path))], progress, keep_pixels, exif)
    sources = [read[str(x)] if isinstance(x, (str, Path)) else as_source(x, what=f"{what}[{i}]")
               for i, x in enumerate(images)]
    for source in sources:
        if isinstance(source, image_io.ImageError):
            raise source
    return sources


def identify(images, progress: bool = False, keep_pixels: bool = False, what: str = "images",
             exif: bool = True) -> list[ImageSource]:
    """The distinct images among `images` (paths or ImageSources), in order (files read in
    parallel: as_sources; `what`: the argument they came as; `exif` as there). Two different
    images under one name are refused: the cache files are named after the image."""
    items, seen = [], {}
    for source in as_sources(images, progress, keep_pixels, what, exif):
        if source.name in seen:
            if seen[source.name] != source.image_hash:
                raise image_io.ImageError(f"{image_io.shown_path(source.path or source.name)}: another input is "
                                          f"also named {source.name!r}; rename one")
            continue
        seen[source.name] = source.image_hash
        items.append(source)
    return items


class DecodedImages:
    """The pixels of a run's images at the generator's size, each decoded (and resized, when
    it must be) once, and the downsized copies the stages read, each made once: the W+ and FS
    targets, the face parse and the blend's references all read these. Bounded: past
    `max_bytes` the least recently used image is dropped (decoded again if needed), so a wave
    of thousands of 1024 px images does not hold them all."""

    def __init__(self, size: int, max_bytes: int = KEPT_PIXELS_BYTES):
        self.size, self.max_bytes = size, max_bytes
        self._arrays: collections.OrderedDict = collections.OrderedDict()  # (name, what) -> array
        self._bytes = 0

    def _get(self, key, make):
        if key in self._arrays:
            self._arrays.move_to_end(key)
            return self._arrays[key]
        value = make()
        self._arrays[key] = value
        self._bytes += value.nbytes
        while self._bytes > self.max_bytes and len(self._arrays) > 1:
            _, dropped = self._arrays.popitem(last=False)
            self._bytes -= dropped.nbytes
        return value

    def adopt(self, source: ImageSource) -> ImageSource:
        """Keep the pixels a source was read with (the hash's decode serves the stages too);
        returns the source without them when it is a file, so that only this bounded store
        holds them."""
        if source.pixels is not None:
            self.pixels(source)
            if source.path is not None:
                return dataclasses.replace(source, pixels=None)
        return source

    def pixels(self, source: ImageSource) -> np.ndarray:
        """uint8 (size, size, 3)."""
        return self._get((source.name, "pixels"), lambda: fit_to_size(source.load(), self.size,
                                                                        source.path or source.name))

    def signed(self, source: ImageSource) -> np.ndarray:
        """(size, size, 3) in [-1, 1] (the official ref_im_H); not kept: 4x the pixels' bytes."""
        return resample.uint8_to_signed(self.pixels(source))

    def small(self, source: ImageSource, size: int) -> np.ndarray:
        """(size, size, 3) in [-1, 1], LANCZOS from the pixels (ref_im_L, the blend's references)."""
        return self._get((source.name, size), lambda: resample.uint8_to_signed(
            resample.lanczos_resize(self.pixels(source), size)))
