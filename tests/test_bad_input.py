"""Bad input to the transfer command: one clear line naming the input and the problem, a row in
failures.csv in batch mode while the rest goes on, nothing written for what was refused. No
optimisation runs here (the models and the transfer are stubbed); the fault table
(docs/faults.md) lists these cases."""
import csv

import numpy as np
import pytest

from barbershop_jax.models import bundle
from PIL import Image

from barbershop_jax import cli
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.config import EmbedConfig
from barbershop_jax.pipeline.runtime import batching
from barbershop_jax.pipeline import embed as pipeline_embed
from barbershop_jax.pipeline import hair_transfer
from barbershop_jax.pipeline.files import sources
from barbershop_jax.models import stylegan2
from conftest import no_model_planning

SIZE = stylegan2.tiny_config().size  # the embedded generator's


@pytest.fixture
def stub_transfer(monkeypatch):
    """No models, no optimisation: records what would have been transferred."""
    ran = []
    monkeypatch.setattr(bundle, "load", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many", lambda self, good, **k: ran.append(good) or [])
    no_model_planning(monkeypatch)
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


def test_a_spreadsheet_csv_reads_as_written(tmp_path, capsys, stub_transfer):
    """Excel's "CSV UTF-8": a byte-order mark, CRLF line ends, header cells as typed, and
    empty rows at the end. Read as plain UTF-8, the mark would make the first column
    "\ufeffface", and the face column would be missing."""
    for name in ("a.png", "b.png", "c.png"):
        good_image(tmp_path / name)
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbfFace , shape,COLOR\r\na.png, b.png ,c.png\r\n,,\r\n\r\n")
    assert cli.main(["transfer", "--pairs", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert [[p.path.name for p in t] for t in stub_transfer[0]] == [["a.png", "b.png", "c.png"]]
    (tmp_path / "latin.csv").write_bytes("face,shape,color\nJos\u00e9.png,b.png,c.png\n".encode("latin-1"))
    assert cli.main(["transfer", "--pairs", str(tmp_path / "latin.csv"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latin.csv: not UTF-8 text (invalid continuation byte); save it as CSV UTF-8" in err[0]


def test_names_that_would_write_outside_the_output_folder_are_refused(tmp_path):
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    for name in ("../evil", "a/b", "..", "c\\d"):
        with pytest.raises(image_io.ImageError, match="not usable as an image name"):
            sources.as_source(pixels, name=name)
    dots = good_image(tmp_path / "...png")  # its stem is ".."
    with pytest.raises(image_io.ImageError, match="not usable as an image name"):
        sources.as_source(dots)
    good, failures = hair_transfer.check_triples([(dots, dots, dots)])
    assert not good and "not usable as an image name" in failures[0][1]


def test_out_of_memory_names_the_batch_size_to_try(tmp_path, capsys, monkeypatch):
    good_image(tmp_path / "a.png")
    monkeypatch.setattr(bundle, "load", lambda *args, **kwargs: (None, None))
    no_model_planning(monkeypatch)

    def oom(self, good, **k):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.5GiB.")
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many", oom)
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


@pytest.mark.parametrize("args, says", [
    (["transfer", "--batch-size", "0"], "argument --batch-size: '0': expected a number of at least 1"),
    (["transfer", "--w-steps", "-3"], "argument --w-steps: '-3': expected a number of at least 0"),
    (["transfer", "--blend-steps", "2.5"], "argument --blend-steps: '2.5' is not an integer"),
    (["transfer", "--feather", "nan"], "argument --feather: 'nan': expected a number of at least 0.0"),
    (["embed", "--batch-size", "-1"], "argument --batch-size: '-1': expected a number of at least 1"),
    (["embed", "--lr", "0"], "argument --lr: '0': expected a number above 0.0"),
])
def test_bad_numbers_are_refused_in_one_line_before_any_work(tmp_path, capsys, args, says):
    """A negative batch size once embedded nothing and reported "1 image(s) embedded"; a
    negative step count skipped its stage. Now argparse refuses them: one line, exit 2."""
    a = str(good_image(tmp_path / "a.png"))
    images = ["--face", a, "--shape", a, "--color", a] if args[0] == "transfer" else [a]
    with pytest.raises(SystemExit) as stop:
        cli.main([args[0], *images, "--out", str(tmp_path / "o"), *args[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "o").exists()


def test_the_library_refuses_bad_counts_before_loading_models(monkeypatch):
    from barbershop_jax.config import TransferConfig

    def no_loading(*args, **kwargs):
        raise AssertionError("models loaded before the settings were checked")
    monkeypatch.setattr(bundle, "load", no_loading)
    for make, says in [
        (lambda: hair_transfer.HairTransfer(batch_size=0), "HairTransfer: batch_size must be a whole number of at least 1"),
        (lambda: hair_transfer.HairTransfer(blend_steps=-1), "TransferConfig: blend_steps must be a whole number"),
        (lambda: hair_transfer.HairTransfer(w_steps=2.5), "EmbedConfig: w_steps must be a whole number"),
        (lambda: hair_transfer.HairTransfer(learning_rate=0.0), "learning_rate must be above 0"),
        (lambda: pipeline_embed.embed([], "unused", batch_size=-1), "embed: batch_size must be a whole number of at least 1"),
        (lambda: EmbedConfig(percept_lambda=float("nan")), "percept_lambda must be at least 0"),
        (lambda: TransferConfig(chunk=0), "TransferConfig: chunk must be a whole number of at least 1"),
        (lambda: TransferConfig(align_steps1=True), "align_steps1 must be a whole number"),
        (lambda: list(batching.batches([1, 2], 0, "w_plus")), "w_plus: batch_size must be a whole number"),
    ]:
        with pytest.raises(ValueError, match=says):
            make()
    assert TransferConfig(blend_steps=0).blend_steps == 0  # 0 steps: a stage that keeps its start


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bundle, "load", lambda *a, **k: pytest.fail("models loaded"))
    a = str(good_image(tmp_path / "a.png"))
    (tmp_path / "afile").write_text("")
    for out, says in [(tmp_path / "afile", "afile: a file, not a folder"),
                      (tmp_path / "afile" / "sub", f"sub: {tmp_path / 'afile'} is a file, not a folder")]:
        assert cli.main(["embed", a, "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_images_are_read_in_parallel_with_the_same_results(tmp_path, capsys, monkeypatch):
    """sources.read_sources: every distinct path once, on threads, each an ImageSource or the
    ImageError that says why not (in the paths' order); a bar from READ_BAR_FROM images."""
    paths = []
    for i in range(5):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    given = [paths[3], str(paths[0]), tmp_path / "bad.png", *paths, paths[3]]
    monkeypatch.setattr(sources, "READ_BAR_FROM", 2)
    read = sources.read_sources(given, progress=True)
    assert list(read) == [str(p) for p in (paths[3], paths[0], tmp_path / "bad.png", paths[1], paths[2], paths[4])]
    for p in paths:
        assert read[str(p)] == sources.as_source(p)  # name, content hash, path, shape
    assert isinstance(read[str(tmp_path / "bad.png")], image_io.ImageError)
    err = capsys.readouterr().err
    assert "Reading images: 100%" in err and "6/6" in err
    with pytest.raises(image_io.ImageError, match="bad.png: not a readable image"):
        sources.identify(given)
    assert [s.name for s in sources.identify(paths[::-1] + paths)] == ["4", "3", "2", "1", "0"]


def test_embed_files_goes_in_waves_and_refuses_a_name_clash_across_them(tmp_path, monkeypatch):
    """pipeline_embed.embed_files (the embed command's): every file read and checked first, then `wave`
    images per embed call, only their names kept; two different images under one name are
    refused before any work, even when they would fall in different waves."""
    paths = []
    for i in range(5):
        rng = np.random.default_rng(i)
        (tmp_path / str(i)).mkdir()
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / str(i) / f"im{i}.png")
        paths.append(tmp_path / str(i) / f"im{i}.png")
    calls = []
    monkeypatch.setattr(pipeline_embed, "embed", lambda items, out, models, cfg, **kw: calls.append((items, kw)) or [
        pipeline_embed.EmbeddedImage(it.name, it.image_hash, None, None, None) for it in items])
    names = pipeline_embed.embed_files(paths, tmp_path / "out", models=object(), wave=2, batch_size=3, progress=False)
    assert names == [f"im{i}" for i in range(5)]
    assert [[it.name for it in items] for items, _ in calls] == [["im0", "im1"], ["im2", "im3"], ["im4"]]
    assert all(kw == {"batch_size": 3, "progress": False} for _, kw in calls)
    clash = tmp_path / "4" / "im0.png"  # another image named im0, in the last wave
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(clash)
    calls.clear()
    with pytest.raises(image_io.ImageError, match="another input is also named 'im0'"):
        pipeline_embed.embed_files([*paths, clash], tmp_path / "out", models=object(), wave=2, progress=False)
    assert calls == []
