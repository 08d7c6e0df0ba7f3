"""The Python API: files in, files out. Models are loaded here, images read and written here,
the cache consulted here; the stages themselves (embedding.py, ...) are pure functions."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax import cache as cache_lib
from barbershop_jax import compile_cache, embedding, image_io, optimize, resample, resume
from barbershop_jax.models import stylegan2, vgg16

log = logging.getLogger("barbershop_jax")


def load_models(weights=None, dtype: str = "float32") -> embedding.Consts:
    """Generator, VGG16 (LPIPS) and p-norm statistics from a converted weights directory, or
    the embedded default (tiny random models) when `weights` is None. dtype: the compute dtype
    of both networks' convolutions (with_dtype)."""
    if weights is None:
        from barbershop_jax import demo
        consts = demo.embedded_consts()
    else:
        consts = embedding.Consts(stylegan2.load(weights), vgg16.load(weights), stylegan2.load_pca(weights))
    return consts._replace(generator=with_dtype(consts.generator, dtype), vgg=with_dtype(consts.vgg, dtype))


COMPUTE_DTYPES = ("float32", "bfloat16")


def with_dtype(model, dtype: str):
    """The generator or VGG16 computing its convolutions in `dtype`, or the face parser
    computing in it throughout: "float32" (the default, as the official code) or "bfloat16"
    (about 1.4x the speed of the embedding steps on an H100; its effect on quality is measured
    in benchmarks/README.md). Weights, latents, Adam and the losses' sums stay float32;
    results are cached apart from float32 ones."""
    import dataclasses as dc
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    if model.config.dtype == dtype:
        return model
    return model.replace(config=dc.replace(model.config, dtype=dtype))


def load_vgg(weights=None):
    """Only the VGG16 (LPIPS): from a converted weights directory, or the embedded default."""
    if weights is None:
        from barbershop_jax import demo
        return demo.embedded_vgg()
    return vgg16.load(weights)


