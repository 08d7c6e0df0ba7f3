"""Fetch and verify the official checkpoints that `barbershop-jax weights download` converts.

The manifest (convert/manifest.json, or --manifest FILE) is JSON:
`{"files": [{"name", "kind", "urls", "sha256", "licence"}, ...]}`, one file of each kind
(stylegan2, bisenet, vgg16, lpips). `licence` is our field, no standard one: the terms of the
file, printed when it is fetched and recorded in the weights folder's sources.json.

Every URL is fetched by gdown, which follows Google Drive's confirmation pages (the official
links are Drive links), resumes a partial download with a Range request and retries transient
failures, resuming. pooch cannot resume; huggingface_hub adds nothing for the mirrors' resolve
URLs, which are plain HTTPS.

A file is verified by the manifest's sha256, else by the sha256 prefix that torchvision's file
names carry (`vgg16-397923af.pth`, checked as torch.hub does), else not at all: its sha256 is
recorded and it is called unverified. Every file must begin as a torch checkpoint does: an HTML
page (Google Drive's quota page) is refused as such.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from barbershop_jax.pipeline.files.image_files import one_line

from .common import CHECKPOINT_MAGIC, ConversionError, file_sha256

KINDS = ("stylegan2", "bisenet", "vgg16", "lpips")  # each exactly once in a manifest
FIELDS = ("name", "kind", "urls", "sha256", "licence")
HASH_PREFIX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's: torchvision names carry their sha256's first digits
TIMEOUT = (20, 60)  # seconds to connect, and between two reads


class ManifestError(ValueError):
    """A manifest that is not what the command reads; the message names the file and the entry."""


class FetchError(OSError):
    """No source gave a good file; the message names the file and each source's reason."""


@dataclass(frozen=True)
class Entry:
    """One checkpoint of the manifest."""
    name: str              # its file name, also what --from looks for
    kind: str              # one of KINDS: what it is converted into
    urls: tuple[str, ...]  # tried in order: the official source first, mirrors after
    sha256: str | None     # None: unknown (the file is then verified by its name's prefix, or not)
    licence: str           # its terms (our field)


@dataclass(frozen=True)
class Fetched:
    """A checkpoint on disk, ready to convert."""
    entry: Entry
    path: Path
    source: str        # the URL it came from, or "from PATH" for a file the user had
    sha256: str
    verified: bool
    downloaded: bool   # in the downloads folder (removed after the conversion), not the user's own file

    def record(self) -> dict:
        """Its entry in the weights folder's sources.json."""
        e = self.entry
        return {"name": e.name, "kind": e.kind, "url": self.source, "sha256": self.sha256,
                "verified": self.verified, "licence": e.licence}


# ------------------------------------------------------------------ the manifest
def packaged_manifest():
    """convert/manifest.json, as installed (package data)."""
    return resources.files(__package__).joinpath("manifest.json")


