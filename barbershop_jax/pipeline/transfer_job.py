"""`barbershop-jax transfer` as a Python call: one job (a triple, or a manifest's rows), its
inputs checked before any model loads, bad rows reported while the others go on, and the
results and failures written as CSVs. The command line only fills a TransferJob and shows
the JobReport that `run` returns; the library prints nothing."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from barbershop_jax.config import DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_EVERY, FEATHER
from barbershop_jax.models import weights as weights_lib
from barbershop_jax.models import stylegan2
from barbershop_jax.pipeline.store import batch_files
from barbershop_jax.pipeline.store.layout import Layout
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline import grid as grid_lib
from barbershop_jax.pipeline import hair_transfer as ht_lib
from barbershop_jax.pipeline.files.image_files import ImageError
from barbershop_jax.pipeline.runtime.settings import RunSettings

log = logging.getLogger("barbershop_jax")


@dataclasses.dataclass
class TransferJob:
    """What one `transfer` command asks for. Either `pairs` (a manifest CSV: batch mode) or
    face, shape and color (and structure); `options` are TransferConfig / EmbedConfig fields."""
    out: str
    face: str | None = None
    shape: str | None = None
    color: str | None = None
    structure: str | None = None
    pairs: str | None = None
    faces: list | None = None          # grid mode: every face x every hairstyle (files; folders expanded)
    hairstyles: list | None = None
    colors: list | None = None         # grid mode: one colour reference per hairstyle, or one for all
    part: tuple | None = None          # (k, n): this host's part of a manifest's rows
    target_mask: str | None = None
    shape_transform: str | None = None
    weights: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    progress: bool = True
    checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY
    dtype: str = "float32"
    parser_dtype: str = "float32"
    options: dict = dataclasses.field(default_factory=dict)
    crop: str | None = None            # None, "all" or "face": crop ordinary photos first (--align)
    landmarks: str | None = None
    dlib_model: str | None = None
    face_index: int | None = None
    min_face: float = face_crop.MIN_FACE
    paste_back: bool = False
    feather: float = FEATHER
    no_resize: bool = False
    save_target_mask: bool = False
    fresh: bool = False                # redo the entries earlier runs left in `out`
    exif: bool = True                  # input photos turned upright by their EXIF orientation (--no-exif: False)

    def cropper(self, size: int) -> face_crop.FaceCropper:
        return face_crop.FaceCropper.from_options(size, self.landmarks, self.dlib_model, self.face_index,
                                                  self.min_face, self.exif)

    def rows(self) -> list[batch_files.Row]:
        """The job's transfers, one batch_files.Row each (in grid mode with its cell; from a
        manifest with its row number, and its problem where its cells cannot be used)."""
        if self.faces or self.hairstyles or self.colors:
            if self.pairs or self.face or self.shape or self.color or self.structure:
                raise ValueError("give either --faces and --hairstyles (a grid) or --face/--shape/--color or --pairs, "
                                 "not both")
            if not (self.faces and self.hairstyles):
                raise ValueError("a grid needs --faces and --hairstyles (--colors is optional)")
            if self.target_mask or self.shape_transform:
                raise ValueError("--target-mask and --shape-transform edit one (face, shape) pair: not with a grid")
            faces, hairstyles = list(dict.fromkeys(self.faces)), list(dict.fromkeys(self.hairstyles))
            triples, cells = grid_lib.grid_triples(faces, hairstyles, self.colors)
            return [batch_files.Row(t, cell=cell) for t, cell in zip(triples, cells)]
        if self.pairs:
            if self.face or self.shape or self.color or self.structure:
                raise ValueError("give either --pairs or --face/--shape/--color/--structure, not both")
            if self.target_mask or self.shape_transform:
                raise ValueError("with --pairs, give target masks and shape transforms as the CSV's target_mask and "
                                 "shape_transform columns")
            rows = batch_files.read_rows(self.pairs)
            if not rows:
                raise ValueError(f"{self.pairs}: no triples (one row per transfer after the header)")
            return rows
        if self.face and self.shape and self.color:
            triple = (self.face, self.shape, self.color) + ((self.structure,) if self.structure else ())
            return [batch_files.Row(triple, batch_files.make_edit(self.target_mask, self.shape_transform))]
        raise ValueError("give --face, --shape and --color (or --pairs triples.csv)")


@dataclasses.dataclass
class JobReport:
    """What a transfer job did, for its caller to show (cli/main.py prints it): what ran and
    its results, what the output folder already held, which rows failed and why. The notes
    and the plan were also told while the job ran (the "barbershop_jax" logger, on_plan)."""
    triples: int = 0                 # the job's rows (this host's with --part), a repeated row once
    notes: list = dataclasses.field(default_factory=list)    # repeated rows, the --part line
    plan: str = ""                   # a batch's plan (work and predicted time), told before the work
    sheet_path: Path | None = None   # a grid's contact sheet
    sheet_title: str = ""            # the grid's name, "3 faces x 3 hairstyles"
    results: list = dataclasses.field(default_factory=list)  # TransferResult (file paths) of those done
    timings: dict = dataclasses.field(default_factory=dict)  # seconds per stage
    summary: str = ""                # the end-of-run table: seconds per stage, each result
    reuse_note: str | None = None    # what was reused from the output folder instead of computed
    pasted: list = dataclasses.field(default_factory=list)   # (face, pasted photo) with --paste-back
    failures: list = dataclasses.field(default_factory=list)  # (row label, e.g. "t.csv row 3: " or "", reason)
    failures_csv: Path | None = None

    @property
    def exit_code(self) -> int:
        """0 when every triple has a result, 1 when some failed."""
        return 1 if self.failures else 0


def _note(report, text):
    """A line told as the job goes (before the long work) and kept in the report."""
    report.notes.append(text)
    log.info("%s", text)


def generator_size(weights) -> int:
    """The generator's output size, from its config.json (no arrays read)."""
    if weights is None:
        return stylegan2.tiny_config().size
    root = weights_lib.model_dir(weights, "stylegan2")
    return int(weights_lib.read_config(root, "stylegan2")["config"]["size"])


