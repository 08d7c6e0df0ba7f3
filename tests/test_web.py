"""The web page (`barbershop-jax serve`, the web extra): its functions through Gradio's Python
client against a server on a free localhost port, and one run in a real headless browser
(Debian's chromium and chromium-driver with selenium; skipped, with the reason, without them).
The server runs the embedded generator with a small VGG (as conftest.tiny_models, so that it
compiles the same programs) and a few steps per stage."""
import html
import json
import math
import os
import re
import shutil
import socket
import struct
import time
import uuid
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

gradio = pytest.importorskip("gradio", reason="the web extra is not installed: pip install -e '.[web]'")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from barbershop_jax import cli, web  # noqa: E402
from barbershop_jax.models import bundle, embedded, vgg16  # noqa: E402
from barbershop_jax.models import pca as pca_lib  # noqa: E402
from barbershop_jax.models.bundle import Models  # noqa: E402
from barbershop_jax.pipeline import demo  # noqa: E402
from barbershop_jax.pipeline.runtime import progress  # noqa: E402
from barbershop_jax.pipeline.files import image_files as image_io  # noqa: E402
from barbershop_jax.web import app as web_app  # noqa: E402
from barbershop_jax.web import jobs  # noqa: E402
from conftest import SMALL_VGG, STAGE_PROGRAMS, count_compilations, stage_programs  # noqa: E402

STEPS = dict(w_steps=2, fs_steps=2, inpaint_steps=2, align_steps1=2, align_steps2=2, blend_steps=2)
EXAMPLES = demo.example_images()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, url): the page on a free localhost port with the embedded generator (no
    --weights) and a few steps per stage as its defaults, compiling its programs ahead as
    `serve` does (the tests' environment turns that off elsewhere)."""
    g = embedded.generator()
    models = Models(g, embedded.parser(), vgg16.init(SMALL_VGG, jax.random.PRNGKey(1)),
                    pca_lib.pca_stats(g, 2000, jax.random.PRNGKey(2)))
    patch = pytest.MonkeyPatch()
    patch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    port = _free_port()
    jax.clear_caches()  # what earlier test files compiled in this process: the server compiles its own ahead
    server, page = web.serve(None, "127.0.0.1", port, tmp_path_factory.mktemp("served"), block=False,
                             batch_size=2, steps=STEPS, compile_ahead=True)
    patch.undo()
    yield server, f"http://127.0.0.1:{port}/"
    page.close()
    server.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served[1], verbose=False)


def _args(face, shape, color, structure=None, seed=0, **steps):
    """The transfer endpoint's inputs: images, then align the references?, region, sign, smooth,
    seed and the steps."""
    files = [None if p is None else handle_file(str(p)) for p in (face, shape, color, structure)]
    return (*files, False, "hair", "realistic", 5, seed, *{**STEPS, **steps}.values())


def test_serves_on_localhost_with_the_embedded_banner(served):
    server, url = served
    assert url.startswith("http://127.0.0.1:")
    assert server.embedded and server.default_steps == STEPS
    config = Client(url, verbose=False).config
    texts = " ".join(str(c.get("props", {}).get("value", "")) for c in config["components"])
    assert "embedded tiny models" in texts and "random weights give no real hairstyle" in texts
    # "This machine": barbershop-jax doctor's report, made as the page was built.
    report = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "machine-report")
    assert "**backend: cpu**" in report and f"jax {jax.__version__}" in report
    assert "weights: the embedded tiny models (64 px" in report
    assert "predicted time (64 px, float32, batch size 2, the page's default step counts):" in report
    assert any(c["props"].get("label") == "This machine (barbershop-jax doctor)" for c in config["components"])


