"""Embedding images from files, batch by batch, through the cache: the pipeline around the
pure W+ and FS stages (stages/embed.py). Images are read and decoded here (sources.py), results
written here (store.py), progress and checkpoints attached here (loop_hook.py)."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax import config
from barbershop_jax.config import DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_EVERY, EMBED_WAVE, EmbedConfig, check_numbers
from barbershop_jax.models import bundle
from barbershop_jax.pipeline import loop_hook
from barbershop_jax.pipeline.runtime import batching
from barbershop_jax.pipeline.store import resume
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.runtime import progress as progress_lib
from barbershop_jax.pipeline.files import sources as sources_lib
from barbershop_jax.pipeline.store import cache as cache_lib
from barbershop_jax.pipeline.files.sources import DecodedImages, identify
from barbershop_jax.stages import embed as embedding
from barbershop_jax.stages.loop import image_key

log = logging.getLogger("barbershop_jax")


@dataclasses.dataclass
class EmbeddedImage:
    name: str
    image_hash: str
    w_plus: np.ndarray        # (n_latent, style_dim)
    latent_in: np.ndarray     # (n_latent, style_dim): FS latents (W+ head + optimised S)
    structure_f: np.ndarray   # (r, r, C) NHWC


class NonFiniteError(ValueError):
    """An image's optimisation produced NaN or infinity; nothing was written for it."""