def _unique_rows(job, rows, report):
    """A manifest's repeated rows (the same files, region and edit) are done once (a note
    names them)."""
    first_row = {}
    for row in rows:
        first = first_row.setdefault((*map(str, row.triple), row.region or "", row.edit, row.problem), row)
        if first is not row and row.number is not None:
            _note(report, f"note: {job.pairs}: row {row.number} repeats row {first.number}; it is done once")
    return list(first_row.values())


def _live(rows):
    return [row for row in rows if row.problem is None]


def _settle(rows, good, failures):
    """The outcome of a check over the rows' images (good: their new images, in order;
    failures: (images, reason) of the others): each row takes its new images or its problem."""
    failed = {tuple(map(str, images)): str(reason) for images, reason in failures}
    good = iter(good)
    for row in rows:
        key = tuple(map(str, row.images))
        if key in failed:
            row.problem = failed[key]
        else:
            row.images = next(good)


def _this_part(job, rows, report):
    """This host's rows of a `--part K/N` run (bad rows too: each is reported by one host)."""
    k, n = job.part
    parts = batch_files.parts_by_face([str(row.triple[0]) for row in rows], n)
    mine = [row for row, part in zip(rows, parts) if part == k - 1]
    _note(report, f"part {k} of {n}: {len(mine)} of {len(rows)} triple(s) (the rows of "
                  f"{len({str(row.triple[0]) for row in mine})} face(s))")
    return mine


def _check_transforms(rows):
    """Paste-back needs each face's crop transform and the unchanged photo it was cut from:
    a row whose face has neither fails alone, now rather than after its optimisations."""
    problems = {}
    for row in _live(rows):
        face = str(row.images[0])
        if face not in problems:
            try:
                face_crop.load_source_photo(face_crop.read_transform(face), what=face)
                problems[face] = None
            except ValueError as e:  # FaceCropError, or the photo's ImageError
                problems[face] = str(e)
        row.problem = problems[face]


def _read_images(job, rows):
    """Every image of the live rows read and checked (ht_lib.check_triples), each row's images
    becoming their sources.ImageSource; a row with an unreadable image, or one whose image's
    name another image has, fails alone."""
    live = _live(rows)
    size = generator_size(job.weights) if job.no_resize else None
    _settle(live, *ht_lib.check_triples([row.images for row in live], size, progress=job.progress, exif=job.exif))
    _refuse_name_clashes(_live(rows))