def test_one_transfer_gives_images_and_downloads(client, served):
    """The bundled photo (aligned by its landmarks, found through its content) with the two
    references (square, used as they are): result, inputs, mask, legend, pasted photo, files.
    The first request: the server compiled every stage program at start-up (compile_ahead), so
    the job compiles none of them."""
    server = served[0]
    assert set(server.compiled.result(timeout=900)) >= STAGE_PROGRAMS  # the programs' own names
    with count_compilations() as compiled:
        result, inputs, mask, legend, pasted, files, notes = client.predict(
            *_args(EXAMPLES["photo"], EXAMPLES["shape"], EXAMPLES["color"]), api_name="/transfer")
    assert stage_programs(compiled) == [], compiled
    image = np.asarray(Image.open(result))
    assert image.shape == (256, 256, 3) and image.std() > 1  # 64 px enlarged 4x for the page
    assert [i["caption"] for i in inputs] == ["face", "shape", "colour"]
    mask = np.asarray(Image.open(mask))
    assert mask.shape == (256, 256, 3)
    # The legend names every colour of the mask, and no other.
    swatches = {tuple(int(v) for v in m.split(", ")) for m in re.findall(r"background:rgb\(([0-9, ]+)\)", legend)}
    assert swatches and swatches == {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0).tolist()}
    photo = image_io.load_rgb(EXAMPLES["photo"])
    assert np.asarray(Image.open(pasted)).shape[:2] == photo.shape[:2]
    names = [Path(f).name for f in files]
    assert names[0].endswith("_realistic.png") and names[1].endswith("_latents.npz") and names[2].endswith("_pasted.png")
    with np.load(files[1]) as latents:
        assert latents["latent_in"].shape[0] == 1 and latents["latent_F"].ndim == 4
    assert np.asarray(Image.open(files[0])).shape == (64, 64, 3)  # the download keeps the generator's size
    assert "photo.jpg aligned" in notes and "shape.png used as it is" in notes
    # The uploads are kept by content in the server's folder: sent again, nothing is embedded again.
    before = {p: p.stat().st_mtime_ns for p in (server.out_dir / "W+").glob("*.npy")}
    client.predict(*_args(EXAMPLES["photo"], EXAMPLES["shape"], EXAMPLES["color"]), api_name="/transfer")
    assert {p: p.stat().st_mtime_ns for p in (server.out_dir / "W+").glob("*.npy")} == before
    assert len(before) == 3


@pytest.mark.parametrize("case", ["text file", "tiny image", "missing image", "not square"])
def test_a_bad_upload_gives_a_message(client, tmp_path, case):
    shape, color = EXAMPLES["shape"], EXAMPLES["color"]
    face = {"missing image": None}.get(case, tmp_path / "bad.png")
    if case == "text file":
        (tmp_path / "bad.png").write_text("not an image\n")
        expected = "Face photo: bad.png is not a readable image"
    elif case == "tiny image":
        image_io.save_png(tmp_path / "bad.png", np.zeros((8, 8, 3), np.uint8))
        expected = "face: bad.png is 8x8 px, too small"
    elif case == "not square":
        image_io.save_png(tmp_path / "bad.png", np.full((64, 96, 3), 128, np.uint8))
        expected = "face: bad.png cannot be aligned"
    else:
        expected = "face: no image given"
    with pytest.raises(AppError) as e:
        client.predict(*_args(face, shape, color), api_name="/transfer")
    message = str(e.value)
    assert expected in message and "Traceback" not in message and "\n" not in message.strip()


def _bomb_png(path, side=20000):
    """A PNG whose header says side x side px (4e8 px, over Pillow's decompression-bomb limit) in a
    few hundred bytes: Pillow refuses it when it opens it, before decoding anything."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    rows = zlib.compress(b"\0" * (1 + side // 8) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def _temporary_copies(name: str) -> list:
    """Gradio's temporary copies of an upload named `name` (in its upload folder)."""
    return list(Path(gradio.utils.get_upload_folder()).rglob(name))


def _one_line(error: AppError) -> str:
    message = str(error)
    assert "Traceback" not in message and "\n" not in message.strip() and message.strip() != "Error"
    return html.unescape(message)  # the page renders the message as HTML


