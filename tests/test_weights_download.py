"""`barbershop-jax weights download`: the official checkpoints fetched, verified, converted and put
into a weights folder, against a web server on 127.0.0.1 serving small checkpoints with the
official key names. Each failure is one line, a non-zero exit, nothing half-written in the
weights folder and its earlier models intact."""
import functools
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import torch

import torch_bisenet as TB
import torch_stylegan2 as T
from barbershop_jax import cli
from barbershop_jax.cli.args import TRANSFER_STEPS
from barbershop_jax.models import weights_folder
from convert import download, install, vgg16

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "barbershop_jax" / "data" / "examples"
HTML = (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>Too many users have "
        b"viewed or downloaded this file recently.</body></html>")
FAST = ["--quiet", "--retries", "0", "--pca-samples", "1000"]


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the checkpoints and the server
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The four checkpoints under their manifest names, small but with the official keys: a 64 px
    generator, BiSeNet (its fixed architecture, random), VGG16's features (the classifier the
    converter skips is left out: 0.5 GB) and the LPIPS layers."""
    root = tmp_path_factory.mktemp("checkpoints")
    g = T.realistic_init_(T.Generator(64, 64, 2, channel_multiplier=2, channel_max=64)).eval()
    torch.save(T.checkpoint(g, n_avg=64), root / "ffhq.pt")
    torch.manual_seed(0)
    torch.save(TB.BiSeNet(16).state_dict(), root / "seg.pth")
    torch.save(_torchvision_vgg16_features(), root / "vgg16.pth")
    vgg16_name = f"vgg16-{sha256(root / 'vgg16.pth')[:8]}.pth"  # torchvision's naming
    (root / "vgg16.pth").rename(root / vgg16_name)
    config = vgg16.VGG16Config()
    torch.save({k: torch.rand(shape) for k, shape in vgg16.lpips_shapes(config).items()}, root / "vgg.pth")
    return {"stylegan2": root / "ffhq.pt", "bisenet": root / "seg.pth", "vgg16": root / vgg16_name,
            "lpips": root / "vgg.pth"}


def _torchvision_vgg16_features() -> dict:
    """torchvision's vgg16 state_dict without its classifier: the features that vgg16() makes
    (its make_layers and configuration "D"), under their names in the whole model."""
    from torchvision.models import vgg
    torch.manual_seed(0)
    return {f"features.{k}": v for k, v in vgg.make_layers(vgg.cfgs["D"]).state_dict().items()}


class Handler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler's files, plus what it lacks: `Range: bytes=N-` (206), and the
    server's faults by path: an HTTP status, an HTML page with 200, or a body cut short after K
    bytes (once: "cut", every time: "short")."""

    def do_GET(self):
        state = self.server.state
        name = urllib.parse.urlsplit(self.path).path.lstrip("/")
        byte_range = self.headers.get("Range")
        state.requests.append((name, byte_range))
        fault = state.faults.get(name)
        if isinstance(fault, int):
            return self.send_error(fault)
        if fault == "html":
            return self._send(HTML, 200, "text/html; charset=utf-8", len(HTML))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        start = int(byte_range.removeprefix("bytes=").rstrip("-")) if byte_range else 0
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if byte_range else {}
        body = data[start:]
        cut = state.cuts.pop(name, None) if not byte_range else None
        if isinstance(fault, tuple) and fault[0] == "short":
            cut = fault[1]
        self._send(body[:cut] if cut is not None else body, 206 if byte_range else 200, "application/octet-stream",
                   len(body), headers)

    def _send(self, body, status, content_type, length, headers=None):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(length))  # the whole body's, even when cut short
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client hung up: gdown closes a response it skips
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


class State:
    def __init__(self, root):
        self.root, self.faults, self.cuts, self.requests = root, {}, {}, []

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def server(checkpoints):
    """127.0.0.1 only: the checkpoints at /NAME, anything else the tests put in the folder."""
    root = checkpoints["stylegan2"].parent
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    httpd.daemon_threads = True
    httpd.state = State(root)
    httpd.state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def state(server):
    """The server with no faults and no requests seen (each test sets its own)."""
    server.faults.clear()
    server.cuts.clear()
    server.requests.clear()
    return server


