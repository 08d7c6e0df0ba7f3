"""The embedding stage: images embedded in W+, then FS, batch by batch through the store
(stage_runner.py around the pure stages/embed.py); `embed` and `embed_files` run it alone, as
`barbershop-jax embed` does."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from barbershop_jax import config
from barbershop_jax.config import EMBED_WAVE, EmbedConfig, check_numbers
from barbershop_jax.models import bundle
from barbershop_jax.pipeline import stage_runner
from barbershop_jax.pipeline.context import RunContext
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.files import sources as sources_lib
from barbershop_jax.pipeline.files.sources import DecodedImages, identify
from barbershop_jax.pipeline.runtime import batching
from barbershop_jax.pipeline.runtime.settings import RunSettings
from barbershop_jax.pipeline.store import cache as cache_lib
from barbershop_jax.pipeline.store.layout import Layout
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


def embed(paths, out_dir, models: bundle.Models | None = None, cfg: EmbedConfig | None = None, *, fs: bool = True,
          import_official=None, failures: list | None = None, **run) -> list[EmbeddedImage]:
    """Embed images in W+ (and FS), batch by batch, skipping what `out_dir` already holds.

    `paths`: image files, or ImageSource items (`sources.as_source`) for images in memory.
    models: the models.bundle.Models (the face parser unused; default: the embedded ones).
    run: how the run runs, RunSettings' fields (batch_size, progress, devices,
    checkpoint_every: each batch's loops save their state every so many steps under
    out_dir/.resume/, so an interrupted run resumes mid-stage; None turns it off), and
    reuse: which finished entries of out_dir may be used (`fresh` redoes those of earlier
    runs), counting those it used and made (store.Reuse; default: reuse all).

    Writes the official layout under out_dir (W+/{name}.npy, FS/{name}.npz, with a PNG of each
    render and a JSON key beside it; see store/cache.py). `import_official`: a folder of
    official outputs (W+/, FS/) whose files are adopted, by image name, where out_dir has no
    entry yet. Multi-host (after `jax.distributed.initialize()`): process k of N embeds every
    N-th distinct image, over its own local devices, into the same out_dir (a shared
    filesystem); each process returns its share. Returns one EmbeddedImage per distinct path
    (of the share).

    An image whose result holds NaN or infinity is not written: it is listed in `failures`
    as (name, reason) and left out of the result when a list is given; otherwise a
    NonFiniteError is raised once the other images are done.
    """
    reuse = run.pop("reuse", None) or cache_lib.Reuse()
    check_numbers("embed", **{k: run[k] for k in ("batch_size", "checkpoint_every") if run.get(k) is not None})
    settings = RunSettings(**run)
    if import_official is not None and reuse.fresh:
        raise ValueError(f"--import-official {import_official} with --fresh: the one adopts entries, the other "
                         "redoes them; give one")
    models = bundle.load(parser=False) if models is None else models
    g = models.generator
    cfg = EmbedConfig.for_size(g.config.size) if cfg is None else cfg.check_size(g.config.size)
    ctx = RunContext(layout=Layout(out_dir), settings=settings, reuse=reuse, decoded=DecodedImages(g.config.size))
    # Files read here are decoded once: their pixels go to `decoded`, which the targets read.
    items = [ctx.decoded.adopt(it) for it in identify(paths, settings.progress, keep_pixels=True, what="paths")]
    items = items[jax.process_index()::jax.process_count()]
    if import_official is not None:
        _import_official(ctx, models, cfg, items, import_official)
    with image_io.BackgroundWrites() as ctx.writes:  # results are written while the next batch runs
        embedded = embed_images(ctx, models, cfg, items, fs=fs)
    if ctx.failures and failures is None:
        raise NonFiniteError(ctx.failures[0][1])
    if failures is not None:
        failures.extend(ctx.failures)
    return embedded


def embed_images(ctx: RunContext, models: bundle.Models, cfg: EmbedConfig, items, *, fs: bool = True
                 ) -> list[EmbeddedImage]:
    """The embedding stage of a run: each image (a sources.ImageSource whose pixels
    ctx.decoded holds) embedded in W+, then FS, through the store of ctx.layout's folder; an
    image that diverged is in ctx.failures and not in the result."""
    store = cache_lib.EmbeddingCache(ctx.layout.root, cache_lib.embedding_weights(models))
    by_name = {it.name: it for it in items}
    w_plus = stage_runner.run(ctx, _w_plus_stage(ctx, store, models, cfg, by_name), list(by_name))
    latents = {}
    if fs:
        latents = stage_runner.run(ctx, _fs_stage(ctx, store, models, cfg, by_name, w_plus),
                                   [name for name in by_name if name in w_plus])
    bad = {name for name, _ in ctx.failures}
    return [EmbeddedImage(it.name, it.image_hash, w_plus[it.name], *latents.get(it.name, (None, None)))
            for it in by_name.values() if it.name not in bad and it.name in w_plus]


def _import_official(ctx, models, cfg, items, folder):
    """Official outputs adopted where the store has no entry (counted as made, not reused)."""
    store = cache_lib.EmbeddingCache(ctx.layout.root, cache_lib.embedding_weights(models))
    g = models.generator.config
    latent_shape, f_shape = (g.n_latent, g.style_dim), config.f_shape(g, cfg.fs_block)
    for it in items:
        if store.get_w_plus(it.name, it.image_hash, cfg, latent_shape) is None:
            imported = store.import_official(folder, it.name, it.image_hash, cfg, latent_shape, f_shape)
            ctx.reuse.made.update([store.w_key(it.image_hash, cfg), store.fs_key(it.image_hash, cfg)])
            log.info("%s: imported %s from %s", it.name, ", ".join(imported) or "nothing", folder)


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


def _steps(metrics) -> dict:
    """{"steps": the steps each image took} when a stopping rule ran (stages/loop.py), else {}."""
    return {"steps": metrics["steps"]} if metrics and "steps" in metrics else {}


def _steps_taken(row) -> dict:
    """What an entry's JSON records of its loop's stopping rule: the steps the image took."""
    return {"steps": int(row["steps"])} if "steps" in row else {}


def _w_plus_stage(ctx, store, models, cfg, by_name) -> stage_runner.Stage:
    g = models.generator.config
    shape = (g.n_latent, g.style_dim)

    def compute(names, hook, bar):
        targets = _targets([by_name[n] for n in names], ctx.decoded, cfg)
        w, metrics = embedding.embed_w_plus(models, targets, cfg, hook=hook)
        return {"w_plus": w, "image": embedding.w_plus_render(models, w, targets.key, cfg), **_steps(metrics)}

    def write(name, key, row):
        store.put_w_plus(name, by_name[name].image_hash, cfg, row["w_plus"], image_io.to_uint8(row["image"]),
                         extra=_steps_taken(row))

    return stage_runner.Stage(
        "W+ embedding", "image", cfg.w_steps, "embedding", "w_plus", compute,
        key=lambda name: store.w_key(by_name[name].image_hash, cfg), kind="W+",
        cached=lambda name, key: store.get_w_plus(name, by_name[name].image_hash, cfg, shape),
        write=write, result=lambda name, row: row["w_plus"], finite=("w_plus",),
        diverged=lambda name: (name, f"{by_name[name].path or name}: W+ embedding diverged (NaN or infinity); "
                                     "nothing written"))


def _fs_stage(ctx, store, models, cfg, by_name, w_plus) -> stage_runner.Stage:
    g = models.generator.config
    latent_shape, f_shape = (g.n_latent, g.style_dim), config.f_shape(g, cfg.fs_block)

    def compute(names, hook, bar):
        targets = _targets([by_name[n] for n in names], ctx.decoded, cfg)
        w = jnp.asarray(np.stack([w_plus[n] for n in names]))
        latent_in, structure_f, metrics = embedding.embed_fs(models, targets, w, cfg, hook=hook)
        image = embedding.fs_render(models, latent_in, structure_f, targets.key, cfg)
        return {"latent_in": latent_in, "structure_f": structure_f, "image": image, **_steps(metrics)}

    def write(name, key, row):
        store.put_fs(name, by_name[name].image_hash, cfg, row["latent_in"], row["structure_f"],
                     image_io.to_uint8(row["image"]), extra=_steps_taken(row))

    return stage_runner.Stage(
        "FS embedding", "image", cfg.fs_steps, "embedding", "fs", compute,
        key=lambda name: store.fs_key(by_name[name].image_hash, cfg), kind="FS",
        cached=lambda name, key: store.get_fs(name, by_name[name].image_hash, cfg, latent_shape, f_shape),
        write=write, result=lambda name, row: (row["latent_in"], row["structure_f"]),
        finite=("latent_in", "structure_f"),
        diverged=lambda name: (name, f"{by_name[name].path or name}: FS embedding diverged (NaN or infinity); "
                                     "nothing written"))


def _targets(batch, decoded, cfg) -> embedding.Targets:
    """The official ref_im_H and ref_im_L of a batch, from each image's pixels decoded once."""
    return embedding.Targets(full=jnp.asarray(np.stack([decoded.signed(s) for s in batch])),
                             small=jnp.asarray(np.stack([decoded.small(s, cfg.lpips_size) for s in batch])),
                             key=jnp.stack([image_key(cfg.seed, source.image_hash) for source in batch]))