def test_a_decompression_bomb_gives_one_line_and_is_removed(client, tmp_path):
    """On both tabs: the transfer tab's image field (Gradio decodes it) and the grid's files
    (the server does); the refused upload leaves Gradio's temporary folder."""
    bomb = _bomb_png(tmp_path / f"bomb_{uuid.uuid4().hex[:8]}.png")
    with pytest.raises(AppError) as e:
        client.predict(*_args(bomb, EXAMPLES["shape"], EXAMPLES["color"]), api_name="/transfer")
    message = _one_line(e.value)
    assert f"Face photo: {bomb.name} is not a readable image" in message and "decompression bomb" in message
    with pytest.raises(AppError) as e:
        client.predict([handle_file(str(bomb))], [handle_file(str(EXAMPLES["shape"]))], None, False, "hair",
                       "realistic", 5, 0, *STEPS.values(), api_name="/grid")
    message = _one_line(e.value)
    assert f"face 1: {bomb.name} is not a readable image" in message and "decompression bomb" in message
    assert _temporary_copies(bomb.name) == []


@pytest.mark.parametrize("field, value, expected", [
    ("w_steps", 10 ** 9, "W+ steps: 1000000000 is out of range (0 to 2000: serve --max-steps)"),
    ("blend_steps", -1, "blend steps: -1 is out of range (0 to 2000: serve --max-steps)"),
    ("fs_steps", 2.5, "FS steps: 2.5 is not a whole number"),
    ("seed", 2 ** 40, "seed: 1099511627776 is out of range (0 to 4294967295)"),
    ("smooth", 10 ** 6, "smooth (F-mixing mask dilation): 1000000 is out of range (0 to 32)"),
    ("region", "wings", "region 'wings': unknown region name(s) 'wings'"),
])
def test_a_bad_number_or_option_gives_one_line_before_any_work(client, served, field, value, expected):
    """Through the API, which the page's bounds do not hold: refused before any work, in one
    line naming the field (the default limit on step counts: serve --max-steps)."""
    args = list(_args(EXAMPLES["face"], EXAMPLES["shape"], EXAMPLES["color"]))
    position = {"region": 5, "smooth": 7, "seed": 8}.get(field)
    args[9 + jobs.STEP_FIELDS.index(field) if position is None else position] = value
    embedded_before = sorted((served[0].out_dir / "W+").glob("*.npy"))
    start = time.monotonic()
    with pytest.raises(AppError) as e:
        client.predict(*args, api_name="/transfer")
    assert expected in _one_line(e.value)
    assert time.monotonic() - start < 30 and sorted((served[0].out_dir / "W+").glob("*.npy")) == embedded_before


def _raw_transfer(url: str, values: dict) -> str:
    """The transfer endpoint called over plain HTTP with `values` replacing the defaults, JSON as
    any client may send it (NaN and Infinity included, which gradio_client cannot send): the
    text of the job's event stream."""
    import httpx
    paths = []
    for role in ("face", "shape", "color"):
        with open(EXAMPLES[role], "rb") as f:
            paths += httpx.post(f"{url}gradio_api/upload", files={"files": f}, timeout=60).json()
    args = [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in paths] + [None, *_args(None, None, None)[4:]]
    for field, value in values.items():
        args[{"smooth": 7, "seed": 8}.get(field) or 9 + jobs.STEP_FIELDS.index(field)] = value
    body = json.dumps({"data": args})  # allow_nan: NaN and Infinity as bare words
    event = httpx.post(f"{url}gradio_api/call/transfer", content=body, headers={"Content-Type": "application/json"},
                       timeout=60).json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/transfer/{event}", timeout=120).text


@pytest.mark.parametrize("field, value, expected", [
    ("seed", math.nan, "seed: nan is not a whole number"),
    ("smooth", math.inf, "smooth (F-mixing mask dilation): inf is not a whole number"),
    ("inpaint_steps", -math.inf, "inpainting steps (each round): -inf is not a whole number"),
])
def test_a_non_finite_number_gives_one_line(served, field, value, expected):
    text = _raw_transfer(served[1], {field: value})
    assert "event: error" in text and expected in text and "Traceback" not in text