def closed_port_url(name) -> str:
    """A URL whose port nothing listens on: connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def write_manifest(path, checkpoints, urls: dict, sha256s: dict | None = None) -> Path:
    """A manifest of the four checkpoints: urls by kind; sha256 by kind (default: the LPIPS
    layers' only, as the packaged manifest)."""
    sha256s = {"lpips": sha256(checkpoints["lpips"])} if sha256s is None else sha256s
    files = [{"name": checkpoints[kind].name, "kind": kind, "urls": urls[kind], "sha256": sha256s.get(kind),
              "licence": f"the {kind} test licence"} for kind in download.KINDS]
    path.write_text(json.dumps({"files": files}))
    return path


def served(state, checkpoints, **overrides) -> dict:
    """Each kind's URLs: its file on the server, unless overridden."""
    return {kind: overrides.get(kind, [state.url(checkpoints[kind].name)]) for kind in download.KINDS}


def weights(folder, manifest, *extra) -> int:
    return cli.main(["weights", "download", "--dir", str(folder), "--manifest", str(manifest), *FAST, *extra])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("barbershop-jax: error: "), err
    return err


def snapshot(folder) -> dict:
    """Every file under the weights folder's models and sources.json, with its bytes' sha256."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()
            and p.relative_to(folder).parts[0] in (*weights_folder.MODELS, install.SOURCES)}


def visible(folder) -> list:
    """The folder's entries but its hidden ones (the lock file stays: removing a lock file races)."""
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.startswith("."))


def assert_nothing_half_written(folder):
    leftovers = [p.name for p in Path(folder).iterdir() if p.name.startswith((install.STAGING, f".{install.SOURCES}"))
                 or install.ASIDE in p.name]
    assert not leftovers


@pytest.fixture(scope="module")
def complete(checkpoints, server, tmp_path_factory):
    """One complete run of the command: (weights folder, its stdout)."""
    import contextlib
    import io
    root = tmp_path_factory.mktemp("complete")
    manifest = write_manifest(root / "manifest.json", checkpoints, served(server, checkpoints))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert weights(root / "weights", manifest) == 0
    return root / "weights", out.getvalue()


@pytest.fixture
def earlier(complete, tmp_path):
    """A copy of the complete folder: a weights folder that holds good models already."""
    folder = tmp_path / "weights"
    shutil.copytree(complete[0], folder)
    return folder


# ----------------------------------------------------------------------------- 1. the whole way
def test_complete_download_and_conversion(complete, checkpoints):
    folder, out = complete
    assert weights_folder.holds_weights(folder)
    assert visible(folder) == ["bisenet", "sources.json", "stylegan2", "vgg16"]
    sources = {f["kind"]: f for f in json.loads((folder / "sources.json").read_text())["files"]}
    assert {k: (f["name"], f["sha256"], f["verified"]) for k, f in sources.items()} == {
        "stylegan2": ("ffhq.pt", sha256(checkpoints["stylegan2"]), False),
        "bisenet": ("seg.pth", sha256(checkpoints["bisenet"]), False),
        "vgg16": (checkpoints["vgg16"].name, sha256(checkpoints["vgg16"]), True),  # its name's prefix
        "lpips": ("vgg.pth", sha256(checkpoints["lpips"]), True)}
    assert sources["bisenet"]["licence"] == "the bisenet test licence"
    assert sources["bisenet"]["url"].endswith("/seg.pth")
    for kind in weights_folder.MODELS:  # each model's record names its checkpoint's URL and sha256
        converted = json.loads((folder / kind / "config.json").read_text())["converted"]
        assert (converted["source"], converted["source_sha256"]) == (sources[kind]["url"], sha256(checkpoints[kind]))
    assert converted["lpips_weights"] == sources["lpips"]["url"]
    assert json.loads((folder / "stylegan2" / "config.json").read_text())["config"]["size"] == 64
    lines = out.splitlines()
    assert f"ffhq.pt: sha256 {sha256(checkpoints['stylegan2'])}: unverified (the manifest gives no sha256)" in lines
    assert f"vgg.pth: sha256 {sha256(checkpoints['lpips'])}: verified (the manifest's sha256)" in lines
    assert "seg.pth: licence: the bisenet test licence" in lines
    assert lines[-1] == (f"weights: {folder}: pass --weights {folder} to the commands, or set "
                         f"BARBERSHOP_JAX_WEIGHTS={folder} to make it the default folder")