def _refuse_name_clashes(rows):
    """An image's name is its file's stem, and names the output files and cache entries: two
    different images under one name (face.png and face.jpg) would overwrite each other's
    results, and the cache would take one for the other. The first row to use a name keeps
    it, as one reads a manifest from the top (and a rerun after renaming the other file finds
    everything the first row made); each later row with another image of that name fails,
    naming both files, and the rest of the batch goes on."""
    owners = {}  # name -> (the first image with it, its row)
    for row in rows:
        images = [image for image in row.images if image is not None]
        for image in images:
            first, first_row = owners.get(image.name, (image, row))
            if first.image_hash != image.image_hash:
                where = f" (row {first_row.number})" if first_row.number is not None else ""
                row.problem = (f"{image.path or image.name} and {first.path or first.name}{where} are two images "
                               f"named {image.name!r}, which would write the same output files; the first keeps "
                               "the name: rename the other")
                break
        else:
            for image in images:
                owners.setdefault(image.name, (image, row))


def _check_edits(ht, rows):
    """Each live row's region and target-mask edit checked as the transfer would take them (a
    region's label names, a target mask's file); two rows editing one (face, shape) pair of a
    region differently cannot both run (its alignment is made once): the later one fails."""
    tags, pairs = {}, {}
    for row in _live(rows):
        if row.region is None and row.edit is None:
            continue
        key = (row.region, row.edit)
        if key not in tags:
            try:
                tags[key] = ht.edit_tag(row.edit, row.region)
            except (ValueError, OSError) as e:
                tags[key] = e
        if isinstance(tags[key], Exception):
            row.problem = str(tags[key])
        elif tags[key]:
            face, shape = row.images[0].name, row.images[1].name
            tag, first = pairs.setdefault((row.region, face, shape), (tags[key], row))
            if tag != tags[key]:
                where = f" of row {first.number}" if first.number is not None else ""
                row.problem = (f"{face} with {shape}: another target-mask edit than the one{where} (one edit per "
                               "(face, shape) pair in a run)")


def _stop_if_none_left(job, rows, layout):
    """When no row can run: the failures file of a batch, and one error line."""
    if _live(rows):
        return
    if job.pairs or job.faces is not None:
        _write_failures(job, rows, layout)
    raise ImageError("; ".join(row.where(job.pairs) + row.problem for row in rows[:3]))


def _write_failures(job, rows, layout):
    """OUT/failures.csv: a manifest's rows with their row numbers first."""
    failed = [row for row in rows if row.problem is not None]
    width = max(len(row.triple) for row in failed)
    columns = batch_files.INPUT_COLUMNS[:max(3, width)]
    if job.pairs:
        return batch_files.write_failures(layout.failures_csv(), [((row.number, *row.triple), row.problem)
                                                                  for row in failed], columns=("row", *columns))
    return batch_files.write_failures(layout.failures_csv(), [(row.triple, row.problem) for row in failed],
                                      columns=columns)


def run(job: TransferJob, on_plan=None) -> JobReport:
    """Run the job and report it (JobReport; exit_code 0 when every triple has a result, 1
    when some failed while the others went on, each failed row named in OUT/failures.csv);
    results in OUT (and OUT/results.csv for a manifest or a grid, and the grid's contact sheet
    OUT/grid.png). on_plan(text): called with a batch's plan before its long work (with
    job.progress). Each input file is decoded once (check_triples keeps its pixels for the
    run and the sheet)."""
    report = JobReport()
    rows = _unique_rows(job, job.rows(), report)
    layout = Layout(job.out, part=job.part)  # the run's files: results.csv, failures.csv, grid.png
    if job.part:  # before --align and the models: this host's rows only
        rows = _this_part(job, rows, report)
        if not rows:
            return report
    report.triples = len(rows)
    if job.paste_back and not job.crop:
        _check_transforms(rows)  # before loading any model

    def hair_transfer():  # loads the models
        run = RunSettings(batch_size=job.batch_size, progress=job.progress, checkpoint_every=job.checkpoint_every)
        return ht_lib.HairTransfer(job.weights, job.out, run=run, dtype=job.dtype, parser_dtype=job.parser_dtype,
                                   fresh=job.fresh, **job.options)

    ht = None
    if job.crop:  # the crops are cut at the generator's size: load the models first
        ht = hair_transfer()
        live = _live(rows)
        _settle(live, *ht_lib.crop_inputs([row.images for row in live], layout.crops_dir(),
                                           job.cropper(ht.models.generator.config.size),
                                           roles=(0,) if job.crop == "face" else None))
    _read_images(job, rows)  # before loading any model
    _stop_if_none_left(job, rows, layout)
    ht = ht or hair_transfer()
    _check_edits(ht, rows)
    _stop_if_none_left(job, rows, layout)
    _transfer(job, ht, rows, layout, report, on_plan)
    return report