def test_the_server_checks_its_limits_itself(served, tmp_path, monkeypatch):
    """jobs.Server (the page's work, and a Python caller's) checks every number, the grid's size
    and the upload's size, each in one line naming the input and the serve option to change."""
    server = served[0]
    with pytest.raises(ValueError, match=r"^w_steps: 1000000000 is out of range \(0 to 2000: serve --max-steps\)$"):
        server.options("realistic", 5, 0, w_steps=1e9)
    with pytest.raises(ValueError, match="^seed: inf is not a whole number$"):
        server.options("realistic", 5, math.inf)
    with pytest.raises(ValueError, match="^sign must be one of"):
        server.options("sharp", 5, 0)
    assert server.options("realistic", 5.0, 3.0, w_steps=2000.0) == {"sign": "realistic", "smooth": 5, "seed": 3,
                                                                      "w_steps": 2000}
    faces, hairstyles = [EXAMPLES["face"]] * 5, [EXAMPLES["shape"]] * 4
    with pytest.raises(jobs.UploadError, match=r"^grid: 5 faces x 4 hairstyles = 20 transfers, more than this server "
                                               r"takes in one job \(16: serve --max-batch\)$"):
        server.grid(faces, hairstyles)
    big = tmp_path / "big.png"
    shutil.copyfile(EXAMPLES["shape"], big)
    monkeypatch.setattr(server, "limits", jobs.Limits(max_upload_mb=big.stat().st_size / 2 ** 20 / 2))
    with pytest.raises(jobs.UploadError, match=r"^face: big.png is 0.0291 MiB, more than this server takes \(0.0145 MiB: "
                                               r"serve --max-upload-mb\)$"):
        server.store_upload(big, "face")
    with pytest.raises(ValueError, match="max_steps must be a number above 0"):
        jobs.Limits(max_steps=0)


def test_a_grid_over_the_batch_limit_is_refused(client):
    face, shape = handle_file(str(EXAMPLES["face"])), handle_file(str(EXAMPLES["shape"]))
    with pytest.raises(AppError) as e:
        client.predict([face] * 4, [shape] * 5, None, False, "hair", "realistic", 5, 0, *STEPS.values(),
                       api_name="/grid")
    assert "grid: 4 faces x 5 hairstyles = 20 transfers, more than this server takes in one job (16: serve " \
           "--max-batch)" in _one_line(e.value)


def test_an_upload_over_the_size_limit_is_refused_as_it_arrives(served, tmp_path):
    """Gradio's own limit (launch's max_file_size, from serve --max-upload-mb, 25 MiB by
    default): the page and gradio_client refuse the file before sending it, and the server
    refuses it as it arrives (a client that ignores the page), leaving nothing behind."""
    import httpx
    big = tmp_path / f"big_{uuid.uuid4().hex[:8]}.png"
    with big.open("wb") as f:
        f.truncate(25 * 2 ** 20 + 1)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 26214400 bytes"):
        Client(served[1], verbose=False).predict(*_args(big, EXAMPLES["shape"], EXAMPLES["color"]),
                                                 api_name="/transfer")
    with big.open("rb") as f:
        response = httpx.post(f"{served[1]}gradio_api/upload", files={"files": f}, timeout=120)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    assert _temporary_copies(big.name) == []


