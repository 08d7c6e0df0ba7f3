"""Batch runs from files: the rows of a manifest CSV, their split over hosts (--part), the
results and failures CSVs, and the end-of-run table."""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
from pathlib import Path

from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.store.layout import references
from barbershop_jax.pipeline.store.records import TargetEdit, TransferResult
from barbershop_jax.stages.target_mask import parse_shape_transform


def parts_by_face(faces: list[str], n_parts: int) -> list[int]:
    """The part (0 .. n_parts - 1) of each row, for `transfer --part K/N` on N hosts that share
    no coordinator: the rows of one face stay together, because every alignment and blend of
    a row is the face's (with its shape or colour reference), so no part redoes another's; the
    faces go, most rows first, to the part with the fewest rows so far. The same rows give the
    same parts on every host."""
    counts = collections.Counter(faces)
    load, part_of = [0] * n_parts, {}
    for face in sorted(counts, key=lambda f: (-counts[f], f)):
        part = min(range(n_parts), key=lambda k: (load[k], k))
        part_of[face] = part
        load[part] += counts[face]
    return [part_of[face] for face in faces]


INPUT_COLUMNS = ("face", "shape", "color", "structure")


def _write_csv(path: Path, header, rows) -> Path:
    """A CSV file written whole or not at all; each row's missing middle cells (a triple
    without a structure reference) left empty: rows are (inputs, then the other cells)."""
    n_inputs = len(header) - len(rows[0][1]) if rows else 0
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for inputs, rest in rows:
        writer.writerow([*(str(x) for x in inputs), *[""] * (n_inputs - len(inputs)), *rest])
    # surrogateescape: a file name that is not UTF-8 is written back as its own bytes (a
    # strict encode failed the run at its end, after the work).
    return image_io.atomic_write(path, lambda f: f.write(buf.getvalue().encode("utf-8", "surrogateescape")))


def write_results(path, done) -> Path:
    """`path` (OUT/results.csv: layout.Layout.results_csv): a row per result, in the input's
    order: its input files (structure where any triple has one), region (empty: the run's),
    the result PNG and, with paste-back, the pasted photo. done: [(triple of paths or sources.ImageSource, region, result)]."""
    columns = INPUT_COLUMNS[:max([3, *(len(t) for t, _, _ in done)])]
    rows = [([getattr(x, "path", None) or getattr(x, "name", x) for x in t],
             [region or "", str(r.path), str(r.pasted_path or "")]) for t, region, r in done]
    return _write_csv(Path(path), [*columns, "region", "result", "pasted"], rows)


def write_failures(path, failures, columns=None) -> Path:
    """`path` (OUT/failures.csv: layout.Layout.failures_csv): the columns of each failed item (empty where it has fewer),
    then the error. columns: default face, shape, color (and structure where an item has one)."""
    if columns is None:
        columns = INPUT_COLUMNS[:max([3, *(len(item) for item, _ in failures)])]
    rows = [(item, [str(reason)]) for item, reason in failures]
    return _write_csv(Path(path), [*columns, "error"], rows)


SUMMARY_ROWS = 20  # results listed at the end of a run; the rest are in results.csv
# The stages of the table, in run order, and the entries (store.REUSE_KINDS) each one makes.
STAGE_ENTRIES = {"embedding": ("W+", "FS"), "parsing": (), "target mask": ("alignment",),
                 "alignment": ("alignment",), "blending": ("blend",), "paste-back": ()}


def _stage_rows(timings: dict[str, float], reuse) -> list[str]:
    """A row per stage that ran or whose every entry was found in OUT ("reused": a re-run
    keeps the rows of the stages it skipped)."""
    def all_reused(stage):
        kinds = STAGE_ENTRIES.get(stage, ())
        return (reuse is not None and kinds and sum(reuse.reused[k] for k in kinds) > 0
                and sum(reuse.computed[k] for k in kinds) == 0)

    stages = [s for s in STAGE_ENTRIES if s in timings or all_reused(s)]
    stages += [s for s in timings if s not in STAGE_ENTRIES]
    rows = []
    for stage in stages:
        seconds = f"{timings[stage]:.1f}" if stage in timings else ""
        if all_reused(stage):
            seconds = f"{seconds} (reused)" if seconds else "reused"
        rows.append(f"| {stage} | {seconds} |")
    return rows


