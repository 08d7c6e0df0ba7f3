"""The web page's work, without the page: uploads kept by content, photos aligned where their
landmarks can be found, and one job at a time on the server's one HairTransfer (models loaded
once, one output folder: an image uploaded twice is embedded once), with the progress of the
stage that runs. app.py puts a Gradio page over it."""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np

from barbershop_jax.config import DEFAULT_BATCH_SIZE, MAX_SEED, EmbedConfig, TransferConfig, split_options
from barbershop_jax.pipeline import demo
from barbershop_jax.pipeline import doctor
from barbershop_jax.pipeline.files import contact_sheet
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline.faces import landmarks
from barbershop_jax.pipeline.runtime import progress
from barbershop_jax.pipeline.store import cache as store
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.embed import NonFiniteError
from barbershop_jax.pipeline.hair_transfer import HairTransfer
from barbershop_jax.pipeline.store.layout import Layout
from barbershop_jax.pipeline.runtime.settings import RunSettings, compile_ahead_default
from barbershop_jax.stages import target_mask
from barbershop_jax.pipeline.files.sources import content_hash

log = logging.getLogger("barbershop_jax")
COMPILING = "compiling the page's programs ahead"
MIN_SIDE = 32  # px: a smaller upload is refused (resized to the generator it would be a blur)
STEP_FIELDS = ("w_steps", "fs_steps", "inpaint_steps", "align_steps1", "align_steps2", "blend_steps")
POLL_SECONDS = 0.5  # how often a waiting job reports its stage's progress
# What one request may ask by default (serve's --max-steps, --max-batch, --max-upload-mb say why).
MAX_STEPS = 2000       # each step count: above the largest official one (W+ 1100)
MAX_BATCH = 16         # transfers in one grid job (faces x hairstyles)
MAX_UPLOAD_MB = 25     # each uploaded file, MiB: a full-resolution camera photo fits
# The page's other numbers. smooth's dilations are unrolled in a compiled program, one program per
# value, so a large one takes very long to compile (the official value is 5). The seed's range is
# config.MAX_SEED, as on the command line.
MAX_SMOOTH = 32
MAX_REGION_CHARS = 200
KEPT_UPLOADS = 4096  # temporary upload paths remembered with the server's copy (Server.store_upload)