def _transfer(job, ht, rows, layout, report, on_plan):
    """The live rows transferred (a grid's sheet cells kept as their waves end); the results
    and failures reported."""
    good, grid = _live(rows), job.faces is not None
    if grid:
        shape = len(dict.fromkeys(job.faces)), len(dict.fromkeys(job.hairstyles))
        report.sheet_title, size = grid_lib.title(*shape), grid_lib.panel_size(*shape)
    images, edits, regions = ([row.images for row in good], [row.edit for row in good],
                              [row.region for row in good])
    if (job.pairs or grid) and job.progress:  # a batch: what it will do and how long it will take, first
        report.plan = ht.plan(images, edits=edits, regions=regions, title=report.sheet_title).describe()
        if on_plan is not None:
            on_plan(report.plan)
    panels = {}  # a grid's cells: (row, column) -> the result's panel

    def keep_panel(i, result):  # a grid's cell, drawn from the result's image while it is there
        if grid and result is not None:
            panels[good[i].cell] = grid_lib.cell_panel(result.image, size)
    results = ht.transfer_files(images, paste_back=job.paste_back, feather=job.feather, edits=edits, regions=regions,
                                save_target_masks=job.save_target_mask, on_result=keep_panel)
    reasons = dict(ht.failures)  # optimisations that diverged: those triples only
    for row, result in zip(good, results):
        if result is None:
            row.problem = reasons.get(tuple(image.name for image in row.images if image is not None), "failed")
    listed = None
    done = [(row.images, row.region, r) for row, r in zip(good, results) if r is not None]
    if (job.pairs or grid) and done:  # which file came of which row, for the scripts that run many
        listed = batch_files.write_results(layout.results_csv(), done)
    ht.save_step_times()
    if grid:
        notes = () if job.weights else (grid_lib.RANDOM_WEIGHTS_NOTE,)
        _, report.sheet_path = grid_lib.write_sheet(layout.grid_sheet(), *_sheet_inputs(job, good), panels,
                                                    title=report.sheet_title, notes=notes, exif=job.exif)
    report.results, report.timings = [r for r in results if r is not None], dict(ht.timings)
    report.summary = batch_files.summary(report.results, ht.timings, listed, ht.reuse)
    report.reuse_note = ht.reuse.note(job.out)
    report.pasted = [(r.face, r.pasted_path) for r in report.results] if job.paste_back else []
    failed = [row for row in rows if row.problem is not None]
    if failed:
        report.failures_csv = _write_failures(job, rows, layout)
        report.failures = [(row.where(job.pairs), row.problem) for row in failed]


def _sheet_inputs(job, good):
    """The grid's margins (faces, hairstyles, colours) as sources whose pixels the check kept,
    so that no input is decoded again for the sheet: the faces as the run took them (the crops
    with --align), the references where the run took their files as given (with --align all,
    the photos)."""
    faces, hairstyles = list(dict.fromkeys(job.faces)), list(dict.fromkeys(job.hairstyles))
    colors = grid_lib.column_colours(hairstyles, job.colors) if job.colors else None
    used = {}  # (role, row or column) -> the source the run took
    for row in good:
        i, j = row.cell
        used.update({(0, i): row.images[0], (1, j): row.images[1], (2, j): row.images[2]})

    def as_given(role, k, given):
        source = used.get((role, k))
        return source if source is not None and str(source.path) == str(given) else given
    faces = [used.get((0, i), face) for i, face in enumerate(faces)]
    hairstyles = [as_given(1, j, hair) for j, hair in enumerate(hairstyles)]
    return faces, hairstyles, colors and [as_given(2, j, color) for j, color in enumerate(colors)]
