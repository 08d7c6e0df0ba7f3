"""The Python API of a hairstyle transfer (HairTransfer), and the checks of a batch's inputs
before any work: every file read, every photo cropped."""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from barbershop_jax.config import FEATHER, LIMITS, TRANSFER_WAVE
from barbershop_jax.config import EmbedConfig, TransferConfig, check_numbers, shown, split_options
from barbershop_jax.models import bundle, weights_folder
from barbershop_jax.pipeline.runtime import batching
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline.store import step_times
from barbershop_jax.pipeline.store import cache as store
from barbershop_jax.pipeline import grid as grid_lib
from barbershop_jax.pipeline import plan as plan_lib
from barbershop_jax.pipeline.runtime import compile_cache as compile_cache_lib
from barbershop_jax.pipeline.runtime.settings import RunSettings
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.files import sources as sources_lib
from barbershop_jax.pipeline.embed import NonFiniteError
from barbershop_jax.pipeline.store.records import TargetEdit, TransferResult
from barbershop_jax.pipeline.run import Pipeline
from barbershop_jax.pipeline.store.layout import Layout
from barbershop_jax.stages import target_mask

logger = logging.getLogger("barbershop_jax")


class HairTransfer:
    """The Python API.

        ht = HairTransfer()                     # the default weights folder, else the embedded tiny models
        ht = HairTransfer("weights/")           # a converted weights folder; "embedded": the tiny models
        ht = HairTransfer(models)               # or models already loaded: a models.bundle.Models
        result = ht.transfer("face.png", "shape.png", "color.png", sign="fidelity")
        result.image                            # (1024, 1024, 3) uint8
        results = ht.transfer_many([(f, s, c), ...])

    Images: paths, PIL images or uint8 arrays (H, W, 3) at the generator's size (others are
    resized with a warning). Options: any TransferConfig or EmbedConfig field (sign, smooth,
    seed, blend_steps, w_steps, ...), given here as defaults or per call. Outputs go to
    `out_dir` in the official layout (default: a temporary folder that lives as long as this
    object); embeddings and alignments are cached there, so no image is embedded twice.

    models: a models.bundle.Models, or a converted weights folder to load them from. Not
    given: the default weights folder where it holds converted weights
    (models/weights_folder.py: $BARBERSHOP_JAX_WEIGHTS, else the user's cache folder, where
    `barbershop-jax weights download` puts them), else the embedded tiny models, said in one
    INFO line; None or "embedded": the embedded tiny models (from_weights(None) too).
    run: how the runs run (RunSettings: batch size, progress bars, devices, checkpoints every
    so many steps under OUT/.resume/, so that an interrupted run resumes mid-stage); its
    fields may also be given as keywords, HairTransfer(batch_size=4, progress=False).
    compile_cache: use XLA's persistent compilation cache (compile_cache.py), on by default.
    fresh: redo the embeddings, alignments and blends that earlier runs left in `out_dir`
    (those this object makes are still reused); `reuse` says, after each transfer, what was
    reused from the folder (store.Reuse: counts by kind, and `note`).
    dtype: "bfloat16" runs the generator's and VGG16's convolutions in bfloat16 (faster on
    GPUs and TPUs; see models.bundle.with_dtype); float32, as the official code, by default.
    parser_dtype: "bfloat16" runs the face parser in bfloat16 (the segmentation and alignment
    losses and the masks read from it); float32 by default. Both apply to the models loaded
    here: a Models bundle computes in its own (bundle.with_dtype converts one).
    """

    def __init__(self, models: bundle.Models | str | os.PathLike | None = weights_folder.FIND, out_dir=None, *,
                 run: RunSettings = RunSettings(), compile_cache: bool = True, fresh: bool = False,
                 dtype: str | None = None, parser_dtype: str | None = None, **options):
        # The settings are checked before minutes of loading models.
        self.run = _with_run_keywords(run, options)
        embed_overrides, overrides = split_options(options)
        EmbedConfig(**embed_overrides)  # each raises a ValueError naming a bad setting
        TransferConfig(**overrides)
        if compile_cache:
            compile_cache_lib.enable()
        if isinstance(models, bundle.Models):
            if dtype is not None or parser_dtype is not None:
                raise ValueError("HairTransfer: dtype and parser_dtype are for the models it loads; a Models bundle "
                                 "computes in its own (convert one with models.bundle.with_dtype)")
            self.models, self.weights = models, None  # weights: the directory loaded, if any (grid sheets' note)
        else:
            self.weights = weights_folder.resolve(models)
            if models is weights_folder.FIND:
                logger.info(weights_folder.describe(self.weights))
            self.models = bundle.load(self.weights, dtype or "float32", parser_dtype or "float32")
        if out_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="barbershop-jax-")
            out_dir = self._tmp.name
        self.out_dir = Path(out_dir)
        self.failures: list = []  # of the last transfer_many: (triple, reason) of those without a result
        self.options = options
        self.timings: dict[str, float] = {}
        self.fresh, self._made = fresh, set()  # _made: the keys of the entries this object wrote
        self.reuse = self._new_reuse()  # what the last transfer reused from out_dir and computed

    @classmethod
    def from_weights(cls, weights=None, out_dir=None, *, dtype: str = "float32", parser_dtype: str = "float32",
                     **kwargs) -> HairTransfer:
        """A HairTransfer on the models of a converted weights directory (stylegan2/, bisenet/,
        vgg16/; None: the embedded tiny models), loaded by models.bundle.load with these compute
        dtypes. kwargs: the constructor's (out_dir, run, compile_cache, fresh, options)."""
        return cls(weights, out_dir, dtype=dtype, parser_dtype=parser_dtype, **kwargs)

    @property
    def dtype(self) -> str:
        """The generator's compute dtype (the step times and plans are kept apart by it)."""
        return self.models.generator.config.dtype

    def _new_reuse(self) -> store.Reuse:
        return store.Reuse(self.fresh, self._made)

    def pipeline(self, **options) -> Pipeline:
        embed_overrides, overrides = split_options({**self.options, **options})
        return Pipeline(self.models, self.out_dir,
                        EmbedConfig.for_size(self.models.generator.config.size, **embed_overrides),
                        TransferConfig(**overrides), self.run, reuse=self._new_reuse())

    def _pipelines(self, regions, **options) -> dict:
        """One pipeline per region (its settings and file names), each checked before any work."""
        return {region: self.pipeline(**{**options, **({"region": region} if region else {})})
                for region in dict.fromkeys(r or None for r in regions)}

    def plan(self, triples, *, edits=None, regions=None, title="", **options) -> plan_lib.Plan:
        """What transfer_many(triples, ...) would do: the images it would embed, the pairs it
        would align and the triples it would blend (those the output folder holds counted as
        found), and the time its steps would take, from the steps measured on this machine
        (step_times.py). Reads the images (give sources.ImageSource items to read nothing
        again); runs no model."""
        triples = [tuple(map(sources_lib.without_pixels, t)) for t in checked_triples(triples)]  # hashes only
        regions = list(regions) if regions is not None else [None] * len(triples)
        pipelines = self._pipelines(regions, **options)
        return plan_lib.plan(pipelines, triples, self._read_edits(edits, pipelines), regions, dtype=self.dtype,
                             title=title)

    def compile_ahead(self, triples=None, **options):
        """Compile, on other threads, the programs that transfer_many(triples, **options) will
        run, without running any (Pipeline.compile_ahead: a rehearsal, seconds on this thread).
        triples: default one triple of three different images at the generator's size, as a
        single transfer (the web page's first request) has. Returns the compiler
        (runtime/compile_ahead.py): its `programs`, and `futures` that end as they compile."""
        if triples is None:
            size = self.models.generator.config.size
            triples = [tuple(np.full((size, size, 3), i, np.uint8) for i in range(3))]
        return self.pipeline(**options).compile_ahead(checked_triples(triples))

    def _read_edits(self, edits, pipelines) -> list:
        """The edits with their target masks read (an indexed PNG path) and checked."""
        labels = self.models.parser.labels
        size = next((pipeline.context.cfg.parse_size for pipeline in pipelines.values()), None)  # the same for every region
        return [None if e is None else dataclasses.replace(e, target=None if e.target is None else (
            store.read_label_png(e.target, labels, size) if isinstance(e.target, (str, Path))
            else target_mask.check_target(e.target, labels, size))) for e in (edits or [])]

    def edit_tag(self, edit: TargetEdit | None, region: str | None = None) -> str:
        """The digest (TargetEdit.tag; "" for none) of a triple's edit as transfer_many takes it
        with this region, after the checks transfer_many makes before any work: the region's
        label names, and the target mask (read from its file) against the face parser's labels
        and the parse size; each raises its ValueError here. Batch runs check every row with it,
        so that one bad row fails alone instead of stopping the others."""
        [read] = self._read_edits([edit], self._pipelines([region]))
        return "" if read is None else read.tag()

    def save_step_times(self) -> dict:
        """Keep the seconds per step this process's progress bars measured, for later plans."""
        return step_times.save_measured(self.models.generator.config.size, self.dtype)

    def grid(self, faces, hairstyles, colors=None, *, log=None, **kwargs) -> grid_lib.GridResult:
        """Every face with every hairstyle: `results[i][j]` is `faces[i]` with the hair (shape and
        structure) of `hairstyles[j]` in the colour of `colors[j]` (default: the hairstyle's own;
        one colour image serves every column). Each image is embedded once and each pair
        aligned once; the plan is told first (`log`, default the "barbershop_jax" logger at
        INFO; also GridResult.plan), and the contact sheet written to OUT/grid.png (faces as
        rows, hairstyles as columns). Each file is decoded once: its pixels serve its hash,
        the stages and its margin panel, and the cells are drawn from the results' images as
        their waves end (grid_lib.cell_panel), not read back from their files.
        kwargs: transfer_files' options (crop, paste_back, sign, ...). A cell whose transfer
        failed is None, its reason in self.failures."""
        log = log or (lambda text: logger.info("%s", text))
        faces, hairstyles = list(faces), list(hairstyles)
        colors = None if colors is None else list(colors)
        for what, images in (("faces", faces), ("hairstyles", hairstyles), ("colors", colors or [])):
            for i, image in enumerate(images):  # checked before any work, named by their place
                sources_lib.in_memory(image, f"{what}[{i}]")
        triples, cells = grid_lib.grid_triples(faces, hairstyles, colors)
        options = {k: v for k, v in kwargs.items() if k not in ("crop", "align", "paste_back", "feather",
                                                                 "save_target_masks", "wave")}
        title, plan = grid_lib.title(len(faces), len(hairstyles)), None
        if not (kwargs.get("crop") or kwargs.get("align")):  # else the crops are not made yet: the plan follows them
            # Every file read (and hashed) once here, its pixels kept for the run and the sheet.
            flat = [x for t in triples for x in t]
            read = sources_lib.as_sources(flat, keep_pixels=True)
            triples = [tuple(read[3 * k:3 * k + 3]) for k in range(len(triples))]
            plan = self.plan(triples, title=title, **options)
            log(plan.describe())
            files = {str(x): s for x, s in zip(flat, read) if isinstance(x, (str, Path))}
            faces, hairstyles = grid_lib.with_sources(faces, files), grid_lib.with_sources(hairstyles, files)
            colors = None if colors is None else grid_lib.with_sources(colors, files)
        size, panels = grid_lib.panel_size(len(faces), len(hairstyles)), {}

        def keep_panel(i, result):
            if result is not None:
                panels[cells[i]] = grid_lib.cell_panel(result.image, size)
        results = self.transfer_files(triples, on_result=keep_panel, **kwargs)
        self.save_step_times()
        notes = () if self.weights else (grid_lib.RANDOM_WEIGHTS_NOTE,)
        sheet, path = grid_lib.write_sheet(Layout(self.out_dir).grid_sheet(), faces, hairstyles, colors, panels, title=title, notes=notes)
        by_cell = dict(zip(cells, results))
        rows = [[by_cell[(i, j)] for j in range(len(hairstyles))] for i in range(len(faces))]
        log(grid_lib.wrote_line(path, title))
        return grid_lib.GridResult(rows, sheet, path, plan)

    def transfer_many(self, triples, *, crop=None, paste_back: bool = False, feather: float = FEATHER,
                      edits=None, regions=None, save_target_masks: bool = False, **options) -> list[TransferResult]:
        """Transfer every (face, shape, color) triple, or (face, shape, color, structure)
        quadruple (structure: the reference whose aligned F gives the region's structure;
        None or absent: the shape reference, as the official); batched, cached, in input
        order. A triple whose optimisation diverged (NaN or infinity) gives None, with its
        reason in `self.failures`; the others are unaffected.

        crop: ordinary photos in, FFHQ crops made first (face_crop.FaceCropper; True for the
        default one, landmarks from a sidecar JSON or dlib); the crops go to OUT/aligned/
        (`align=` is its former name, still taken).
        paste_back: each result is also pasted into the face's photo (the face must be a
        file whose crop transform {stem}.crop.json lies beside it, as crop writes it).
        edits: one TargetEdit (or None) per triple: its (face, shape) pair's target mask given
        (an array, or an indexed PNG path) or its shape reference's region moved and scaled.
        regions: one region (or None: the `region` option, hair by default) per triple, e.g.
        "lips" or "brows,eyes"; the triples of each region run as one batch run.
        save_target_masks: also write `OUT/target_masks/{face}_{ref}.png` (indexed: values are
        class ids, in the label colours) and legend.json, to edit and give back (the folder
        is `target_masks_{region}` for a region other than hair)."""
        check_numbers("transfer_many", feather=feather)
        triples = checked_triples(triples)
        crop = options.pop("align", None) if crop is None else crop  # its former name
        if crop:
            cropper = crop if isinstance(crop, face_crop.FaceCropper) else face_crop.FaceCropper()
            triples, failures = crop_inputs(triples, Layout(self.out_dir).crops_dir(),
                                             dataclasses.replace(cropper, size=self.models.generator.config.size))
            if failures:
                raise failures[0][1]
        if paste_back:
            check_paste_back(triples)
        regions = list(regions) if regions is not None else [None] * len(triples)
        if len(regions) != len(triples):
            raise ValueError(f"{len(regions)} regions for {len(triples)} triples: give one (or None) per triple")
        groups = {}
        for i, region in enumerate(regions):
            groups.setdefault(region or None, []).append(i)
        pipelines = self._pipelines(regions, **options)
        edits = self._read_edits(edits, pipelines)
        if edits and len(edits) != len(triples):
            raise ValueError(f"{len(edits)} edits for {len(triples)} triples: give one (or None) per triple")
        results = [None] * len(triples)
        self.timings, self.failures, self.reuse = {}, [], self._new_reuse()
        for region, indices in groups.items():
            pipeline = pipelines[region]
            pipeline.save_target_masks = save_target_masks
            try:
                done = pipeline.run([triples[i] for i in indices], [edits[i] for i in indices] if edits else None)
                if paste_back:
                    done = pipeline.paste_back(done, feather)
            finally:
                for stage, seconds in pipeline.context.timings.items():
                    self.timings[stage] = self.timings.get(stage, 0.0) + seconds
                self.failures += pipeline.triple_failures
                self.reuse.add(pipeline.context.reuse)
            for i, r in zip(indices, done):
                results[i] = r
        return results

    def transfer_files(self, triples, *, wave: int = TRANSFER_WAVE, edits=None, regions=None, on_result=None,
                       **kwargs) -> list[TransferResult | None]:
        """transfer_many for runs of any length, as the command line's batch mode runs them:
        `wave` triples at a time, each result kept as its names and file paths only (its
        arrays dropped: they are on disk), so that memory stays flat. At 1024 px a result and
        its alignments hold about 12 MB, more with a pasted photo, and transfer_many keeps
        them all until it returns: 10,000 triples would need over 100 GB. A later wave reads
        the embeddings and alignments that an earlier one made from the output folder.
        timings, failures and reuse add up over the waves. on_result(i, result): called with
        the result of triples[i] (None where it failed) as its wave ends, its arrays still there
        (a grid keeps its sheet's cells so).
        The files' pixels that sources read and kept (check_triples) are each decoded once;
        within its bound (sources.KEPT_PIXELS_BYTES), a file used by several waves is decoded
        again by each wave past that bound."""
        triples = list(triples)
        out, timings, failures, reuse = [], {}, [], self._new_reuse()
        for start, stop in batching.waves(len(triples), wave, "triples"):
            part = slice(start, stop)
            results = self.transfer_many(triples[part], edits=edits[part] if edits else None,
                                         regions=regions[part] if regions is not None else None, **kwargs)
            for stage, seconds in self.timings.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
            failures += self.failures
            reuse.add(self.reuse)
            for i, r in enumerate(results, start):
                if on_result is not None:
                    on_result(i, r)
            out += [None if r is None else dataclasses.replace(
                r, image=None, target_labels=None, latent_in=None, structure_f=None, face_mask=None, hair_mask=None,
                pasted=None) for r in results]
        self.timings, self.failures, self.reuse = timings, failures, reuse
        return out

    def transfer(self, face, shape, color, *, structure=None, target_mask=None, shape_transform=None,
                 **options) -> TransferResult:
        """One triple: the face with the region (hair by default; `region="lips"` etc.) shaped
        as in `shape`, structured as in `structure` (default: `shape`) and coloured as in
        `color`. target_mask (array or indexed PNG path) and shape_transform ((scale, dx, dy))
        edit the target mask (TargetEdit); takes transfer_many's other options too."""
        triple = tuple(sources_lib.in_memory(image, role) for image, role in zip((face, shape, color, structure), ROLES))
        edit = TargetEdit(target_mask, shape_transform) if target_mask is not None or shape_transform else None
        result = self.transfer_many([triple], edits=[edit], **options)[0]
        if result is None:
            raise NonFiniteError(self.failures[0][1])
        return result