def test_a_jobs_uploads_leave_gradios_temporary_folder(client, served, tmp_path, monkeypatch):
    """Whatever the job's outcome (a refusal, or a result), Gradio's temporary copies of its
    uploads are removed when it ends; the server's own copy stands in for a rerun from the same
    page (which sends the same, removed, paths again)."""
    server = served[0]
    given = []  # the paths the page passed to the server: Gradio's temporary copies
    store_upload = server.store_upload
    monkeypatch.setattr(server, "store_upload", lambda path, role: given.append(path) or store_upload(path, role))
    copies = {}
    for role in ("face", "shape", "color"):
        copies[role] = tmp_path / f"{role}_{uuid.uuid4().hex[:8]}{EXAMPLES[role].suffix}"
        shutil.copyfile(EXAMPLES[role], copies[role])
    with pytest.raises(AppError, match="out of range"):
        client.predict(*_args(copies["face"], copies["shape"], copies["color"], w_steps=10 ** 6), api_name="/transfer")
    assert [p.name for p in copies.values() if _temporary_copies(p.name)] == []
    result = client.predict(*_args(copies["face"], copies["shape"], copies["color"]), api_name="/transfer")
    assert np.asarray(Image.open(result[0])).shape == (256, 256, 3)
    assert [p.name for p in copies.values() if _temporary_copies(p.name)] == []
    temporary = [Path(p) for p in given if Path(p).name == copies["shape"].name]
    assert temporary and all(Path(gradio.utils.get_upload_folder()) in p.parents for p in temporary)
    # The rerun: the image field passes the removed path on, and the server uses its copy.
    field = web_app.Upload(label="Shape reference", type="filepath", image_mode=None, render=False)
    payload = gradio.data_classes.FileData(path=str(temporary[-1]), orig_name=copies["shape"].name)
    assert field.preprocess(payload) == str(temporary[-1])
    kept = store_upload(temporary[-1], "shape reference")
    assert kept.parent == server.out_dir / "uploads" and image_io.load_rgb(kept).shape == (128, 128, 3)
    with pytest.raises(jobs.UploadError, match=r"^face: never_uploaded.png is not on the server .*: upload it again$"):
        store_upload(temporary[-1].with_name("never_uploaded.png"), "face")


def test_the_page_sends_nothing_anywhere(served, monkeypatch):
    """Gradio's usage analytics (its launch, version check and telemetry requests) are off on
    every page the project builds, set before gradio is imported through barbershop_jax.web."""
    import gradio.analytics as analytics
    sent = []
    for name in ("_do_analytics_request", "_do_normal_analytics_request", "version_check"):
        monkeypatch.setattr(analytics, name, lambda *a, name=name, **k: sent.append(name))
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert Client(served[1], verbose=False).config["analytics_enabled"] is False
    page = web_app.launch(served[0], "127.0.0.1", _free_port(), block=False)
    try:
        assert page.analytics_enabled is False
        time.sleep(1)  # Gradio sends from threads
    finally:
        page.close()
    assert sent == []


def test_two_tabs_at_once_both_get_their_results(served):
    """Two clients submit together: the queue runs them one after the other, and both finish."""
    url = served[1]
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    jobs_ = [first.submit(*_args(EXAMPLES["face"], EXAMPLES["shape"], EXAMPLES["color"], seed=1), api_name="/transfer"),
             second.submit(*_args(EXAMPLES["face"], EXAMPLES["color"], EXAMPLES["shape"], seed=2), api_name="/transfer")]
    results = [job.result(timeout=600) for job in jobs_]
    images = [np.asarray(Image.open(r[0])) for r in results]
    assert all(i.shape == (256, 256, 3) for i in images)
    assert not np.array_equal(images[0], images[1])
    assert [Path(r[5][0]).name.split("_")[2] for r in results] == ["shape", "color"]


def test_progress_names_the_stage_and_its_time_left(served):
    """Server.run reports the newest open stage bar while the job runs (what the page shows)."""
    server = served[0]
    seen = []

    def job():
        with progress.StageProgress("W+ embedding", 2, 1, 4) as stage:
            loop = stage.loop("", 0)
            loop.advance(2, "", excluded=None)
            time.sleep(1.5)
        return "done"

    assert server.run(job, seen.append) == "done"
    assert seen and seen[-1].desc == "W+ embedding (2 images)" and (seen[-1].done, seen[-1].total) == (2, 8)
    assert seen[-1].seconds_left is not None and seen[-1].seconds_left > 0
    assert progress.open_bars() == []  # closed with its stage