def default_embed_config(consts: embedding.Consts, **overrides) -> embedding.EmbedConfig:
    """The official settings, with the LPIPS size shrunk for generators below 256 px."""
    size = consts.generator.config.size
    base = {} if size >= 256 else {"lpips_size": size // 2}
    return embedding.EmbedConfig(**{**base, **overrides})


@dataclasses.dataclass
class EmbeddedImage:
    name: str
    image_hash: str
    w_plus: np.ndarray        # (n_latent, style_dim)
    latent_in: np.ndarray     # (n_latent, style_dim): FS latents (W+ head + optimised S)
    structure_f: np.ndarray   # (r, r, C) NHWC


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One distinct input image: a file (read again when needed, so memory stays flat) or
    pixels given in memory (Python API)."""
    name: str
    image_hash: str
    path: Path | None = None
    pixels: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    shape: tuple = ()  # (H, W, 3) of the decoded image

    def load(self) -> np.ndarray:
        """uint8 RGB (H, W, 3)."""
        return self.pixels if self.pixels is not None else image_io.load_rgb(self.path)


def check_name(name: str) -> str:
    """Image names become file names under the output folder: no folders, no way out of it."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise image_io.ImageError(f"{name!r}: not usable as an image name (it names output files; no '/', "
                                  "'\\' or '..')")
    return name


def as_source(image, name: str | None = None) -> ImageSource:
    """A path, PIL image, uint8 array (H, W, 3) or ImageSource as an ImageSource. In-memory
    images are named `name`, or after their content hash."""
    if isinstance(image, ImageSource):
        return image
    if isinstance(image, (str, Path)):
        name = check_name(name or Path(image).stem)
        pixels = image_io.load_rgb(image)
        return ImageSource(name, cache_lib.content_hash(pixels), Path(image), shape=pixels.shape)
    if name is not None:
        check_name(name)
    pixels = image_io.as_rgb_array(image)
    image_hash = cache_lib.content_hash(pixels)
    return ImageSource(name or f"image_{image_hash[:12]}", image_hash, None, pixels, pixels.shape)


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


def read_target(path, size: int, lpips_size: int):
    """(full (size, size, 3) in [-1, 1], small (lpips_size, lpips_size, 3) in [-1, 1]): the
    official ref_im_H and ref_im_L. Other sizes are resized to the generator's, with a warning.
    `path`: a file or an ImageSource."""
    source = path if isinstance(path, ImageSource) else None
    pixels = source.load() if source else image_io.load_rgb(path)
    pixels = fit_to_size(pixels, size, source.path or source.name if source else path)
    full = resample.uint8_to_signed(pixels)
    small = resample.uint8_to_signed(resample.lanczos_resize(pixels, lpips_size))
    return full, small


class NonFiniteError(ValueError):
    """An image's optimisation produced NaN or infinity; nothing was written for it."""


def embed(paths, out_dir, consts: embedding.Consts | None = None, cfg: embedding.EmbedConfig | None = None,
          batch_size: int = 4, fs: bool = True, progress: bool = True, devices=None,
          import_official=None, checkpoint_every: int | None = resume.DEFAULT_EVERY,
          failures: list | None = None, split_processes: bool = True) -> list[EmbeddedImage]:
    """Embed images in W+ (and FS), batch by batch, skipping what `out_dir` already holds.

    `paths`: image files, or ImageSource items (`as_source`) for images in memory.

    Writes the official layout under out_dir (W+/{name}.npy, FS/{name}.npz, with a PNG of each
    render and a JSON key beside it; see cache.py). `import_official`: a folder of official
    outputs (W+/, FS/) whose files are adopted, by image name, where out_dir has no entry yet.
    Multi-host (after `jax.distributed.initialize()`): process k of N embeds every N-th
    distinct image, over its own local devices, into the same out_dir (a shared filesystem);
    each process returns its share. Returns one EmbeddedImage per distinct path (of the share).
    split_processes=False: every process embeds (or reads from out_dir) every image it is
    given; a transfer needs all the images of its triples.

    checkpoint_every: each batch's loops save their state every so many steps under
    out_dir/.resume/, so an interrupted run resumes mid-stage (resume.py); None turns it off.
    An image whose result holds NaN or infinity is not written: it is listed in `failures`
    as (name, reason) and left out of the result when a list is given; otherwise a
    NonFiniteError is raised once the other images are done.
    """
    optimize.check_counts("embed", 1, batch_size=batch_size)
    consts = load_models() if consts is None else consts
    cfg = default_embed_config(consts) if cfg is None else cfg
    g = consts.generator
    store = cache_lib.EmbeddingCache(out_dir, cache_lib.tree_fingerprint(consts))
    items = identify(paths, progress)
    if split_processes:
        items = items[jax.process_index()::jax.process_count()]
    n_lat, d = g.config.n_latent, g.config.style_dim
    r = 2 ** (cfg.fs_block + 2)
    f_shape = (r, r, g.config.channels(r))
    if import_official is not None:
        for it in items:
            name, image_hash = it.name, it.image_hash
            if store.get_w_plus(name, image_hash, cfg, (n_lat, d)) is None:
                imported = store.import_official(import_official, name, image_hash, cfg, (n_lat, d), f_shape)
                log.info("%s: imported %s from %s", name, ", ".join(imported) or "nothing", import_official)

    with image_io.BackgroundWrites() as writes:  # results are written while the next batch runs
        failed, w_plus, results = _embed_todo(items, store, consts, cfg, batch_size, fs, progress, devices,
                                              out_dir, checkpoint_every, writes)
    if failed and failures is None:
        raise NonFiniteError(failed[0][1])
    if failures is not None:
        failures.extend(failed)
    bad = {name for name, _ in failed}
    return [EmbeddedImage(it.name, it.image_hash, w_plus[it.name], *(results.get(it.name, (None, None))))
            for it in items if it.name not in bad]


EMBED_WAVE = 1024  # images per embed call of embed_files


def embed_files(paths, out_dir, consts: embedding.Consts | None = None, cfg: embedding.EmbedConfig | None = None, *,
                wave: int = EMBED_WAVE, progress: bool = True, **kwargs) -> list[str]:
    """`embed` for any number of images, as `barbershop-jax embed` runs it: every file is read
    and checked first (two different images under one name are refused before any work), then
    `wave` images at a time are embedded, and only their names are kept. `embed` returns each
    image's arrays, and at 1024 px its F alone is 2 MB: 10,000 images held 20 GB. kwargs: as
    `embed` (batch_size, failures, ...). Returns the names embedded, or found in out_dir, by
    this process."""
    optimize.check_counts("embed_files", 1, wave=wave)
    items = identify(paths, progress)
    consts = load_models() if consts is None else consts
    names = []
    for start, stop in optimize.waves(len(items), wave, "images"):
        names += [e.name for e in embed(items[start:stop], out_dir, consts, cfg, progress=progress, **kwargs)]
    return names


def _embed_todo(items, store, consts, cfg, batch_size, fs, progress, devices, out_dir, checkpoint_every, writes):
    """The batches of `embed` that the cache does not hold: (failed, w_plus, FS results)."""
    g = consts.generator
    n_lat, d = g.config.n_latent, g.config.style_dim
    r = 2 ** (cfg.fs_block + 2)
    f_shape = (r, r, g.config.channels(r))
    failed: list = []
    w_plus = {it.name: store.get_w_plus(it.name, it.image_hash, cfg, (n_lat, d)) for it in items}
    todo = [it for it in items if w_plus[it.name] is None]
    with optimize.StageProgress("W+ embedding", len(todo), batch_size, cfg.w_steps, enabled=progress) as stage:
        for batch, padded in optimize.batches(todo, batch_size, "w_plus"):
            stage.next_batch()
            targets = _targets(padded, g.config.size, cfg)
            ckpt = resume.batch_checkpoint(out_dir, "w_plus", [store.w_key(it.image_hash, cfg) for it in padded],
                                           checkpoint_every)
            w, _ = embedding.embed_w_plus(consts, targets, cfg, progress=stage, devices=devices, checkpoint=ckpt)
            images = _render_last_step(consts, w, targets.key, cfg.w_steps, cfg)
            written = []
            for it, w_i, im in zip(batch, np.asarray(w), images):
                if not np.isfinite(w_i).all():
                    failed.append((it.name, f"{it.path or it.name}: W+ embedding diverged (NaN or infinity); "
                                            "nothing written"))
                    continue
                written.append(writes.submit(store.put_w_plus, it.name, it.image_hash, cfg, w_i, im))
                w_plus[it.name] = w_i
            if ckpt is not None:  # once the batch's results are on disk
                writes.submit(resume.clear, ckpt.folder, after=written)

    results = {}
    if fs:
        for it in items:
            hit = store.get_fs(it.name, it.image_hash, cfg, (n_lat, d), f_shape)
            if hit is not None:
                results[it.name] = hit
        todo = [it for it in items if it.name not in results and w_plus[it.name] is not None]
        with optimize.StageProgress("FS embedding", len(todo), batch_size, cfg.fs_steps, enabled=progress) as stage:
            for batch, padded in optimize.batches(todo, batch_size, "fs"):
                stage.next_batch()
                targets = _targets(padded, g.config.size, cfg)
                w = jnp.asarray(np.stack([w_plus[it.name] for it in padded]))
                ckpt = resume.batch_checkpoint(out_dir, "fs", [store.fs_key(it.image_hash, cfg) for it in padded],
                                               checkpoint_every)
                latent_in, structure_f, _ = embedding.embed_fs(consts, targets, w, cfg, progress=stage,
                                                               devices=devices, checkpoint=ckpt)
                images = _render_fs(consts, latent_in, structure_f, targets.key, cfg)
                written = []
                for it, li, f, im in zip(batch, np.asarray(latent_in), np.asarray(structure_f), images):
                    if not (np.isfinite(li).all() and np.isfinite(f).all()):
                        failed.append((it.name, f"{it.path or it.name}: FS embedding diverged (NaN or infinity); "
                                                "nothing written"))
                        continue
                    written.append(writes.submit(store.put_fs, it.name, it.image_hash, cfg, li, f, im))
                    results[it.name] = (li, f)
                if ckpt is not None:
                    writes.submit(resume.clear, ckpt.folder, after=written)
    return failed, w_plus, results


READ_THREADS = min(16, os.cpu_count() or 1)
READ_BAR_FROM = 32  # images: fewer are read without a progress bar


def read_sources(paths, progress: bool = True) -> dict:
    """{str(path): ImageSource, or the ImageError that says why it cannot be used} for each
    distinct path, decoded and hashed on READ_THREADS threads (PIL's decoders and hashlib let
    go of the GIL: 32 ms per 1024 px PNG on one core, and 3,000 images were a silent minute and
    a half before the first step, on every run, cached or not), with a bar from READ_BAR_FROM."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def read(path):
        try:
            return as_source(path)
        except image_io.ImageError as e:
            return e

    distinct = list(dict.fromkeys(str(p) for p in paths))
    with ThreadPoolExecutor(READ_THREADS) as pool, \
            tqdm(total=len(distinct), desc="Reading images", unit="image", dynamic_ncols=True,
                 disable=not progress or len(distinct) < READ_BAR_FROM) as bar:
        read_all = [pool.submit(read, Path(p)) for p in distinct]
        for future in read_all:
            future.add_done_callback(lambda _: bar.update())
        return {p: future.result() for p, future in zip(distinct, read_all)}


def as_sources(images, progress: bool = False) -> list[ImageSource]:
    """as_source of each image, the files read in parallel (read_sources); the first image
    that cannot be used raises its ImageError."""
    images = list(images)
    read = read_sources([x for x in images if isinstance(x, (str, Path))], progress)
    sources = [read[str(x)] if isinstance(x, (str, Path)) else as_source(x) for x in images]
    for source in sources:
        if isinstance(source, image_io.ImageError):
            raise source
    return sources


def identify(images, progress: bool = False) -> list[ImageSource]:
    """The distinct images among `images` (paths or ImageSources), in order (files read in
    parallel: as_sources). Two different images under one name are refused: the cache files
    are named after the image."""
    items, seen = [], {}
    for source in as_sources(images, progress):
        if source.name in seen:
            if seen[source.name] != source.image_hash:
                raise image_io.ImageError(f"{source.path or source.name}: another input is also named "
                                          f"{source.name!r}; rename one")
            continue
        seen[source.name] = source.image_hash
        items.append(source)
    return items


def _targets(batch, size, cfg) -> embedding.Targets:
    full, small = zip(*(read_target(source, size, cfg.lpips_size) for source in batch))
    return embedding.Targets(full=jnp.asarray(np.stack(full)), small=jnp.asarray(np.stack(small)),
                             key=jnp.stack([optimize.image_key(cfg.seed, source.image_hash) for source in batch]))


@compile_cache.jit(static_argnames=("noise", "block"))
def _render_saved(g, latents, structure_f, keys, step, noise, block):
    """Each image rendered with the noise its loop drew at `step` (per image): the official
    saves the render of its last iteration. W+ when structure_f is None, else FS."""
    def one(w, f, k):
        key = jax.random.fold_in(k, step)
        if f is None:
            return g.render(w[None], noise=noise, key=key)[0]
        return g.render_from_features(f[None], w[None], block=block, noise=noise, key=key)[0]

    return jax.vmap(one, in_axes=(0, None if structure_f is None else 0, 0))(latents, structure_f, keys)


def _render_last_step(consts, w_plus, keys, n_steps, cfg):
    images = _render_saved(consts.generator, w_plus, None, keys, n_steps - 1, cfg.noise, cfg.fs_block)
    return image_io.to_uint8(np.asarray(images))


def _render_fs(consts, latent_in, structure_f, keys, cfg):
    # The official PNG is rendered from the F before the last update; only the F after it is
    # kept, so this render uses that one (a one-step difference).
    images = _render_saved(consts.generator, latent_in, structure_f, keys, cfg.fs_steps - 1, cfg.noise, cfg.fs_block)
    return image_io.to_uint8(np.asarray(images))