def summary(results: list[TransferResult], timings: dict[str, float], listed: str | None = None,
            reuse=None) -> str:
    """The end-of-run table: time per stage, then each triple's output (the first
    SUMMARY_ROWS when `listed` names a file that lists them all). reuse: the run's
    store.Reuse; a stage whose entries were all found in OUT shows "reused"."""
    lines = ["| stage | seconds |", "| --- | ---: |"]
    lines += _stage_rows(timings, reuse)
    lines += [f"| total | {sum(timings.values()):.1f} |", "", "| face | shape | color | result |",
              "| --- | --- | --- | --- |"]
    shown = results[:SUMMARY_ROWS] if listed else results
    lines += [f"| {r.face} | {references(r.shape, r.structure)} | {r.color} | {r.path} |" for r in shown]
    if len(shown) < len(results):
        lines += ["", f"... and {len(results) - len(shown)} more: every result is listed in {listed}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- manifests
@dataclasses.dataclass
class Row:
    """One transfer of a batch: its images as given (`triple`: face, shape, color[, structure]),
    its target-mask edit, its region (None: the run's), its cell of a grid ((row, column) of
    the contact sheet), its row in the manifest (the header is row 1; None outside a
    manifest), and `problem`: why it cannot run, None while it can. A row with a problem is
    reported (stderr, failures.csv) and the other rows go on. `images`: the images as the run
    takes them (the crops with --align, then sources.ImageSource once read)."""
    triple: tuple
    edit: TargetEdit | None = None
    region: str | None = None
    cell: tuple | None = None
    number: int | None = None
    problem: str | None = None
    images: tuple | None = None

    def __post_init__(self):
        if self.images is None:
            self.images = self.triple

    def where(self, manifest) -> str:
        """How an error line names the row: "rows.csv row 3: " in a manifest, else ""."""
        return f"{manifest} row {self.number}: " if manifest and self.number is not None else ""


def _records(csv_path: Path) -> list[tuple[int, dict]]:
    """The manifest's rows as (row number, {column: cell}), the header being row 1; rows of
    empty cells (the ",,," lines a spreadsheet leaves at the end) are left out."""
    try:
        # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark, which would otherwise
        # become part of the first column's name.
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [(name or "").strip().lower() for name in reader.fieldnames or ()]
            missing = {"face", "shape", "color"} - set(reader.fieldnames)
            if missing:
                raise ValueError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))} "
                                 "(the header must name face, shape, color)")
            return [(number, row) for number, row in enumerate(reader, start=2)
                    if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    except OSError as e:
        raise ValueError(f"{csv_path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{csv_path}: not UTF-8 text ({e.reason}); save it as CSV UTF-8") from None


def read_rows(csv_path) -> list[Row]:
    """The manifest's rows: CSV columns face, shape, color, and optionally structure (a fourth
    reference: the triple gets it as a fourth path), region (label names, e.g. "brows,eyes";
    None where empty), target_mask and shape_transform (the row's TargetEdit, or None);
    relative paths are resolved against the CSV file's folder. A row whose cells cannot be
    used (no face, a shape transform that is not three finite numbers in range) comes back
    with its `problem` set: one bad row must not stop the others. An unreadable file, or one
    without the face, shape and color columns, raises a ValueError naming it."""
    csv_path = Path(csv_path)
    return [_read_row(csv_path, number, record) for number, record in _records(csv_path)]


def _read_row(csv_path: Path, number: int, record: dict) -> Row:
    def given(column):  # optional columns: empty or absent
        return (record.get(column) or "").strip()

    def resolve(value):
        return Path(value) if Path(value).is_absolute() else csv_path.parent / value

    triple = tuple(resolve(given(k)) for k in ("face", "shape", "color"))
    triple += (resolve(given("structure")),) if given("structure") else ()
    row = Row(triple, region=given("region") or None, number=number)
    empty = [k for k in ("face", "shape", "color") if not given(k)]
    try:
        if empty:
            raise ValueError(f"no {' or '.join(empty)} given")
        row.edit = make_edit(resolve(given("target_mask")) if given("target_mask") else None,
                             given("shape_transform") or None)
    except ValueError as e:
        row.problem = str(e)
    return row


def make_edit(target_mask, shape_transform):
    """A TargetEdit from a target mask's path and a shape transform's text, or None (a
    ValueError, naming the text, for a transform out of range or not finite: its parser
    checks it)."""
    if target_mask is None and not shape_transform:
        return None
    return TargetEdit(target_mask, parse_shape_transform(shape_transform) if shape_transform else None)