def load_manifest(path=None) -> dict[str, Entry]:
    """The manifest's entries by kind, checked strictly: one clear line per problem."""
    source = packaged_manifest() if path is None else Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except OSError as e:
        raise ManifestError(f"{source}: the manifest cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{source}: the manifest is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ManifestError(f"{source}: the manifest is not JSON ({e.msg} at line {e.lineno}, "
                            f"column {e.colno})") from None
    if not isinstance(data, dict) or set(data) != {"files"} or not isinstance(data["files"], list):
        raise ManifestError(f'{source}: expected a manifest {{"files": [{{{", ".join(FIELDS)}}}, ...]}}')
    entries: dict[str, Entry] = {}
    names: dict[str, int] = {}
    for i, item in enumerate(data["files"]):
        entry = _entry(item, f"{source}: files[{i}]")
        if entry.kind in entries:
            raise ManifestError(f"{source}: files[{i}] ({entry.name}): duplicate kind {entry.kind!r} "
                                f"(each of {', '.join(KINDS)} exactly once)")
        if entry.name in names:
            raise ManifestError(f"{source}: files[{i}] ({entry.name}): the same name as files[{names[entry.name]}]")
        entries[entry.kind], names[entry.name] = entry, i
    missing = [kind for kind in KINDS if kind not in entries]
    if missing:
        raise ManifestError(f"{source}: no file of kind {', '.join(map(repr, missing))} "
                            f"(each of {', '.join(KINDS)} exactly once)")
    return entries


def _entry(item, where: str) -> Entry:
    if not isinstance(item, dict):
        raise ManifestError(f"{where}: expected an object with {', '.join(FIELDS)}, found {type(item).__name__}")
    name = item.get("name")
    if isinstance(name, str):
        where += f" ({name})"
    unknown = [key for key in item if key not in FIELDS]
    missing = [key for key in FIELDS if key not in item]
    if unknown or missing:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown field {', '.join(map(repr, unknown))}"] if unknown else [])
        raise ManifestError(f"{where}: {'; '.join(problems)} (an entry has {', '.join(FIELDS)})")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise ManifestError(f"{where}: name {name!r} is not a file name")
    if item["kind"] not in KINDS:
        raise ManifestError(f"{where}: unknown kind {item['kind']!r} (expected one of {', '.join(KINDS)})")
    urls = item["urls"]
    if not isinstance(urls, list) or not urls:
        raise ManifestError(f"{where}: no urls (expected a list of http(s) URLs, the official source first)")
    for url in urls:
        if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url) or any(c.isspace() for c in url):
            raise ManifestError(f"{where}: {url!r} is not an http(s) URL")
    sha256 = item["sha256"]
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha256)):
        raise ManifestError(f"{where}: bad sha256 {sha256!r} (expected 64 hex digits, or null)")
    if not isinstance(item["licence"], str) or not item["licence"].strip():
        raise ManifestError(f"{where}: the licence must be text (the file's terms)")
    return Entry(name, item["kind"], tuple(urls), sha256.lower() if sha256 else None, item["licence"])


# ------------------------------------------------------------------ verification
def name_prefix(name: str) -> str | None:
    """The sha256 prefix a torchvision file name carries (`vgg16-397923af.pth`), or None."""
    match = HASH_PREFIX.search(name)
    return match.group(1) if match and match.group(1) else None


def is_verifiable(entry: Entry) -> bool:
    return entry.sha256 is not None or name_prefix(entry.name) is not None


def verification(entry: Entry) -> str:
    """How a file that passed `problem` was verified, in words."""
    if entry.sha256 is not None:
        return "verified (the manifest's sha256)"
    if name_prefix(entry.name) is not None:
        return f"verified (the sha256 prefix {name_prefix(entry.name)} its torchvision name carries)"
    return "unverified (the manifest gives no sha256)"


def problem(path: Path, entry: Entry, sha256: str) -> str | None:
    """Why the file at `path` (whose sha256 is given) is not the entry's checkpoint, or None."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    if not head.startswith(CHECKPOINT_MAGIC):
        if b"<html" in head.lower() or head.lstrip().lower().startswith(b"<!doctype"):
            return "an HTML page where the checkpoint should be (a download quota or confirmation page?)"
        return f"not a PyTorch checkpoint (it begins with {head[:16]!r})"
    if entry.sha256 is not None and sha256 != entry.sha256:
        return f"sha256 {sha256} is not the manifest's {entry.sha256}"
    prefix = name_prefix(entry.name)
    if entry.sha256 is None and prefix is not None and not sha256.startswith(prefix):
        return f"sha256 {sha256} does not begin with {prefix}, as its name {entry.name} says it does"
    return None


def _failure(e: BaseException) -> str:
    """What went wrong with one URL, in a few words: the HTTP status, the socket's error, or
    gdown's first line."""
    import requests

    response = getattr(e, "response", None)
    if isinstance(e, requests.HTTPError) and response is not None:
        return f"HTTP {response.status_code} {response.reason or ''}".strip()
    text = str(e)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    if isinstance(e, requests.Timeout) or "timed out" in text:
        return "timed out"
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(e).__name__]
    first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # gdown's "Failed to ...:" then why
    return one_line(first)[:300].rstrip(".")


