"""Bad input to the transfer command: one clear line naming the input and the problem, a row in
failures.csv in batch mode while the rest goes on, nothing written for what was refused. No
optimisation runs here (the models and the transfer are stubbed); the README's fault table
lists these cases."""
import csv

import numpy as np
import pytest
from PIL import Image

from barbershop_jax import api, cli, image_io, transfer
from barbershop_jax.models import stylegan2

SIZE = stylegan2.tiny_config().size  # the embedded generator's


@pytest.fixture
def stub_transfer(monkeypatch):
    """No models, no optimisation: records what would have been transferred."""
    ran = []
    monkeypatch.setattr(transfer, "load_models", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr(transfer.HairTransfer, "transfer_many", lambda self, good, **k: ran.append(good) or [])
    return ran


def good_image(path, size=SIZE):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def manifest(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["face", "shape", "color"])
        w.writerows(rows)
    return path


def test_every_bad_image_fails_its_row_and_the_rest_goes_on(tmp_path, capsys, stub_transfer, monkeypatch):
    ok = good_image(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(ok.read_bytes()[:100])
    good_image(tmp_path / "bomb.png", size=200)
    good_image(tmp_path / "small.png", size=SIZE // 2)
    bad = {"missing.png": "no such file", "text.png": "not a readable image", "empty.png": "not a readable image",
           "cut.png": "not a readable image", "bomb.png": "not a readable image",
           "small.png": f"{SIZE // 2}x{SIZE // 2}, not the generator's {SIZE}x{SIZE}"}
    rows = [["ok.png", "ok.png", "ok.png"]] + [["ok.png", name, "ok.png"] for name in bad]
    # Pillow's decompression-bomb limit is kept: an image over twice the limit is refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # refused over 20,000: the 200 x 200 bomb
    out = tmp_path / "out"
    rc = cli.main(["transfer", "--pairs", str(manifest(tmp_path / "t.csv", rows)), "--out", str(out), "--no-resize",
                   "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    for name, problem in bad.items():
        line = next((x for x in err.splitlines() if name in x), err)
        assert problem in line, (name, line)
    assert f"{len(bad)} of {len(rows)} triple(s) failed" in err
    [good] = stub_transfer
    assert [tuple(s.path.name for s in t) for t in good] == [("ok.png",) * 3]  # the good row still ran
    with open(out / "failures.csv") as f:
        assert sorted(r["shape"].rsplit("/", 1)[-1] for r in csv.DictReader(f)) == sorted(bad)
    assert sorted(p.name for p in out.iterdir()) == ["failures.csv"]  # nothing else written


def test_duplicate_rows_are_done_once(tmp_path, capsys, stub_transfer):
    good_image(tmp_path / "a.png")
    rows = [["a.png", "a.png", "a.png"], ["a.png", "a.png", "a.png"]]
    assert cli.main(["transfer", "--pairs", str(manifest(tmp_path / "t.csv", rows)), "--out", str(tmp_path / "o"),
                     "--quiet"]) == 0
    assert "row 3 repeats row 2; it is done once" in capsys.readouterr().err
    assert len(stub_transfer[0]) == 1


def test_names_that_would_write_outside_the_output_folder_are_refused(tmp_path):
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    for name in ("../evil", "a/b", "..", "c\\d"):
        with pytest.raises(image_io.ImageError, match="not usable as an image name"):
            api.as_source(pixels, name=name)
    dots = good_image(tmp_path / "...png")  # its stem is ".."
    with pytest.raises(image_io.ImageError, match="not usable as an image name"):
        api.as_source(dots)
    good, failures = transfer.check_triples([(dots, dots, dots)])
    assert not good and "not usable as an image name" in failures[0][1]


def test_out_of_memory_names_the_batch_size_to_try(tmp_path, capsys, monkeypatch):
    good_image(tmp_path / "a.png")
    monkeypatch.setattr(transfer, "load_models", lambda *args, **kwargs: (None, None))

    def oom(self, good, **k):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.5GiB.")
    monkeypatch.setattr(transfer.HairTransfer, "transfer_many", oom)
    a = str(tmp_path / "a.png")
    rc = cli.main(["transfer", "--face", a, "--shape", a, "--color", a, "--out", str(tmp_path / "o"),
                   "--batch-size", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "out of device memory at batch size 8: try --batch-size 4" in err[0]


def test_missing_weights_are_reported_before_any_work(tmp_path, capsys):
    a = str(good_image(tmp_path / "a.png"))
    rc = cli.main(["transfer", "--face", a, "--shape", a, "--color", a, "--out", str(tmp_path / "o"),
                   "--weights", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "nope: weights directory does not exist" in err[0]
    assert not (tmp_path / "o").exists()
