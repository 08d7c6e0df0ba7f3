"""Every file a run reads can be damaged. A damaged entry of the output folder (W+, FS, an
alignment, a blend: truncated, a key or value gone, another shape or dtype, NaN) is
recomputed, with one warning naming the file, and the run's results are those of a clean
run; a damaged official file given to --import-official is named and its image embedded; a
damaged weights folder is one line naming the file, no traceback. The fault table
(docs/faults.md) lists these cases."""
import contextlib
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from barbershop_jax import cli, config
from barbershop_jax.config import EmbedConfig
from barbershop_jax.pipeline import embed as pipeline_embed
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline.store import resume
from barbershop_jax.pipeline.store import step_times
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.store import cache as store
from conftest import STEPS, assert_batch_independent, tiny_transfer

TRIPLE = ("ann", "bob", "bob")  # one alignment (shape == colour), one blend


@contextlib.contextmanager
def warnings_logged():
    """The library's warnings in the block, one string each (the command line's handler stops
    propagation to pytest's, so a handler of its own)."""
    lines = []

    class Lines(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                lines.append(record.getMessage())
    logger, handler = logging.getLogger("barbershop_jax"), Lines()
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def _paths(images):
    return dict(zip(("ann", "bob", "cid", "dan"), images))


@pytest.fixture(scope="module")
def clean(models, images, tmp_path_factory):
    """One triple's whole run at batch size 2, padded: the programs of the other transfer
    tests (conftest.TRANSFER_FILES). A damaged entry is recomputed alone, padded to 2 as well,
    so the entries damaged below are those of the first item of their batch (ann's W+ and FS,
    the triple's alignment and blend): recomputed, their numbers are this run's bit for bit on
    every CPU (an item's position in a batch may move its last bits: conftest's
    batch_position_exact)."""
    out = tmp_path_factory.mktemp("clean")
    path = _paths(images)
    [result] = tiny_transfer(models, out).transfer_many([tuple(path[n] for n in TRIPLE)])
    assert result is not None
    return out


def _rerun(models, images, out):
    path = _paths(images)
    with warnings_logged() as lines:
        [result] = tiny_transfer(models, out).transfer_many([tuple(path[n] for n in TRIPLE)])
    return result, lines


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _npz(path, **change):
    """Rewrite an npz with arrays changed (None: removed)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in change.items():
        arrays.pop(k) if v is None else arrays.__setitem__(k, v(arrays[k]))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _one(folder, pattern):
    [path] = (folder).glob(pattern)
    return path


DAMAGE = {
    "W+ truncated": ("W+/ann.npy", _truncate),
    "W+ empty": ("W+/ann.npy", lambda p: p.write_bytes(b"")),
    "W+ of integers": ("W+/ann.npy", lambda p: np.save(p, np.load(p).astype(np.int32))),
    "W+ with NaN": ("W+/ann.npy", lambda p: np.save(p, np.full_like(np.load(p), np.nan))),
    "FS truncated": ("FS/ann.npz", _truncate),
    "FS without latent_F": ("FS/ann.npz", lambda p: _npz(p, latent_F=None)),
    "FS of another shape": ("FS/ann.npz", lambda p: _npz(p, latent_in=lambda a: a[:, :-1])),
    "alignment truncated": ("Align_realistic/*.npz", _truncate),
    "alignment labels truncated": ("Align_realistic/*_labels.png", _truncate),
    "blend truncated": ("Blend_realistic/*.npz", _truncate),
    "blend result truncated": ("ann_bob_bob_realistic.png", _truncate),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_cache_entry_is_recomputed_with_one_warning(case, clean, models, images, tmp_path):
    pattern, damage = DAMAGE[case]
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    damaged = _one(out, pattern)
    damage(damaged)
    result, lines = _rerun(models, images, out)
    assert len(lines) == 1 and str(damaged) in lines[0] and "damaged" in lines[0], lines
    assert result is not None
    # Recomputed, and the same as the clean run's: every file of the folder.
    for path in sorted(p for p in clean.rglob("*") if p.is_file() and p.suffix in (".npy", ".npz", ".png")):
        again = out / path.relative_to(clean)
        if path.suffix == ".png":
            np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(path)), str(again))
        elif path.suffix == ".npy":
            np.testing.assert_array_equal(np.load(again), np.load(path), str(again))
        else:
            with np.load(again) as a, np.load(path) as b:
                assert a.files == b.files
                for k in a.files:
                    np.testing.assert_array_equal(a[k], b[k], f"{again}[{k}]")
    # Healed: a third run warns of nothing and recomputes nothing.
    _, lines = _rerun(models, images, out)
    assert lines == []


def test_damaged_official_files_are_named_and_their_images_embedded(clean, models, images, tmp_path):
    """--import-official: ann's official W+ is truncated, bob's FS lacks a key; each is named
    in one warning and embedded instead (what the run would do without the official folder:
    the import only saves time), and everything else is imported. The embedded W+ is the clean
    run's bit for bit; FS runs its images in other batches than the clean run did, so its
    latents are held to the claim this machine makes (conftest.assert_batch_independent)."""
    official = tmp_path / "official"
    for folder in ("W+", "FS"):
        (official / folder).mkdir(parents=True)
        for f in (clean / folder).glob("*.np[yz]"):
            shutil.copy(f, official / folder / f.name)
    _truncate(official / "W+" / "ann.npy")
    _npz(official / "FS" / "bob.npz", latent_F=None)
    cfg = EmbedConfig.for_size(models.generator.config.size,
                               **config.split_options({**STEPS, "noise": "random"})[0])
    out = tmp_path / "out"
    path = _paths(images)
    with warnings_logged() as lines:
        pipeline_embed.embed([path["ann"], path["bob"]], out, models, cfg, batch_size=2, pad_batches=True,
                             progress=False, import_official=official)
    assert len(lines) == 2, lines
    assert str(official / "W+" / "ann.npy") in lines[0] and "embedded instead" in lines[0]
    assert str(official / "FS" / "bob.npz") in lines[1] and "latent_F" in lines[1]
    for name in ("W+/ann.npy", "W+/bob.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(clean / name))
    for name in ("FS/ann.npz", "FS/bob.npz"):
        with np.load(out / name) as a, np.load(clean / name) as b:
            assert_batch_independent(a["latent_F"], b["latent_F"], str(out / name), steps=STEPS["fs_steps"])
    assert json.loads((out / "W+" / "bob.json").read_text())["imported_from"] == str(official)
    assert "imported_from" not in json.loads((out / "W+" / "ann.json").read_text())


# ----------------------------------------------------------------------------- weights folders
def _damaged_weights(weights_dir, tmp_path, damage):
    root = tmp_path / "weights"
    shutil.copytree(weights_dir, root)
    return root, damage(root)


def _pca_change(**change):
    def damage(root):
        _npz(root / "stylegan2" / "pca.npz", **change)
        return root / "stylegan2" / "pca.npz"
    return damage


def _config_text(text):
    def damage(root):
        (root / "stylegan2" / "config.json").write_text(text)
        return root / "stylegan2" / "config.json"
    return damage


def _truncated(relative):
    def damage(root):
        _truncate(root / relative)
        return root / relative
    return damage


WEIGHTS_DAMAGE = {
    "pca truncated": (_truncated("stylegan2/pca.npz"), "unreadable PCA file"),
    "pca of another shape": (_pca_change(X_comp=lambda a: a[:3]), "X_comp has shape (3, 64), expected (64, 64)"),
    "pca without X_mean": (_pca_change(X_mean=None), "lacks X_mean"),
    "pca with NaN": (_pca_change(X_stdev=lambda a: a * np.nan), "X_stdev holds NaN"),
    "config truncated": (_truncated("stylegan2/config.json"), "unreadable config"),
    "config a list": (_config_text("[1, 2]"), "not a model config"),
    "config with a float size": (_config_text(json.dumps({"model": "stylegan2", "format": 1, "config": {
        "size": 64.5}})), "size is 64.5"),
}


@pytest.mark.parametrize("case", WEIGHTS_DAMAGE)
def test_a_damaged_weights_file_is_one_line_naming_it(case, weights_dir, images, tmp_path, capsys):
    damage, problem = WEIGHTS_DAMAGE[case]
    root, damaged = _damaged_weights(weights_dir, tmp_path, damage)
    rc = cli.main(["embed", str(images[0]), "--weights", str(root), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    [line] = err.splitlines()
    assert line.startswith(f"barbershop-jax: error: {damaged}: ") and problem in line, line


def test_damaged_orbax_arrays_are_one_line_without_event_loop_noise(weights_dir, images, tmp_path):
    """The command line in a subprocess, to its exit: when one array does not read, the reads
    still in flight must not print "Event loop is closed" tracebacks after the error line."""
    def damage(root):  # the arrays' data, not the metadata: orbax reads many arrays before one fails
        for f in (root / "stylegan2" / "arrays").glob("ocdbt.process_*/d/*"):
            _truncate(f)
        return root / "stylegan2" / "arrays"
    root, damaged = _damaged_weights(weights_dir, tmp_path, damage)
    proc = subprocess.run([sys.executable, "-m", "barbershop_jax.cli", "embed", str(images[0]), "--weights",
                           str(root), "--out", str(tmp_path / "o"), "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "Event loop is closed" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"barbershop-jax: error: {damaged.absolute()}: unreadable checkpoint"), line


# ----------------------------------------------------------------------------- other files
def test_a_damaged_checkpoint_is_named_and_not_resumed_from(tmp_path):
    ckpt = resume.LoopCheckpoint(tmp_path / "ckpt", every=2)
    state = {"w": np.ones((2, 3), np.float32), "step": np.int32(4)}
    ckpt.save(state, 4)
    [path] = ckpt.folder.glob("step_*.npz")
    assert ckpt.restore(state)[1] == 4
    for damage in (_truncate, lambda p: ckpt.save({"w": np.full((2, 3), np.nan, np.float32), "step": np.int32(4)}, 4)):
        ckpt.save(state, 4)
        damage(path)
        with warnings_logged() as lines:
            assert ckpt.restore(state) is None
        assert len(lines) == 1 and str(path) in lines[0] and "damaged checkpoint" in lines[0], lines


def test_damaged_step_times_are_left_out(tmp_path, monkeypatch):
    file = tmp_path / "step_times.json"
    monkeypatch.setenv(step_times.ENV, str(file))
    file.write_text(json.dumps({"cpu|64px": {"Blend": [10, 2.0], "Alignment": "x", "W+ embedding": [1, None]},
                                "gpu": [1, 2]}))
    assert step_times.read() == {"cpu|64px": {"Blend": [10, 2.0]}}
    assert step_times.seconds_per_step(step_times.read(), "gpu", "Blend") is None
    file.write_bytes(b"\xff{")
    with warnings_logged() as lines:
        assert step_times.read() == {} and step_times.read() == {}
    assert len(lines) == 1 and str(file) in lines[0], lines


def test_a_damaged_target_mask_or_label_map_is_named(tmp_path, models):
    labels = np.zeros((64, 64), np.int32)
    good = store.save_label_png(tmp_path / "mask.png", labels, 16)
    data = good.read_bytes()
    cut, flipped = tmp_path / "cut.png", tmp_path / "flipped.png"
    cut.write_bytes(data[: len(data) // 2])
    flipped.write_bytes(data[:-20] + bytes(b ^ 0xFF for b in data[-20:-12]) + data[-12:])  # the IDAT's last bytes
    for path in (cut, flipped):
        with pytest.raises(ValueError, match=f"{path}: not a readable image"):
            store.read_label_png(path, models.parser.labels, 64)
        with pytest.raises(ValueError, match=f"{path}: unreadable"):
            store.load_labels(path, 64, 16)
    store.save_labels(tmp_path / "high.png", np.full((64, 64), 200))
    with pytest.raises(ValueError, match="class ids outside 0 to 15"):
        store.load_labels(tmp_path / "high.png", 64, 16)


def test_a_damaged_crop_transform_is_named(tmp_path):
    crop = image_io.save_png(tmp_path / "face.png", np.zeros((8, 8, 3), np.uint8))
    transform = face_crop.transform_path(crop)
    for text in ('{"quad": [[0, 0], [0, 1], [1, 1], [1, 0]], "source_size": [1e400, 2], "size": 8}',
                 '{"quad": [[0, 0], [0, 1], [1, 1], [1e400, 0]], "source_size": [4, 4], "size": 8}', "[1]", "{"):
        transform.write_text(text)
        with pytest.raises(face_crop.FaceCropError, match=f"{transform}: not a crop transform"):
            face_crop.read_transform(crop)