def embed(paths, out_dir, models: bundle.Models | None = None, cfg: EmbedConfig | None = None,
          batch_size: int = DEFAULT_BATCH_SIZE, fs: bool = True, progress: bool = True, devices=None,
          import_official=None, checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY,
          failures: list | None = None, split_processes: bool = True, decoded=None,
          reuse: cache_lib.Reuse | None = None, pad_batches: bool = False) -> list[EmbeddedImage]:
    """Embed images in W+ (and FS), batch by batch, skipping what `out_dir` already holds.

    `paths`: image files, or ImageSource items (`sources.as_source`) for images in memory.
    models: the models.bundle.Models (the face parser unused; default: the embedded ones).
    decoded: the run's sources.DecodedImages (each image decoded once for the whole run), or
    None for this call's own.
    reuse: which finished entries of out_dir may be used (`fresh` redoes those of earlier
    runs), counting those it used and made (store.Reuse; default: reuse all, counted apart).
    pad_batches: a short batch runs at batch_size even when it is the only one (batching.batches).

    Writes the official layout under out_dir (W+/{name}.npy, FS/{name}.npz, with a PNG of each
    render and a JSON key beside it; see store.py). `import_official`: a folder of official
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
    check_numbers("embed", batch_size=batch_size, **({} if checkpoint_every is None else
                                                     {"checkpoint_every": checkpoint_every}))
    reuse = cache_lib.Reuse() if reuse is None else reuse
    if import_official is not None and reuse.fresh:
        raise ValueError(f"--import-official {import_official} with --fresh: the one adopts entries, the other "
                         "redoes them; give one")
    models = bundle.load(parser=False) if models is None else models
    g = models.generator
    cfg = EmbedConfig.for_size(g.config.size) if cfg is None else cfg.check_size(g.config.size)
    store = cache_lib.EmbeddingCache(out_dir, cache_lib.embedding_weights(models))
    decoded = DecodedImages(g.config.size) if decoded is None else decoded
    # Files read here are decoded once: their pixels go to `decoded`, which the targets read.
    items = [decoded.adopt(it) for it in identify(paths, progress, keep_pixels=True, what="paths")]
    if split_processes:
        items = items[jax.process_index()::jax.process_count()]
    n_lat, d = g.config.n_latent, g.config.style_dim
    f_shape = config.f_shape(g.config, cfg.fs_block)
    if import_official is not None:
        for it in items:
            name, image_hash = it.name, it.image_hash
            if store.get_w_plus(name, image_hash, cfg, (n_lat, d)) is None:
                imported = store.import_official(import_official, name, image_hash, cfg, (n_lat, d), f_shape)
                reuse.made.update([store.w_key(image_hash, cfg), store.fs_key(image_hash, cfg)])  # not "reused"
                log.info("%s: imported %s from %s", name, ", ".join(imported) or "nothing", import_official)

    with image_io.BackgroundWrites() as writes:  # results are written while the next batch runs
        failed, w_plus, results = _embed_todo(items, store, models, cfg, (batch_size, pad_batches), fs, progress,
                                              devices, out_dir, checkpoint_every, writes, decoded, reuse)
    if failed and failures is None:
        raise NonFiniteError(failed[0][1])
    if failures is not None:
        failures.extend(failed)
    bad = {name for name, _ in failed}
    return [EmbeddedImage(it.name, it.image_hash, w_plus[it.name], *(results.get(it.name, (None, None))))
            for it in items if it.name not in bad]


def embed_files(paths, out_dir, models: bundle.Models | None = None, cfg: EmbedConfig | None = None, *,
                wave: int = EMBED_WAVE, progress: bool = True, exif: bool = True, **kwargs) -> list[str]:
    """`embed` for any number of images, as `barbershop-jax embed` runs it: every file is read
    and checked first, then `wave` images at a time are embedded, and only their names are
    kept. A file that cannot be read, or two different images under one name, are refused
    before any work; with a `failures` list the bad ones are listed there instead
    (usable_images) and the others embedded (when none is left, the ImageError says why).
    `embed` returns each image's arrays, and at 1024 px its F alone is 2 MB: 10,000 images
    held 20 GB. kwargs: as `embed` (batch_size, failures, reuse: one store.Reuse for all
    waves, ...). exif: the files turned upright by their EXIF orientation (False: --no-exif).
    Returns the names embedded, or found in out_dir, by this process."""
    check_numbers("embed_files", wave=wave)
    if kwargs.get("failures") is not None:  # a bad file is listed there and the others go on
        failed = []
        paths = usable_images(paths, failed, progress, exif)
        if failed and not paths:  # nothing to embed: one error, as for a single bad file
            raise image_io.ImageError("; ".join(reason for _, reason in failed[:3]))
        kwargs["failures"].extend(failed)
    items = identify(paths, progress, what="paths", exif=exif)
    models = bundle.load(parser=False) if models is None else models
    names = []
    for start, stop in batching.waves(len(items), wave, "images"):
        names += [e.name for e in embed(items[start:stop], out_dir, models, cfg, progress=progress, **kwargs)]
    return names


def usable_images(paths, failures: list, progress: bool = True, exif: bool = True) -> list:
    """The images among `paths` (files or sources.ImageSource) that can be embedded, each file
    read once (sources.read_sources; the pixels are not kept); each one that cannot is added
    to `failures` as (path, reason) instead: a file that cannot be read, or an image whose
    name (its file's stem, which names its output files) an earlier, different image has:
    the first keeps the name, as one reads a list from the top. exif: as sources.read_sources'."""
    paths = list(paths)
    read = sources_lib.read_sources([p for p in paths if isinstance(p, (str, Path))], progress, exif=exif)
    usable, owners, seen = [], {}, set()
    for p in paths:
        if isinstance(p, (str, Path)):
            if str(p) in seen:
                continue
            seen.add(str(p))
        source = read[str(p)] if isinstance(p, (str, Path)) else p
        if isinstance(source, image_io.ImageError):
            failures.append((str(p), str(source)))
            continue
        first = owners.setdefault(source.name, source)
        if first.image_hash != source.image_hash:
            failures.append((str(p), f"{source.path or source.name} and {first.path or first.name} are two images "
                                     f"named {source.name!r}, which would write the same output files; the first "
                                     "keeps the name: rename the other"))
            continue
        usable.append(source)
    return usable


def _embed_todo(items, store, models, cfg, batching_args, fs, progress, devices, out_dir, checkpoint_every, writes,
                decoded, reuse):
    """The batches of `embed` that the cache does not hold (or `reuse` does not allow):
    (failed, w_plus, FS results). batching_args: (batch_size, pad_batches)."""
    batch_size, pad = batching_args
    g = models.generator
    n_lat, d = g.config.n_latent, g.config.style_dim
    f_shape = config.f_shape(g.config, cfg.fs_block)
    failed: list = []
    w_plus = {it.name: store.get_w_plus(it.name, it.image_hash, cfg, (n_lat, d))
              if reuse.allows(store.w_key(it.image_hash, cfg)) else None for it in items}
    for it in items:
        if w_plus[it.name] is not None:
            reuse.found("W+", store.w_key(it.image_hash, cfg))
    todo = [it for it in items if w_plus[it.name] is None]
    reuse.making("W+", [store.w_key(it.image_hash, cfg) for it in todo])
    with progress_lib.StageProgress("W+ embedding", len(todo), batch_size, cfg.w_steps, enabled=progress) as stage:
        for batch, padded in batching.batches(todo, batch_size, "w_plus", pad=pad):
            stage.next_batch()
            targets = _targets(padded, decoded, cfg)
            ckpt = resume.batch_checkpoint(out_dir, "w_plus", [store.w_key(it.image_hash, cfg) for it in padded],
                                           checkpoint_every)
            w, _ = embedding.embed_w_plus(models, targets, cfg, hook=loop_hook.PipelineHook(stage, ckpt, devices))
            images = image_io.to_uint8(np.asarray(embedding.w_plus_render(models, w, targets.key, cfg)))
            written = []
            for it, w_i, im in zip(batch, np.asarray(w), images):
                if not np.isfinite(w_i).all():
                    failed.append((it.name, f"{it.path or it.name}: W+ embedding diverged (NaN or infinity); "
                                            "nothing written"))
                    continue
                written.append(writes.submit(store.put_w_plus, it.name, it.image_hash, cfg, w_i, im))
                w_plus[it.name] = w_i
            if ckpt is not None:  # once the batch's results are on disk
                writes.submit(resume.clear, ckpt.folder, after=written, cleanup=True)

    results = {}
    if fs:
        for it in items:
            if not reuse.allows(store.fs_key(it.image_hash, cfg)):
                continue
            hit = store.get_fs(it.name, it.image_hash, cfg, (n_lat, d), f_shape)
            if hit is not None:
                results[it.name] = hit
                reuse.found("FS", store.fs_key(it.image_hash, cfg))
        todo = [it for it in items if it.name not in results and w_plus[it.name] is not None]
        reuse.making("FS", [store.fs_key(it.image_hash, cfg) for it in todo])
        with progress_lib.StageProgress("FS embedding", len(todo), batch_size, cfg.fs_steps,
                                        enabled=progress) as stage:
            for batch, padded in batching.batches(todo, batch_size, "fs", pad=pad):
                stage.next_batch()
                targets = _targets(padded, decoded, cfg)
                w = jnp.asarray(np.stack([w_plus[it.name] for it in padded]))
                ckpt = resume.batch_checkpoint(out_dir, "fs", [store.fs_key(it.image_hash, cfg) for it in padded],
                                               checkpoint_every)
                latent_in, structure_f, _ = embedding.embed_fs(models, targets, w, cfg,
                                                               hook=loop_hook.PipelineHook(stage, ckpt, devices))
                images = image_io.to_uint8(np.asarray(embedding.fs_render(models, latent_in, structure_f, targets.key,
                                                                          cfg)))
                written = []
                for it, li, f, im in zip(batch, np.asarray(latent_in), np.asarray(structure_f), images):
                    if not (np.isfinite(li).all() and np.isfinite(f).all()):
                        failed.append((it.name, f"{it.path or it.name}: FS embedding diverged (NaN or infinity); "
                                                "nothing written"))
                        continue
                    written.append(writes.submit(store.put_fs, it.name, it.image_hash, cfg, li, f, im))
                    results[it.name] = (li, f)
                if ckpt is not None:
                    writes.submit(resume.clear, ckpt.folder, after=written, cleanup=True)
    return failed, w_plus, results


def _targets(batch, decoded, cfg) -> embedding.Targets:
    """The official ref_im_H and ref_im_L of a batch, from each image's pixels decoded once."""
    return embedding.Targets(full=jnp.asarray(np.stack([decoded.signed(s) for s in batch])),
                             small=jnp.asarray(np.stack([decoded.small(s, cfg.lpips_size) for s in batch])),
                             key=jnp.stack([image_key(cfg.seed, source.image_hash) for source in batch]))
