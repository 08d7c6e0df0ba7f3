"""`barbershop-jax transfer` as a Python call: one job (a triple, or a manifest's rows), its
inputs checked before any model loads, bad rows reported while the others go on, and the
results and failures written as CSVs. The command line only fills a TransferJob."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from barbershop_jax.config import DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_EVERY, FEATHER
from barbershop_jax.models import weights as weights_lib
from barbershop_jax.models import stylegan2
from barbershop_jax.pipeline import batch_files, face_crop
from barbershop_jax.pipeline import grid as grid_lib
from barbershop_jax.pipeline import hair_transfer as ht_lib
from barbershop_jax.pipeline.image_files import ImageError


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
    align: str | None = None           # None, "all" or "face": crop ordinary photos first
    landmarks: str | None = None
    dlib_model: str | None = None
    face_index: int | None = None
    min_face: float = face_crop.MIN_FACE
    paste_back: bool = False
    feather: float = FEATHER
    no_resize: bool = False
    save_target_mask: bool = False
    fresh: bool = False                # redo the entries earlier runs left in `out`

    def aligner(self, size: int) -> face_crop.Aligner:
        return face_crop.Aligner.from_options(size, self.landmarks, self.dlib_model, self.face_index, self.min_face)

    def rows(self):
        """(triples, edits, regions, cells) of the job; cells: each triple's (row, column) in
        grid mode, else None."""
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
            return triples, [None] * len(triples), [None] * len(triples), cells
        triples, edits, regions = self._rows()
        return triples, edits, regions, [None] * len(triples)

    def _rows(self):
        if self.pairs:
            if self.face or self.shape or self.color or self.structure:
                raise ValueError("give either --pairs or --face/--shape/--color/--structure, not both")
            if self.target_mask or self.shape_transform:
                raise ValueError("with --pairs, give target masks and shape transforms as the CSV's target_mask and "
                                 "shape_transform columns")
            triples, edits, regions = batch_files.read_triples(self.pairs)
            if not triples:
                raise ValueError(f"{self.pairs}: no triples (one row per transfer after the header)")
            return triples, edits, regions
        if self.face and self.shape and self.color:
            triple = (self.face, self.shape, self.color) + ((self.structure,) if self.structure else ())
            return [triple], [batch_files.make_edit(self.target_mask, self.shape_transform)], [None]
        raise ValueError("give --face, --shape and --color (or --pairs triples.csv)")


def generator_size(weights) -> int:
    """The generator's output size, from its config.json (no arrays read)."""
    if weights is None:
        return stylegan2.tiny_config().size
    root = weights_lib.model_dir(weights, "stylegan2")
    return int(weights_lib.read_config(root, "stylegan2")["config"]["size"])


def _unique_rows(job, triples, edits, regions, cells):
    """A manifest's repeated rows are done once (a note names them)."""
    row_key = lambda i: (*map(str, triples[i]), regions[i] or "")  # noqa: E731
    first_row = {}
    for i in range(len(triples)):
        first_row.setdefault(row_key(i), i)
    for i in range(len(triples)):
        if first_row[row_key(i)] != i:  # rows count from 2: the header is row 1
            print(f"barbershop-jax: note: {job.pairs}: row {i + 2} repeats row {first_row[row_key(i)] + 2}; "
                  "it is done once", file=sys.stderr)
    keep = [first_row[row_key(i)] == i for i in range(len(triples))]
    return ([x for x, k in zip(column, keep) if k] for column in (triples, edits, regions, cells))


def _kept(columns, ok):
    return ([x for x, k in zip(column, ok) if k] for column in columns)