# ------------------------------------------------------------------ fetching
def source_folder(url: str) -> str:
    """The downloads subfolder of one URL: its partial files resume from that URL only (a
    mirror's bytes are never appended to another source's)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", url.split("/")[2])
    return f"{host}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def find_local(folder: Path, entry: Entry) -> Path | None:
    """The entry's file under `folder` (recursively; the shallowest first): for the LPIPS layers
    the first `v0.1/NAME`, else the installed lpips package's."""
    found = sorted((p for p in Path(folder).rglob(entry.name) if p.is_file()), key=lambda p: (len(p.parts), str(p)))
    if entry.kind == "lpips":
        found = [p for p in found if p.parent.name == "v0.1"]
        if not found:
            from . import vgg16
            try:
                found = [vgg16.default_lpips_weights()]
            except ConversionError:
                pass
    return found[0] if found else None


@dataclass
class Fetcher:
    """Gets each checkpoint: a file of the user's first (--from), then the manifest's URLs in
    order; a source that fails is named in one line and the next is tried."""
    downloads: Path       # DIR/.downloads: one subfolder per URL (source_folder)
    retries: int = 3      # gdown's retries of transient failures, per URL (each resumes)
    quiet: bool = False   # no progress bars
    log: Callable = print

    def fetch(self, entry: Entry, local: Path | None = None) -> Fetched:
        sources = ([(self._adopt, local)] if local is not None else []) + [(self._download, url) for url in entry.urls]
        reasons = []
        for i, (get, source) in enumerate(sources):
            fetched, reason = get(entry, source)
            if fetched is not None:
                return fetched
            reasons.append(f"{source}: {reason}")
            if i + 1 < len(sources):
                self.log(f"{entry.name}: {source}: {reason}; trying the next source")
        raise FetchError(f"{entry.name}: no source gave the file: " + "; ".join(reasons))

    def _adopt(self, entry: Entry, path: Path) -> tuple[Fetched | None, str | None]:
        """A file the user has (--from): verified as a download is, read in place."""
        sha256 = file_sha256(path)
        reason = problem(path, entry, sha256)
        if reason is not None:
            return None, reason
        return Fetched(entry, path, f"from {path}", sha256, is_verifiable(entry), downloaded=False), None

    def _download(self, entry: Entry, url: str) -> tuple[Fetched | None, str | None]:
        """One URL: an earlier run's complete download is used as it is (no network), a partial
        one resumed; a bad file is deleted, never resumed from."""
        import gdown
        import requests

        folder = self.downloads / source_folder(url)
        out = folder / entry.name
        if out.is_file():
            self.log(f"{entry.name}: found an earlier run's download from {url}")
            sha256 = file_sha256(out)
        else:
            self.log(f"{entry.name}: downloading {url}")
            folder.mkdir(parents=True, exist_ok=True)
            hasher = hashlib.sha256()  # gdown feeds it the resumed bytes too
            try:
                gdown.download(url, output=str(out), quiet=self.quiet, resume=True, retries=self.retries,
                               hasher=hasher, timeout=TIMEOUT, use_cookies=False)
            except (requests.RequestException, gdown.exceptions.DownloadError) as e:
                reason = _failure(e)
                if "did not honor the requested byte range" in str(e):  # it would refuse every resume
                    shutil.rmtree(folder, ignore_errors=True)
                    reason += "; its partial download was removed"
                elif not any(folder.iterdir()):
                    folder.rmdir()
                return None, reason
            sha256 = hasher.hexdigest()
        reason = problem(out, entry, sha256)
        if reason is not None:
            shutil.rmtree(folder, ignore_errors=True)
            return None, reason
        return Fetched(entry, out, url, sha256, is_verifiable(entry), downloaded=True), None