ROLES = ("face", "shape", "color", "structure")  # the images of a triple, in order


def _with_run_keywords(run: RunSettings, options: dict) -> RunSettings:
    """`run` with the RunSettings fields given among HairTransfer's keywords (taken out of
    `options`) put in, so that HairTransfer(batch_size=4) says what run=RunSettings(batch_size=4)
    does; a bad number is a ValueError naming HairTransfer."""
    given = {field.name: options.pop(field.name) for field in dataclasses.fields(RunSettings) if field.name in options}
    check_numbers("HairTransfer", **{k: v for k, v in given.items() if k in LIMITS and v is not None})
    return dataclasses.replace(run, **given)


def checked_triples(triples, what: str = "triples") -> list[tuple]:
    """The triples, each in-memory image in them checked and made an ImageSource first
    (sources.in_memory), so that a degenerate array (empty, NaN, floats outside [0, 1], an
    int64 or boolean dtype, another shape) is refused before any work, naming its place:
    "triples[2][1] (shape)"."""
    checked = []
    for i, triple in enumerate(triples):
        if isinstance(triple, (str, bytes)) or not hasattr(triple, "__len__") or not 3 <= len(triple) <= 4:
            raise ValueError(f"{what}[{i}]: expected (face, shape, color) or (face, shape, color, structure), "
                             f"got {shown(triple)}")
        checked.append(tuple(sources_lib.in_memory(image, f"{what}[{i}][{j}] ({ROLES[j]})")
                             for j, image in enumerate(triple)))
    return checked