def test_a_transfer_then_uses_the_default_folder(complete, tmp_path):
    """In a subprocess with BARBERSHOP_JAX_WEIGHTS=DIR, a transfer with no --weights uses DIR."""
    folder, _ = complete
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           weights_folder.ENV: str(folder)}
    # No optimisation steps: every stage runs and loads its models, but no loop is compiled
    # (a minute on two CPU cores instead of three; what is checked here is which weights it reads).
    steps = [f"--{name.replace('_', '-')}=0" for name, _ in TRANSFER_STEPS]
    done = subprocess.run([sys.executable, "-m", "barbershop_jax.cli", "transfer", "--face", str(EXAMPLES / "face.png"),
                           "--shape", str(EXAMPLES / "shape.png"), "--color", str(EXAMPLES / "color.png"),
                           "--out", str(tmp_path / "out"), "--quiet", *steps],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # Coordinated with the lead's wiring of the default folder into the commands: cli/main.py
    # prints weights_folder.describe()'s line, on stdout.
    assert f"barbershop-jax: weights: {folder} (the default folder), StyleGAN2 at 64 px" in done.stdout.splitlines()
    assert list((tmp_path / "out").glob("face_shape_color_*.png"))


def test_a_rerun_after_success_has_nothing_to_do(complete, checkpoints, tmp_path, monkeypatch, capsys):
    folder, _ = complete
    monkeypatch.setenv(weights_folder.ENV, str(folder))  # now the default folder
    nowhere = {kind: [closed_port_url(checkpoints[kind].name)] for kind in download.KINDS}  # no network either
    before = snapshot(folder)
    assert weights(folder, write_manifest(tmp_path / "m.json", checkpoints, nowhere)) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{folder}: holds the converted weights already; nothing to do (--overwrite downloads and converts them again)",
        f"weights: {folder} (the default folder): every command now uses them without --weights"]
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------- 2-6. downloads that go wrong
def test_an_interrupted_download_resumes(earlier, checkpoints, state, tmp_path, capsys):
    """The server cuts the first response short: one line, exit 1, the partial file kept; the
    rerun asks for the rest (Range) and the whole file verifies."""
    shutil.rmtree(earlier / "bisenet")
    sha = {"bisenet": sha256(checkpoints["bisenet"]), "lpips": sha256(checkpoints["lpips"])}
    manifest = write_manifest(tmp_path / "m.json", checkpoints, served(state, checkpoints), sha)
    state.cuts["seg.pth"] = 3 << 20
    assert weights(earlier, manifest) == 1
    err = one_error_line(capsys)
    assert "seg.pth: no source gave the file: " in err and "Download is incomplete" in err
    assert not (earlier / "bisenet").exists()
    assert_nothing_half_written(earlier)
    partial = [p for p in (earlier / install.DOWNLOADS).rglob("seg.pth*.part")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0
    kept = partial[0].stat().st_size

    assert weights(earlier, manifest) == 0
    assert ("seg.pth", f"bytes={kept}-") in state.requests
    assert weights_folder.holds_weights(earlier)
    sources = {f["kind"]: f for f in json.loads((earlier / "sources.json").read_text())["files"]}
    assert sources["bisenet"]["verified"] and sources["bisenet"]["sha256"] == sha["bisenet"]
    assert sources["stylegan2"]["name"] == "ffhq.pt"  # the kept model's record carried over
    assert not (earlier / install.DOWNLOADS).exists()


def test_a_transfer_cut_short_every_time_fails_in_one_line(earlier, checkpoints, state, tmp_path, capsys):
    before = snapshot(earlier)
    manifest = write_manifest(tmp_path / "m.json", checkpoints, served(state, checkpoints))
    state.faults["ffhq.pt"] = ("short", 1000)
    assert weights(earlier, manifest, "--overwrite") == 1
    err = one_error_line(capsys)
    assert err.startswith(f"barbershop-jax: error: ffhq.pt: no source gave the file: {state.url('ffhq.pt')}: "
                          "Download is incomplete: received")
    assert snapshot(earlier) == before
    assert_nothing_half_written(earlier)


def test_a_truncated_checkpoint_without_sha256_fails_its_conversion(earlier, checkpoints, state, tmp_path, capsys):
    """Served whole, but the file itself is cut: nothing can verify it, its conversion fails in
    one line, the download is deleted and the earlier models are untouched."""
    before = snapshot(earlier)
    data = checkpoints["stylegan2"].read_bytes()
    (state.root / "cut").mkdir(exist_ok=True)
    (state.root / "cut" / "ffhq.pt").write_bytes(data[: len(data) // 2])
    urls = served(state, checkpoints, stylegan2=[state.url("cut/ffhq.pt")])
    manifest = write_manifest(tmp_path / "m.json", checkpoints, urls)
    assert weights(earlier, manifest, "--overwrite") == 1
    err = one_error_line(capsys)
    assert "ffhq.pt: not a readable PyTorch checkpoint, truncated or corrupt" in err
    assert "the download of ffhq.pt was deleted" in err
    assert not list((earlier / install.DOWNLOADS).rglob("ffhq.pt"))
    assert snapshot(earlier) == before
    assert_nothing_half_written(earlier)


def test_a_wrong_sha256_is_refused(earlier, checkpoints, state, tmp_path, capsys):
    before = snapshot(earlier)
    manifest = write_manifest(tmp_path / "m.json", checkpoints, served(state, checkpoints),
                              {"stylegan2": "0" * 64, "lpips": sha256(checkpoints["lpips"])})
    assert weights(earlier, manifest, "--overwrite") == 1
    err = one_error_line(capsys)
    assert err == (f"barbershop-jax: error: ffhq.pt: no source gave the file: {state.url('ffhq.pt')}: sha256 "
                   f"{sha256(checkpoints['stylegan2'])} is not the manifest's {'0' * 64}")
    assert not list((earlier / install.DOWNLOADS).rglob("ffhq.pt"))  # deleted, never resumed from
    assert snapshot(earlier) == before
    assert_nothing_half_written(earlier)


@pytest.mark.parametrize("fault", ["refused", 404])
def test_the_mirror_takes_over(fault, earlier, checkpoints, state, tmp_path, capsys):
    shutil.rmtree(earlier / "stylegan2")
    first = closed_port_url("ffhq.pt") if fault == "refused" else state.url("gone/ffhq.pt")
    state.faults["gone/ffhq.pt"] = 404
    manifest = write_manifest(tmp_path / "m.json", checkpoints,
                              served(state, checkpoints, stylegan2=[first, state.url("ffhq.pt")]))
    assert weights(earlier, manifest) == 0
    reason = "Connection refused" if fault == "refused" else "HTTP 404 Not Found"
    assert f"ffhq.pt: {first}: {reason}; trying the next source" in capsys.readouterr().out.splitlines()
    sources = {f["kind"]: f for f in json.loads((earlier / "sources.json").read_text())["files"]}
    assert sources["stylegan2"]["url"] == state.url("ffhq.pt")
    assert weights_folder.holds_weights(earlier)


def test_an_html_page_is_refused_and_the_mirror_used(earlier, checkpoints, state, tmp_path, capsys):
    """A Google-Drive-style quota page, served with 200 where the checkpoint should be."""
    shutil.rmtree(earlier / "stylegan2")
    state.faults["quota/ffhq.pt"] = "html"
    manifest = write_manifest(tmp_path / "m.json", checkpoints,
                              served(state, checkpoints, stylegan2=[state.url("quota/ffhq.pt"), state.url("ffhq.pt")]))
    assert weights(earlier, manifest) == 0
    assert (f"ffhq.pt: {state.url('quota/ffhq.pt')}: an HTML page where the checkpoint should be (a download quota "
            "or confirmation page?); trying the next source") in capsys.readouterr().out.splitlines()
    assert weights_folder.holds_weights(earlier)


def test_a_failure_while_moving_the_models_in_puts_the_earlier_ones_back(earlier, checkpoints, state, tmp_path,
                                                                        monkeypatch, capsys):
    before = snapshot(earlier)

    def disk_full(tmp, final):
        raise OSError(f"{final}: No space left on device")
    monkeypatch.setattr(install, "_publish", disk_full)  # after every model has been moved in
    manifest = write_manifest(tmp_path / "m.json", checkpoints, served(state, checkpoints))
    assert weights(earlier, manifest, "--overwrite") == 1
    assert one_error_line(capsys) == f"barbershop-jax: error: {earlier / 'sources.json'}: No space left on device"
    assert snapshot(earlier) == before
    assert_nothing_half_written(earlier)


def test_what_a_killed_run_left_is_undone(earlier, checkpoints, tmp_path, capsys):
    """A run killed while moving the models in: its staging folder goes, a model it had moved
    aside comes back; then there is nothing to do."""
    before = snapshot(earlier)
    (earlier / "stylegan2").rename(earlier / f".stylegan2{install.ASIDE}99999")
    (earlier / f"{install.STAGING}99999" / "bisenet").mkdir(parents=True)
    nowhere = {kind: [closed_port_url(checkpoints[kind].name)] for kind in download.KINDS}
    assert weights(earlier, write_manifest(tmp_path / "m.json", checkpoints, nowhere)) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"{earlier / 'stylegan2'}: put back (an interrupted run had moved it aside)" in out
    assert snapshot(earlier) == before
    assert_nothing_half_written(earlier)


def test_one_run_at_a_time_per_folder(earlier, checkpoints, tmp_path, capsys):
    import filelock
    with filelock.FileLock(earlier / install.LOCK):
        assert weights(earlier, write_manifest(tmp_path / "m.json", checkpoints, {k: ["http://127.0.0.1:9/x"]
                                                                                  for k in download.KINDS})) == 1
    assert one_error_line(capsys) == (f"barbershop-jax: error: {earlier}: another `barbershop-jax weights download` "
                                      f"is writing this folder (it holds {earlier / install.LOCK})")


# ----------------------------------------------------------------------------- 7. checkpoints the user has
def test_from_a_folder_laid_out_like_the_official_code(checkpoints, state, tmp_path, capsys):
    """ffhq.pt in pretrained_models/, VGG16 in a torch hub cache, the LPIPS layers in the
    official code's losses/lpips/weights/v0.1/: read in place; seg.pth, absent, is downloaded."""
    user = tmp_path / "user"
    places = {"stylegan2": user / "Barbershop" / "pretrained_models" / "ffhq.pt",
              "vgg16": user / "hub" / "checkpoints" / checkpoints["vgg16"].name,
              "lpips": user / "Barbershop" / "losses" / "lpips" / "weights" / "v0.1" / "vgg.pth"}
    for kind, place in places.items():
        place.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(checkpoints[kind], place)
    (user / "elsewhere").mkdir()
    torch.save({"x": torch.zeros(1)}, user / "elsewhere" / "vgg.pth")  # a vgg.pth, not under v0.1/
    urls = {kind: [closed_port_url(checkpoints[kind].name)] for kind in download.KINDS}  # no download would work
    urls["bisenet"] = [state.url("seg.pth")]
    folder = tmp_path / "weights"
    assert weights(folder, write_manifest(tmp_path / "m.json", checkpoints, urls), "--from", str(user)) == 0
    assert f"seg.pth: not in {user}; downloading it" in capsys.readouterr().out.splitlines()
    sources = {f["kind"]: f for f in json.loads((folder / "sources.json").read_text())["files"]}
    assert {k: f["url"] for k, f in sources.items()} == {**{k: f"from {p}" for k, p in places.items()},
                                                         "bisenet": state.url("seg.pth")}
    assert all(place.is_file() for place in places.values())  # read in place, left alone
    converted = json.loads((folder / "vgg16" / "config.json").read_text())["converted"]
    assert (converted["source"], converted["lpips_weights"]) == (str(places["vgg16"]), str(places["lpips"]))
    assert visible(folder) == ["bisenet", "sources.json", "stylegan2", "vgg16"]


# ----------------------------------------------------------------------------- 8-9. before any download
def test_without_torch_one_line_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    assert cli.main(["weights", "download", "--dir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err == ("barbershop-jax: error: weights download converts the checkpoints with "
                                       "PyTorch: pip install 'barbershop-jax[convert]'\n")
    assert not (tmp_path / "w").exists()


def test_a_bad_manifest_is_one_line_naming_it(tmp_path, capsys):
    bad = tmp_path / "m.json"
    bad.write_text('{"files": [')
    assert weights(tmp_path / "w", bad) == 1
    assert one_error_line(capsys).startswith(f"barbershop-jax: error: {bad}: the manifest is not JSON (")
    files = [{"name": "ffhq.pt", "urls": ["https://example.org/ffhq.pt"], "sha256": None, "licence": "x"}]
    bad.write_text(json.dumps({"files": files}))
    assert weights(tmp_path / "w", bad) == 1
    assert one_error_line(capsys) == (f"barbershop-jax: error: {bad}: files[0] (ffhq.pt): missing kind (an entry "
                                      "has name, kind, urls, sha256, licence)")
    assert not (tmp_path / "w").exists()


def _entry(of, **changes):
    entry = {"name": f"{of}.pt", "kind": of, "urls": [f"https://example.org/{of}.pt"], "sha256": None,
             "licence": "x"}
    return {k: v for k, v in {**entry, **changes}.items() if v != "DROP"}


@pytest.mark.parametrize("files, message", [
    ([_entry("stylegan2", kind="biggan")] + [_entry(k) for k in download.KINDS[1:]],
     "files[0] (stylegan2.pt): unknown kind 'biggan' (expected one of stylegan2, bisenet, vgg16, lpips)"),
    ([_entry("stylegan2", urls=[])] + [_entry(k) for k in download.KINDS[1:]], "files[0] (stylegan2.pt): no urls"),
    ([_entry("stylegan2", sha256="abc")] + [_entry(k) for k in download.KINDS[1:]],
     "files[0] (stylegan2.pt): bad sha256 'abc' (expected 64 hex digits, or null)"),
    ([_entry(k) for k in download.KINDS] + [_entry("vgg16", name="other.pth")],
     "files[4] (other.pth): duplicate kind 'vgg16'"),
    ([_entry(k) for k in download.KINDS[:3]], "no file of kind 'lpips'"),
    ([_entry("stylegan2", urls=["ftp://example.org/x"])] + [_entry(k) for k in download.KINDS[1:]],
     "files[0] (stylegan2.pt): 'ftp://example.org/x' is not an http(s) URL"),
    ([_entry("stylegan2", name="../ffhq.pt")] + [_entry(k) for k in download.KINDS[1:]],
     "name '../ffhq.pt' is not a file name"),
    ([_entry("stylegan2", licence="DROP", licenses="x")] + [_entry(k) for k in download.KINDS[1:]],
     "files[0] (stylegan2.pt): missing licence; unknown field 'licenses'"),
])
def test_the_manifest_is_checked_strictly(files, message, tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"files": files}))
    with pytest.raises(download.ManifestError) as e:
        download.load_manifest(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_the_packaged_manifest():
    entries = download.load_manifest()
    assert [entries[k].name for k in download.KINDS] == ["ffhq.pt", "seg.pth", "vgg16-397923af.pth", "vgg.pth"]
    assert entries["stylegan2"].urls[0].startswith("https://drive.google.com/")  # the official source first
    assert all(len(e.urls) == 2 for k, e in entries.items() if k != "vgg16")      # and a mirror
    assert download.name_prefix(entries["vgg16"].name) == "397923af"              # verified by its name
    assert entries["lpips"].sha256 == sha256(vgg16.default_lpips_weights())       # the lpips wheel's file
    assert 'convert = ["manifest.json"]' in (ROOT / "pyproject.toml").read_text()  # installed with the package