class UploadError(ValueError):
    """An upload that cannot be used; the message is one line naming the input and why."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask of the server, checked before any work with one line per
    refused input: the server runs one job at a time, so one request of 10^9 steps would
    hold it for years while every other job queues.

    max_steps: each step count; max_batch: the transfers of one grid job (faces x
    hairstyles); max_upload_mb: each uploaded file, in MiB (Gradio's own unit)."""
    max_steps: int = MAX_STEPS
    max_batch: int = MAX_BATCH
    max_upload_mb: float = MAX_UPLOAD_MB

    def __post_init__(self):
        for name in ("max_steps", "max_batch", "max_upload_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"Limits: {name} must be a number above 0, got {value!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def whole_number(name: str, value, high: int, hint: str = "") -> int:
    """A number from the page or the API as an int from 0 to `high`, else a ValueError in one
    line naming it (numbers arrive as floats; NaN and infinity are refused, not rounded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a whole number, got {value!r}")
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name}: {value!r} is not a whole number")
    if not 0 <= value <= high:
        raise ValueError(f"{name}: {int(value)} is out of range (0 to {high}{hint})")
    return int(value)


def official_steps() -> dict:
    """The official step counts (EmbedConfig's and TransferConfig's defaults)."""
    embed, transfer = EmbedConfig(), TransferConfig()
    return {k: getattr(embed if hasattr(embed, k) else transfer, k) for k in STEP_FIELDS}


@dataclasses.dataclass
class Prepared:
    """An input ready for the pipeline: its path (the FFHQ crop when the photo was aligned)
    and a line for the page saying what was done with it."""
    path: Path
    cropped: bool
    note: str


@dataclasses.dataclass
class WebResult:
    """A transfer's images and files, for the page."""
    inputs: list          # [(uint8 image, caption)]: the inputs as the pipeline took them
    image: np.ndarray     # the result
    mask: np.ndarray      # the target mask, coloured (target_mask.colourise)
    legend: list          # [(class name, (r, g, b))] of the classes in the mask (contact_sheet.legend_entries)
    pasted: np.ndarray | None  # the result pasted into the face's photo (when it was aligned)
    files: list           # downloads: result PNG, its latents (.npz), the pasted photo
    notes: list           # lines: what was done with each input, the time taken


class Server:
    """The page's state: one HairTransfer, its output folder, one worker thread.

    weights: a converted weights directory, or None for the embedded tiny models (with
    demo.DEMO_STEPS as the page's step defaults; the official counts with weights).
    out_dir: the server's folder (uploads/, aligned/, the official layout of results, and
    the embedding cache); None: a temporary folder that lives as long as the server.
    steps: the page's default step counts, replacing those above (a dict of STEP_FIELDS), each
    at most limits.max_steps.
    limits: what one request may ask (Limits; its defaults when None).
    compile_ahead: first, on the worker, compile the programs of a transfer with the page's
    default settings (compile_programs), so that the first request does not wait for XLA; None:
    on unless $BARBERSHOP_JAX_COMPILE_AHEAD is off. `compiled` is that work's future."""

    def __init__(self, weights=None, out_dir=None, *, batch_size: int = DEFAULT_BATCH_SIZE, steps=None,
                 compile_cache: bool = True, limits: Limits | None = None, compile_ahead: bool | None = None):
        self.limits = limits or Limits()
        self.transfer = HairTransfer(weights, out_dir, run=RunSettings(batch_size=batch_size, progress=True),
                                     compile_cache=compile_cache)
        self.out_dir = self.transfer.out_dir
        self.embedded = weights is None
        self.size = self.transfer.models.generator.config.size
        defaults = {**(demo.DEMO_STEPS if self.embedded else official_steps()), **(steps or {})}
        self.default_steps = {k: min(v, self.limits.max_steps) for k, v in defaults.items()}
        self.label_map = self.transfer.models.parser.labels
        # One job at a time on the models: the page's queue holds the others (app.py).
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="barbershop-jax-job")
        ahead = compile_ahead_default() if compile_ahead is None else compile_ahead
        self._ahead: progress.BarState | None = None  # where compile_programs stands, while it runs
        self.compiled = self._worker.submit(self.compile_programs) if ahead else None
        self._examples = None
        # {an upload's path as given: the server's copy}, so that a temporary upload removed when
        # its job ended (app.py) can be used again, as the page sends the same path for a rerun.
        self._kept = collections.OrderedDict()

    def compile_programs(self) -> list[str]:
        """The stage programs of one transfer with the page's default settings (three images:
        face, shape and colour) compiled, side by side on compiler threads, with a progress bar
        on stderr; a job waits in the queue meanwhile. A request that keeps the defaults then
        compiles no stage program; other settings (a sign or smooth of its own) compile theirs.
        Returns the programs' names; a failure is one warning line (each request then compiles
        what it needs, and meets any real error itself)."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        log.info("compiling the page's programs ahead: a request made meanwhile waits for them "
                 "(serve --no-compile-ahead: not at start-up)")
        try:
            compiler = self.transfer.compile_ahead()
            with tqdm(total=len(compiler.futures), desc=COMPILING, unit="program") as bar:
                self._ahead = progress.BarState(COMPILING, 0, bar.total, None)
                for _ in concurrent.futures.as_completed(compiler.futures):
                    bar.update()
                    rate = bar.format_dict.get("rate")
                    self._ahead = progress.BarState(COMPILING, bar.n, bar.total,
                                                    (bar.total - bar.n) / rate if rate else None)
        except Exception as e:  # noqa: BLE001 (the page serves on: a request compiles what it needs)
            log.warning("compiling the page's programs ahead failed (a request compiles what it needs): %s",
                        image_io.one_line(str(e)))
            return []
        finally:
            self._ahead = None
        log.info("the page's %d programs compiled in %.0f s: a transfer with its default settings compiles "
                 "nothing more", len(compiler.programs), time.perf_counter() - start)
        return compiler.programs

    def machine_report(self) -> dict:
        """`barbershop-jax doctor`'s facts for this server: its weights, batch size, dtype and
        default step counts (doctor.report; no model runs)."""
        return doctor.report(self.transfer.weights, batch_size=self.transfer.run.batch_size, dtype=self.transfer.dtype,
                             steps=self.default_steps, steps_name="the page's default step counts")

    # ------------------------------------------------------------------ uploads
    def _example_sidecars(self) -> dict:
        """{content hash: landmarks sidecar} of the bundled photos that have one, so that a
        bundled photo picked from the gallery (a copy elsewhere) finds its landmarks."""
        if self._examples is None:
            self._examples = {}
            for path in demo.example_images().values():
                if landmarks.sidecar_path(path).is_file():
                    self._examples[content_hash(image_io.load_rgb(path))] = landmarks.sidecar_path(path)
        return self._examples

    def store_upload(self, path, role: str) -> Path:
        """Check an uploaded file and keep it as OUT/uploads/{stem}_{hash}{suffix}: named by its
        content, so that the same image is one name (embedded once) and two images of one name
        are two. A path stored before and since removed (a temporary upload) gives its copy.
        Raises UploadError (one line) for a missing, unreadable, tiny or too large image."""
        if path is None or str(path) == "":
            raise UploadError(f"{role}: no image given")
        path = Path(path)
        if not path.exists() and str(path) in self._kept and self._kept[str(path)].is_file():
            return self._kept[str(path)]
        self._check_size(path, role)
        try:
            pixels = image_io.load_rgb(path)
        except (image_io.ImageError, OSError) as e:
            raise UploadError(f"{role}: {path.name} is not a readable image ({_reason(e, path)})") from None
        h, w = pixels.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise UploadError(f"{role}: {path.name} is {w}x{h} px, too small (at least {MIN_SIDE} px a side)")
        image_hash = content_hash(pixels)
        kept = self.out_dir / "uploads" / f"{_safe_stem(path.stem)}_{image_hash[:10]}{path.suffix.lower() or '.png'}"
        if path.parent == kept.parent:  # already the server's copy
            return path
        if not kept.is_file():
            data = path.read_bytes()
            image_io.atomic_write(kept, lambda f: f.write(data))
        sidecar = self._example_sidecars().get(image_hash)
        if sidecar is not None and not landmarks.sidecar_path(kept).is_file():
            shutil.copyfile(sidecar, landmarks.sidecar_path(kept))
        self._kept[str(path)] = kept
        while len(self._kept) > KEPT_UPLOADS:
            self._kept.popitem(last=False)
        return kept

    def _check_size(self, path: Path, role: str):
        try:
            size = path.stat().st_size
        except OSError:
            raise UploadError(f"{role}: {path.name} is not on the server (an upload is removed when its job ends "
                              "and kept only while the server runs): upload it again") from None
        if size > self.limits.max_upload_bytes:
            raise UploadError(f"{role}: {path.name} is {size / 2 ** 20:.3g} MiB, more than this server takes "
                              f"({self.limits.max_upload_mb:.3g} MiB: serve --max-upload-mb)")

    def prepare(self, path, role: str, crop: bool = True) -> Prepared:
        """An upload as the pipeline's input. crop: its FFHQ crop where landmarks are found (a
        sidecar .landmarks.json, or dlib: the landmarks extra or $BARBERSHOP_DLIB_MODEL), else
        the image as it is if it is square (taken for an aligned crop, and said so), else an
        UploadError. crop=False: a square image as it is, and only a non-square one cropped."""
        kept = self.store_upload(path, role)
        name = Path(path).name
        h, w = image_io.load_rgb(kept).shape[:2]
        if not crop and h == w:
            return Prepared(kept, False, f"{role}: {name} used as it is (square: taken for an aligned crop)")
        crop_dir = Layout(self.out_dir).crops_dir()
        crop_path = crop_dir / f"{kept.stem}.png"
        if crop_path.is_file() and face_crop.transform_path(crop_path).is_file():  # aligned before: the transform is written last
            return Prepared(crop_path, True, f"{role}: {name} aligned (FFHQ crop, from an earlier upload)")
        try:
            face = face_crop.FaceCropper(size=self.size).crop_one(kept, crop_dir)
            return Prepared(face.crop_path, True, f"{role}: {name} aligned (FFHQ crop from its landmarks)")
        except (landmarks.LandmarkError, face_crop.FaceCropError) as e:
            why = (f"no landmarks: no .landmarks.json beside it and no dlib model ({landmarks.INSTALL_HELP})"
                   if isinstance(e, landmarks.LandmarkModelError) else _reason(e, kept))
        if h != w:
            raise UploadError(f"{role}: {name} cannot be aligned ({why}) and is not square ({w}x{h}): "
                              "upload a square, FFHQ-aligned crop")
        return Prepared(kept, False, f"{role}: {name} used as it is, a square image taken for an aligned crop "
                                     f"({why})")

    # ------------------------------------------------------------------ jobs
    def options(self, sign, smooth, seed, region=None, **steps) -> dict:
        """The pipeline options from the page's values (numbers arrive as floats; a step count
        of None is the pipeline's default), checked before any work: each number whole and in
        its range (the step counts within limits.max_steps), the region's length, and the
        configurations they make (EmbedConfig, TransferConfig). A ValueError names the input."""
        unknown = set(steps) - set(STEP_FIELDS)
        if unknown:
            raise ValueError(f"unknown step option(s): {', '.join(sorted(unknown))}")
        out = {"sign": sign, "smooth": whole_number("smooth", smooth, MAX_SMOOTH),
               "seed": whole_number("seed", seed, MAX_SEED),
               **{k: whole_number(k, v, self.limits.max_steps, ": serve --max-steps")
                  for k, v in steps.items() if v is not None}}
        if region is not None and not isinstance(region, str):
            raise ValueError(f"region: expected label names, got {region!r}")
        if region and region.strip():
            if len(region) > MAX_REGION_CHARS:
                raise ValueError(f"region: {len(region)} characters, more than {MAX_REGION_CHARS}")
            out["region"] = region.strip()
        embed, transfer = split_options(out)
        EmbedConfig(**embed)
        TransferConfig(**transfer).region_ids(self.label_map)
        return out

    def run(self, fn, on_progress=None):
        """fn() on the worker thread; meanwhile on_progress(BarState) every POLL_SECONDS with
        the newest open stage bar (the pipeline's own ETA, compilation left out), or, while the
        job waits behind compile_programs, the programs compiled so far."""
        future = self._worker.submit(fn)
        while True:
            try:
                return future.result(timeout=POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                bars = progress.open_bars()
                state = bars[-1] if bars else self._ahead  # a job queued behind compile_programs sees it
                if on_progress is not None and state is not None:
                    on_progress(state)

    def transfer_one(self, face, shape, color, structure=None, *, crop_references=False, on_progress=None,
                     **options) -> WebResult:
        """One transfer from uploaded files (structure optional). The face is aligned where its
        landmarks are found; the references too with crop_references (else only those that
        are not square). Raises UploadError or ValueError with one line for bad inputs or
        settings, NonFiniteError if it diverged."""
        inputs = [self.prepare(face, "face"), self.prepare(shape, "shape reference", crop_references),
                  self.prepare(color, "colour reference", crop_references)]
        if structure is not None:
            inputs.append(self.prepare(structure, "structure reference", crop_references))
        paste_back = inputs[0].cropped
        result = self.run(lambda: self.transfer.transfer(
            *(p.path for p in inputs[:3]), structure=inputs[3].path if structure is not None else None,
            paste_back=paste_back, **options), on_progress)
        latents = self.out_dir / "downloads" / f"{result.path.stem}_latents.npz"
        store.save_latents_npz(latents, result.latent_in, result.structure_f)
        files = [result.path, latents] + ([result.pasted_path] if result.pasted_path else [])
        captions = ("face", "shape", "colour", "structure")
        seconds = sum(self.transfer.timings.values())
        notes = [p.note for p in inputs] + [f"done in {seconds:.1f} s" + ("" if paste_back else
                                            "; no pasted photo (the face was not aligned)")]
        return WebResult([(image_io.load_rgb(p.path), c) for p, c in zip(inputs, captions)], result.image,
                         target_mask.colourise(result.target_labels),
                         contact_sheet.legend_entries(result.target_labels, self.label_map),
                         result.pasted, files, notes)

    def grid(self, faces, hairstyles, colors=None, *, crop_references=False, on_progress=None, **options):
        """Every face with every hairstyle (and colour reference: the hairstyle's own when
        None, one for every column, or one per hairstyle) in one run: HairTransfer.grid's GridResult (its contact sheet: faces as rows,
        hairstyles as columns), the lines saying what was done with each input, and the grid's
        own report (its plan, then the sheet it wrote)."""
        if not faces or not hairstyles:
            raise UploadError("grid: give at least one face and one hairstyle")
        if len(faces) * len(hairstyles) > self.limits.max_batch:
            raise UploadError(f"grid: {len(faces)} faces x {len(hairstyles)} hairstyles = "
                              f"{len(faces) * len(hairstyles)} transfers, more than this server takes in one job "
                              f"({self.limits.max_batch}: serve --max-batch)")
        if colors and len(colors) not in (1, len(hairstyles)):
            raise UploadError(f"grid: {len(colors)} colour references for {len(hairstyles)} hairstyles: give one "
                              "per hairstyle, one for all, or none")
        face_inputs = [self.prepare(f, f"face {i + 1}") for i, f in enumerate(faces)]
        hair_inputs = [self.prepare(h, f"hairstyle {i + 1}", crop_references) for i, h in enumerate(hairstyles)]
        color_inputs = [self.prepare(c, f"colour {i + 1}", crop_references) for i, c in enumerate(colors or [])]
        said = []  # the grid's plan (work and predicted time) and where it wrote the sheet
        grid = self.run(lambda: self.transfer.grid([p.path for p in face_inputs], [p.path for p in hair_inputs],
                                                   [p.path for p in color_inputs] or None, log=said.append,
                                                   **options), on_progress)
        return grid, [p.note for p in face_inputs + hair_inputs + color_inputs], "\n".join(said)

    def close(self):
        self._worker.shutdown(wait=False, cancel_futures=True)


def _reason(error: Exception, path: Path) -> str:
    """An error's message without the path it starts with (the page names the input itself)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for prefix in (f"{path}: ", f"{path.name}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def _safe_stem(stem: str) -> str:
    """A file stem usable as an image name (sources.check_name) and in output file names."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem).strip("._")
    return cleaned[:40] or "image"


__all__ = ["Limits", "MIN_SIDE", "NonFiniteError", "Prepared", "Server", "UploadError", "WebResult", "official_steps",
           "whole_number"]