def test_grid_tab_gives_a_contact_sheet(client, served):
    """One face x two hairstyles through HairTransfer.grid: the contact sheet and its file."""
    faces = [handle_file(str(EXAMPLES["face"]))]
    hairstyles = [handle_file(str(EXAMPLES["shape"])), handle_file(str(EXAMPLES["color"]))]
    sheet, files, notes = client.predict(faces, hairstyles, None, False, "hair", "realistic", 5, 0, *STEPS.values(),
                                         api_name="/grid")
    image = np.asarray(Image.open(sheet))
    assert image.shape[1] > image.shape[0] > 64  # a margin column and two result columns, one row
    assert Path(files[0]).name == "grid.png"
    assert np.array_equal(np.asarray(Image.open(files[0])), image)
    assert "- 1 face x 2 hairstyles" in notes.splitlines() and "failed" not in notes  # the page's own line
    assert "plan: 1 face x 2 hairstyles = 2 transfers" in notes  # HairTransfer.grid's own report
    assert (served[0].out_dir / "grid.png").is_file()
    with pytest.raises(AppError, match="give at least one face and one hairstyle"):
        client.predict([], hairstyles, None, False, "hair", "realistic", 5, 0, *STEPS.values(), api_name="/grid")


def test_serve_without_the_extra_says_what_to_install(monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio" or name.startswith("gradio."):
            raise ModuleNotFoundError("No module named 'gradio'", name="gradio")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_gradio)
    assert cli.build_parser().parse_args(["serve"]).host == "127.0.0.1"  # this machine only, unless asked
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err == "serve needs the web extra: pip install 'barbershop-jax[web]'\n"


def test_serve_passes_its_limits_to_the_server(monkeypatch, capsys):
    """serve's --max-steps, --max-batch and --max-upload-mb reach the server (defaults: jobs'),
    and a limit that is not a positive number is one line from the command line."""
    given = {}
    monkeypatch.setattr(web, "serve", lambda *args, **kwargs: given.update(kwargs))
    assert cli.main(["serve", "--no-compile-cache"]) == 0
    assert given["limits"] == jobs.Limits(max_steps=2000, max_batch=16, max_upload_mb=25)
    assert given["compile_ahead"] is None  # on, unless $BARBERSHOP_JAX_COMPILE_AHEAD says off
    assert cli.main(["serve", "--no-compile-ahead"]) == 0 and given["compile_ahead"] is False
    assert cli.main(["serve", "--max-steps", "500", "--max-batch", "4", "--max-upload-mb", "2.5",
                     "--no-compile-cache"]) == 0
    assert given["limits"] == jobs.Limits(max_steps=500, max_batch=4, max_upload_mb=2.5)
    for flag, value in (("--max-steps", "0"), ("--max-upload-mb", "nan"), ("--max-batch", "1e9")):
        with pytest.raises(SystemExit) as e:
            cli.main(["serve", flag, value])
        assert e.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def _browser(tmp_path):
    """A headless Chromium through selenium, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver") or shutil.which("chromium-driver")
    if not chromium or not driver_path:
        pytest.skip("no chromium/chromedriver binaries: apt-get install -y chromium chromium-driver "
                    "(scripts/test.sh installs them where apt-get is usable)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_the_page_in_a_headless_browser(served, tmp_path):
    """Load the page, upload three images, press Transfer, see the result image appear; the
    screenshot goes to the test's temporary folder (docs/web.png is one such)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser(tmp_path)
    try:
        driver.get(served[1])
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#face input[type=file]"))
        for elem_id, role in (("face", "photo"), ("shape", "shape"), ("color", "color")):
            field = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]")
            field.send_keys(str(EXAMPLES[role]))
            wait.until(lambda d, e=elem_id: d.find_elements(By.CSS_SELECTOR, f"#{e} img"))
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        WebDriverWait(driver, 600).until(lambda d: d.execute_script(
            "const i = document.querySelector('#result img'); return i && i.complete && i.naturalWidth > 0;"))
        width = driver.execute_script("return document.querySelector('#result img').naturalWidth")
        assert width == 256
        notes = driver.find_element(By.CSS_SELECTOR, "#notes").text
        assert "photo.jpg aligned" in notes
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.5)  # the image's fade-in
        shot = tmp_path / "web.png"
        assert driver.save_screenshot(str(shot)) and Image.open(shot).size[0] > 0
    finally:
        driver.quit()
