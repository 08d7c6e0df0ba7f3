"""`barbershop-jax weights download`: fetch the official checkpoints (download.py), convert them,
and put the models into a weights folder, whole or not at all.

The converters write into DIR/.staging-PID/; only when all of them have succeeded is each model
moved into place (an existing model folder renamed aside, the new one renamed in, the old one
removed once every model and DIR/sources.json are in place; any failure on the way renames the
old ones back). A failure anywhere leaves DIR's earlier models as they were. Downloads go to
DIR/.downloads/, where an interrupted one stays for the next run to resume; they are removed
after a successful conversion unless asked to keep them. One run at a time per folder: a lock
(DIR/.weights-download.lock, which stays: removing a lock file races with the next run's).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from barbershop_jax.models import weights_folder
from barbershop_jax.models.weights_folder import MODELS
from barbershop_jax.pipeline.runtime.stopping import shielded

from . import download
from .common import ConversionError

# model folder -> the kinds of checkpoint it is converted from (download.KINDS)
MODEL_FILES = {"stylegan2": ("stylegan2",), "bisenet": ("bisenet",), "vgg16": ("vgg16", "lpips")}
# the kind of checkpoint -> the key of the converted model's record ("converted" in its config.json) naming it
SOURCE_KEYS = {"stylegan2": "source", "bisenet": "source", "vgg16": "source", "lpips": "lpips_weights"}
SOURCES = "sources.json"
DOWNLOADS = ".downloads"
LOCK = ".weights-download.lock"
STAGING, ASIDE = ".staging-", ".aside-"  # DIR/.staging-PID/, DIR/.MODEL.aside-PID


@dataclass(frozen=True)
class Settings:
    pca_samples: int = 1_000_000  # samples of the generator's p-norm PCA statistics (official: 1e6)
    keep_downloads: bool = False  # keep DIR/.downloads/ after a successful conversion
    overwrite: bool = False       # convert again the models DIR holds already
    retries: int = 3              # gdown's retries of transient failures, per URL
    quiet: bool = False           # no progress bars


def run(folder, manifest=None, from_folder=None, settings: Settings = Settings(), log: Callable = print) -> list:
    """Fetch, convert and install the models `folder` lacks (all of them with overwrite).

    Args:
      folder: the weights folder (created if needed).
      manifest: a manifest file (None: the packaged convert/manifest.json).
      from_folder: a folder searched for the checkpoints before any download (--from).
    Returns:
      The sources.json records of the files converted ([] when there was nothing to do).
    """
    import filelock

    entries = download.load_manifest(manifest)  # a bad manifest is refused before anything is made
    if from_folder is not None and not Path(from_folder).is_dir():
        raise FileNotFoundError(f"{from_folder}: no such folder (--from)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with filelock.FileLock(folder / LOCK, timeout=0):
            return _run_locked(folder, entries, from_folder, settings, log)
    except filelock.Timeout:
        raise OSError(f"{folder}: another `barbershop-jax weights download` is writing this folder "
                      f"(it holds {folder / LOCK})") from None


def _run_locked(folder: Path, entries: dict, from_folder, settings: Settings, log) -> list:
    _recover(folder, log)
    models = list(MODELS) if settings.overwrite else weights_folder.missing_models(folder)
    if not models:
        log(f"{folder}: holds the converted weights already; nothing to do (--overwrite downloads and converts "
            "them again)")
        return []
    for kept in (m for m in MODELS if m not in models):
        log(f"{folder / kept}: converted already, kept (--overwrite converts it again)")
    fetcher = download.Fetcher(folder / DOWNLOADS, retries=settings.retries, quiet=settings.quiet, log=log)
    files = {}
    for kind in (k for k in download.KINDS if any(k in MODEL_FILES[m] for m in models)):
        entry = entries[kind]
        local = download.find_local(Path(from_folder), entry) if from_folder is not None else None
        if from_folder is not None and local is None:
            log(f"{entry.name}: not in {from_folder}; downloading it")
        files[kind] = fetcher.fetch(entry, local)
        _tell(files[kind], log)
    records = [f.record() for f in files.values()]
    staging = folder / f"{STAGING}{os.getpid()}"
    try:
        _convert(files, models, staging, settings, log)
        records = _kept_records(folder, models) + records
        _install(folder, staging, models, {"files": records})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{folder}: {', '.join(m + '/' for m in models)} in place; the files' sources and licences in "
        f"{folder / SOURCES}")
    _clean_downloads(folder, files, settings.keep_downloads, log)
    return records


def _tell(fetched: download.Fetched, log):
    log(f"{fetched.entry.name}: sha256 {fetched.sha256}: {download.verification(fetched.entry)}")
    log(f"{fetched.entry.name}: licence: {fetched.entry.licence}")


def _convert(files: dict, models: list, staging: Path, settings: Settings, log):
    """Each model into `staging`. A checkpoint that fails its conversion and that nothing
    verified is deleted when it was downloaded, so that the next run fetches it again."""
    from . import bisenet, stylegan2, vgg16

    def quiet_wrote(line):  # the converters' "wrote STAGING/..." would name a folder about to go
        if not line.startswith("wrote "):
            log(line)

    steps = {"stylegan2": lambda: stylegan2.run(files["stylegan2"].path, staging, pca_samples=settings.pca_samples,
                                                log=quiet_wrote),
             "bisenet": lambda: bisenet.run(files["bisenet"].path, staging, log=quiet_wrote),
             "vgg16": lambda: vgg16.run(files["vgg16"].path, staging, lpips_weights=files["lpips"].path,
                                        log=quiet_wrote)}
    for model in models:
        try:
            steps[model]()
            _name_sources(staging / model, [files[kind] for kind in MODEL_FILES[model]])
        except ConversionError as e:
            bad = [files[kind] for kind in MODEL_FILES[model] if files[kind].downloaded and not files[kind].verified]
            for f in bad:
                shutil.rmtree(f.path.parent, ignore_errors=True)
            note = f" (the download of {', '.join(f.entry.name for f in bad)} was deleted: the next run fetches " \
                   f"it again)" if bad else ""
            raise ConversionError(f"{e}{note}") from None


def _name_sources(model_dir: Path, fetched: list):
    """The converted record names where each checkpoint came from (its URL, or the user's own
    file) rather than the downloads folder's copy, which goes once the models are in place."""
    config = model_dir / "config.json"
    meta = json.loads(config.read_text())
    for f in fetched:
        meta["converted"][SOURCE_KEYS[f.entry.kind]] = f.source if f.downloaded else str(f.path)
    config.write_text(json.dumps(meta, indent=2) + "\n")