def run(job: TransferJob) -> int:
    """Run the job: 0 when every triple has a result, 1 when some failed (each named on
    stderr and in OUT/failures.csv); results in OUT (and OUT/results.csv for a manifest or a
    grid, and the grid's contact sheet OUT/grid.png). The plan is printed first."""
    triples, edits, regions, cells = _unique_rows(job, *job.rows())
    failures_csv, grid = "failures.csv", job.faces is not None
    if job.part:  # before --align and the models: this host's rows only
        k, n = job.part
        parts = batch_files.parts_by_face([str(t[0]) for t in triples], n)
        mine = [p == k - 1 for p in parts]
        print(f"barbershop-jax: part {k} of {n}: {sum(mine)} of {len(triples)} triple(s) (the rows of "
              f"{len({str(t[0]) for t, m in zip(triples, mine) if m})} face(s))", file=sys.stderr)
        triples, edits, regions, cells = _kept((triples, edits, regions, cells), mine)
        failures_csv = f"failures.part{k}of{n}.csv"
        if not triples:
            return 0
    n_triples = len(triples)
    if job.paste_back and not job.align:
        for t in triples:  # before loading any model
            face_crop.read_transform(t[0])

    def hair_transfer():  # loads the models
        return ht_lib.HairTransfer(job.weights, job.out, batch_size=job.batch_size, progress=job.progress,
                                   checkpoint_every=job.checkpoint_every, dtype=job.dtype,
                                   parser_dtype=job.parser_dtype, fresh=job.fresh, **job.options)

    ht, align_failures = None, []
    if job.align:  # the crops are cut at the generator's size: load the models first
        ht = hair_transfer()
        originals = triples
        triples, align_failures = ht_lib.align_inputs(triples, Path(job.out) / "aligned",
                                                      job.aligner(ht.models.generator.config.size),
                                                      roles=(0,) if job.align == "face" else None)
        failed = {tuple(map(str, t)) for t, _ in align_failures}
        edits, regions, cells = _kept((edits, regions, cells), [tuple(map(str, t)) not in failed for t in originals])
    size = generator_size(job.weights) if job.no_resize else None
    good, failures = ht_lib.check_triples(triples, size, progress=job.progress)  # before loading any model
    bad = {tuple(map(str, t)) for t, _ in failures}
    edits, regions, cells = _kept((edits, regions, cells), [tuple(map(str, t)) not in bad for t in triples])
    failures = align_failures + failures
    if not good:
        if job.pairs or grid:
            batch_files.write_failures(job.out, failures, name=failures_csv)
        raise ImageError("; ".join(f"{msg}" for _, msg in failures[:3]))
    ht = ht or hair_transfer()
    if grid:
        faces, hairstyles = list(dict.fromkeys(job.faces)), list(dict.fromkeys(job.hairstyles))
        title = grid_lib.title(len(faces), len(hairstyles))
    if (job.pairs or grid) and job.progress:  # a batch: what it will do and how long it will take, first
        print(ht.plan(good, edits=edits, regions=regions, title=title if grid else "").describe(), file=sys.stderr)
    results = ht.transfer_files(good, paste_back=job.paste_back, feather=job.feather, edits=edits, regions=regions,
                                save_target_masks=job.save_target_mask)
    failures += ht.failures  # optimisations that diverged: those triples only
    listed = None
    done = [(t, region, r) for t, region, r in zip(good, regions, results) if r is not None]
    if (job.pairs or grid) and done:  # which file came of which row, for the scripts that run many
        listed = batch_files.write_results(job.out, done, name=failures_csv.replace("failures", "results"))
    ht.save_step_times()
    if grid:
        by_cell = {cell: r.path for cell, r in zip(cells, results) if r is not None}
        notes = () if job.weights else (grid_lib.RANDOM_WEIGHTS_NOTE,)
        used = {i: t[0] for (i, _), t in zip(cells, good)}  # with --align: the face crops
        faces = [used.get(i, face) for i, face in enumerate(faces)]
        _, sheet_path = grid_lib.write_sheet(job.out, faces, hairstyles, job.colors, by_cell, title=title, notes=notes,
                                             name=failures_csv.replace("failures", "grid").replace(".csv", ".png"))
        print(f"wrote {sheet_path}: the contact sheet ({title}: faces as rows, hairstyles as columns)")
    results = [r for r in results if r is not None]
    print(batch_files.summary(results, ht.timings, listed, ht.reuse))
    note = ht.reuse.note(job.out)
    if note:
        print(f"barbershop-jax: note: {note}", file=sys.stderr)
    if job.paste_back:
        for r in results:
            print(f"{r.face}: pasted into its photo: {r.pasted_path}")
    if failures:
        path = batch_files.write_failures(job.out, failures, name=failures_csv)
        print(f"{len(failures)} of {n_triples} triple(s) failed; see {path}", file=sys.stderr)
        for _, msg in failures:
            print(f"barbershop-jax: error: {msg}", file=sys.stderr)
        return 1
    return 0
