"""The web page (`barbershop-jax serve`, the web extra): its functions through Gradio's Python
client against a server on a free localhost port, and one run in a real headless browser
(Debian's chromium and chromium-driver with selenium; skipped, with the reason, without them).
The server runs the embedded generator with a small VGG (as test_transfer's models, so that it
compiles the same programs) and a few steps per stage."""
import re
import shutil
import socket
import time
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
from barbershop_jax.pipeline import demo, progress  # noqa: E402
from barbershop_jax.pipeline import image_files as image_io  # noqa: E402

STEPS = dict(w_steps=2, fs_steps=2, inpaint_steps=2, align_steps1=2, align_steps2=2, blend_steps=2)
EXAMPLES = demo.example_images()
SMALL_VGG = vgg16.VGG16Config(widths=(8, 16, 16, 32, 32))  # test_transfer's: the same compiled programs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, url): the page on a free localhost port with the embedded generator (no
    --weights) and a few steps per stage as its defaults."""
    g = embedded.generator()
    models = Models(g, embedded.parser(), vgg16.init(SMALL_VGG, jax.random.PRNGKey(1)),
                    pca_lib.pca_stats(g, 2000, jax.random.PRNGKey(2)))
    patch = pytest.MonkeyPatch()
    patch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    port = _free_port()
    server, page = web.serve(None, "127.0.0.1", port, tmp_path_factory.mktemp("served"), block=False,
                             batch_size=2, steps=STEPS)
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


def test_one_transfer_gives_images_and_downloads(client, served):
    """The bundled photo (aligned by its landmarks, found through its content) with the two
    references (square, used as they are): result, inputs, mask, legend, pasted photo, files."""
    result, inputs, mask, legend, pasted, files, notes = client.predict(
        *_args(EXAMPLES["photo"], EXAMPLES["shape"], EXAMPLES["color"]), api_name="/transfer")
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
    server = served[0]
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