def check_paste_back(triples):
    """Before any optimisation: a face without its crop transform fails now, not after."""
    for t in triples:
        face = t[0].path if isinstance(t[0], sources_lib.ImageSource) else t[0]
        if not isinstance(face, (str, Path)):
            raise face_crop.FaceCropError("paste-back needs the face as a file with its crop transform "
                                          "(from align-faces), not an in-memory image")
        face_crop.read_transform(face)


def crop_inputs(triples, out_dir, cropper: face_crop.FaceCropper, roles=None):
    """Replace the images at `roles` (0 face, 1 shape, 2 colour, 3 structure; None: all) of
    each triple by their FFHQ crops, each distinct photo cropped once. Returns (triples,
    [(triple, error)]): a triple whose photo has no usable face fails alone."""
    from barbershop_jax.pipeline.faces.landmarks import LandmarkError, LandmarkModelError

    crops, good, failures = {}, [], []
    for t in triples:
        new, error = list(t), None
        for i in (range(len(t)) if roles is None else roles):
            if t[i] is None:  # no structure reference
                continue
            photo = t[i].path if isinstance(t[i], sources_lib.ImageSource) else t[i]
            if not isinstance(photo, (str, Path)):
                error = error or face_crop.FaceCropError("a face crop needs image files, not in-memory images")
                continue
            if str(photo) not in crops:
                try:
                    crops[str(photo)] = cropper.crop_one(photo, out_dir).crop_path
                except LandmarkModelError:
                    raise  # no photo can succeed: stop here
                except (face_crop.FaceCropError, LandmarkError, image_io.ImageError) as e:
                    crops[str(photo)] = e
            if isinstance(crops[str(photo)], Exception):
                error = error or crops[str(photo)]
            else:
                new[i] = crops[str(photo)]
        if error is not None:
            failures.append((t, error))
        else:
            good.append(tuple(new))
    return good, failures