def _kept_records(folder: Path, models: list) -> list:
    """The sources.json records of the models kept (not converted again) from the folder's
    earlier sources.json, where it has them."""
    try:
        earlier = json.loads((folder / SOURCES).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    kept = {kind for m in MODELS if m not in models for kind in MODEL_FILES[m]}
    return [r for r in earlier if isinstance(r, dict) and r.get("kind") in kept]


def _install(folder: Path, staging: Path, models: list, sources: dict):
    """Move the staged models into place and write sources.json, all or nothing: a signal waits
    until the moves are done, and a failure renames the earlier models back."""
    tmp = folder / f".{SOURCES}.tmp-{os.getpid()}"
    moved = []  # (model folder, where its earlier version went, or None)
    with shielded():
        try:
            tmp.write_text(json.dumps(sources, indent=2) + "\n")
            for model in models:
                final, aside = folder / model, folder / f".{model}{ASIDE}{os.getpid()}"
                if final.exists():
                    final.rename(aside)
                    moved.append((final, aside))
                else:
                    moved.append((final, None))
                (staging / model).rename(final)
            _publish(tmp, folder / SOURCES)
        except BaseException:
            for final, aside in reversed(moved):
                if aside is not None and aside.exists():
                    shutil.rmtree(final, ignore_errors=True)
                    aside.rename(final)
                elif aside is None:
                    shutil.rmtree(final, ignore_errors=True)
            tmp.unlink(missing_ok=True)
            raise
    for _, aside in moved:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def _publish(tmp: Path, final: Path):
    """The last step of an install: the written sources.json takes the old one's place at once."""
    os.replace(tmp, final)


def _recover(folder: Path, log):
    """What a killed run left (it held the lock, which is ours now): its staging folder goes, and
    a model it had renamed aside but not yet replaced is renamed back."""
    for path in folder.glob(f"{STAGING}*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(f".*{ASIDE}*"):
        final = folder / path.name[1:].split(ASIDE)[0]
        if path.is_dir() and final.name in MODELS and not final.exists():
            path.rename(final)
            log(f"{final}: put back (an interrupted run had moved it aside)")
        else:
            shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(f".{SOURCES}.tmp-*"):
        path.unlink(missing_ok=True)


def _clean_downloads(folder: Path, files: dict, keep: bool, log):
    downloads = folder / DOWNLOADS
    if not downloads.exists():
        return
    if keep:
        kept = [str(f.path) for f in files.values() if f.downloaded]
        if kept:
            log(f"the downloaded checkpoints are kept: {', '.join(kept)}")
        return
    shutil.rmtree(downloads, ignore_errors=True)
    if any(f.downloaded for f in files.values()):
        log(f"removed the downloaded checkpoints ({downloads}; --keep-downloads keeps them)")