def check_triples(triples, size: int | None = None, progress: bool = False, exif: bool = True):
    """Split triples into those whose images all read and those that do not (batch mode goes
    on without the latter). Returns (good triples, [(triple, one-line reason)]); in the good
    ones every file is a sources.ImageSource, read and hashed here once, in parallel, its
    pixels kept for the run (sources.read_sources: up to sources.KEPT_PIXELS_BYTES in all, so
    that a manifest of thousands of images keeps memory flat; past it a file is decoded again
    when its wave runs; exif: the files' EXIF orientation honoured, False for --no-exif).
    `size`: refuse images that are not size x size (otherwise they are resized, with a
    warning)."""
    good, failures = [], []
    checked = sources_lib.read_sources([x for t in triples for x in t if isinstance(x, (str, Path))], progress,
                                       keep_pixels=True, exif=exif)
    for path, source in checked.items():
        if isinstance(source, image_io.ImageError):
            checked[path] = str(source)
        elif size is not None and source.shape[:2] != (size, size):
            h, w = source.shape[:2]
            checked[path] = f"{path}: {w}x{h}, not the generator's {size}x{size} (refused by --no-resize)"
    for t in triples:
        reason, sources = None, []
        for image in t:
            if isinstance(image, (str, Path)):
                image = checked[str(image)]
                if isinstance(image, str):
                    reason = reason or image
            sources.append(image)
        if reason:
            failures.append((t, reason))
        else:
            good.append(tuple(sources))
    return good, failures
