"""Hostile input, refused before any work in one line that names it: numbers out of range or
not finite (command line: exit 2 naming the flag; Python API: ValueError naming the argument),
degenerate arrays given to the API, files given to `convert` that are no checkpoint, and odd
file names. No optimisation runs here (models are stubbed or not loaded at all); the fault
table (docs/faults.md) lists these cases."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from barbershop_jax import cli
from barbershop_jax import config
from barbershop_jax.config import EmbedConfig, TransferConfig
from barbershop_jax.models import bundle, stylegan2
from barbershop_jax.pipeline import embed as pipeline_embed
from barbershop_jax.pipeline import hair_transfer
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline.files import image_files
from barbershop_jax.pipeline.files import sources
from barbershop_jax.pipeline.store.records import TargetEdit
from barbershop_jax.stages import target_mask
from conftest import no_model_planning

SIZE = stylegan2.tiny_config().size  # the embedded generator's


def good_image(path, size=SIZE):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


@pytest.fixture
def no_models(monkeypatch):
    """Every check here comes before the models load: loading them fails the test."""
    monkeypatch.setattr(bundle, "load", lambda *a, **k: pytest.fail("models loaded before the inputs were checked"))


def refused_by_argparse(capsys, argv):
    """cli.main(argv) exits 2 with one line on stderr, no traceback; returns that line."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    return err[0]


# ----------------------------------------------------------------------------- numbers: the command line
@pytest.mark.parametrize("command, flag, value, says", [
    ("transfer", "--seed", "4294967296", "at most 4294967295"),      # PRNGKey: 2**32 draws seed 0's noise
    ("transfer", "--seed", "-1", "of at least 0"),
    ("transfer", "--blend-steps", "1" + "0" * 30, "at most 1000000"),
    ("transfer", "--w-steps", "1e30", "is not an integer"),
    ("transfer", "--smooth", "1000000", "at most 1024"),
    ("transfer", "--batch-size", "1000000000", "at most 4096"),
    ("transfer", "--checkpoint-every", "9" * 40, "at most 1000000"),
    ("transfer", "--feather", "inf", "at most 0.5"),
    ("transfer", "--feather", "0.75", "at most 0.5"),
    ("transfer", "--min-face", "1e400", "a number of at least 0.0"),
    ("transfer", "--part", "1/0", "expected K/N"),
    ("transfer", "--part", "3/2", "expected K/N"),
    ("transfer", "--part", "1/" + "9" * 30, "expected K/N"),
    ("transfer", "--face-index", "99999999999", "at most 2147483647"),
    ("embed", "--lr", "inf", "above 0.0 and at most"),
    ("embed", "--lr", "nan", "above 0.0"),
    ("embed", "--l2-lambda", "1e400", "of at least 0.0 and at most 3.40282e+38"),
    ("embed", "--percept-lambda", "-inf", "of at least 0.0"),
    ("embed", "--fs-steps", "10000001", "at most 1000000"),
    ("embed", "--seed", "99999999999999999999999", "at most 4294967295"),
    ("embed", "--num-processes", "0", "of at least 1"),
    ("align-faces", "--size", "1000000000", "at most 4096"),
    ("demo", "--truncation", "nan", "at most 1"),
    ("demo", "--n", "100000", "at most 4096"),
    ("demo", "--seed", "4294967296", "at most 4294967295"),
    ("serve", "--port", "70000", "at most 65535"),
    ("serve", "--batch-size", "0", "of at least 1"),
])
def test_bad_numbers_on_the_command_line(tmp_path, capsys, no_models, command, flag, value, says):
    a = str(good_image(tmp_path / "a.png"))
    images = {"transfer": ["--face", a, "--shape", a, "--color", a], "embed": [a], "align-faces": [a]}.get(command, [])
    out = [] if command == "serve" else ["--out", str(tmp_path / "o")]
    line = refused_by_argparse(capsys, [command, *images, *out, f"{flag}={value}"])
    assert f"argument {flag}: " in line and says in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag, value, says", [
    ("--seed", "4294967295", "at most 4294967294"),  # its PCA seed, seed + 1, must be a 32-bit seed too
    ("--pca-samples", "1" + "0" * 12, "at most 100000000"),
    ("--n-mean-latent", "0", "of at least 1"),
    ("--size", "2048", "at most 1024"),
    ("--channel-multiplier", "1e9", "is not an integer"),
])
def test_bad_numbers_given_to_convert(tmp_path, capsys, flag, value, says):
    line = refused_by_argparse(capsys, ["convert", "stylegan2", str(tmp_path / "g.pt"), str(tmp_path / "w"),
                                        flag, value])
    assert f"argument {flag}: " in line and says in line, line


def test_numbers_at_their_limits_are_taken(tmp_path, no_models):
    parser = cli.build_parser()
    a = str(tmp_path / "a.png")
    args = parser.parse_args(["transfer", "--face", a, "--shape", a, "--color", a, "--out", "o",
                              "--seed", "4294967295", "--blend-steps", "1000000", "--feather", "0.5",
                              "--batch-size", "4096", "--smooth", "0", "--part", "3/3"])
    assert (args.seed, args.blend_steps, args.feather, args.batch_size, args.part) == (2**32 - 1, 10**6, 0.5, 4096,
                                                                                       (3, 3))


# ----------------------------------------------------------------------------- numbers: the Python API
@pytest.mark.parametrize("options, says", [
    (dict(seed=2**32), "EmbedConfig: seed must be a whole number of at least 0 and at most 4294967295"),
    (dict(seed=-1), "seed must be a whole number of at least 0"),
    (dict(learning_rate=math.inf), "learning_rate must be above 0 and at most"),
    (dict(style_lambda=float("1e400")), "TransferConfig: style_lambda must be at least 0 and at most"),
    (dict(face_lambda=10**400), "face_lambda must be at least 0"),
    (dict(l2_lambda=1e39), "l2_lambda must be at least 0 and at most 3.40282e+38"),  # infinite in float32
    (dict(l2_lambda="1"), "l2_lambda must be at least 0"),
    (dict(w_steps=10**30), "EmbedConfig: w_steps must be a whole number of at least 0 and at most 1000000"),
    (dict(blend_steps=np.float64(3)), "blend_steps must be a whole number"),
    (dict(smooth=10**6), "TransferConfig: smooth must be a whole number of at least 0 and at most 1024"),
    (dict(chunk=10**9), "chunk must be a whole number of at least 1 and at most 1000000"),
    (dict(parse_size=2.5), "TransferConfig: parse_size must be a whole number"),
    (dict(lpips_size=0), "EmbedConfig: lpips_size must be a whole number of at least 1"),
    (dict(fs_block=100), "fs_block must be a whole number of at least 0 and at most 8"),
    (dict(align_latents=10**6), "align_latents must be a whole number of at least 1 and at most 18"),
    (dict(guard_empty="no"), "TransferConfig: guard_empty must be True or False"),
    (dict(noise="loud"), "EmbedConfig: noise must be one of random, const, none"),
    (dict(region=5), "TransferConfig: region must be label names"),
    (dict(batch_size=10**9), "HairTransfer: batch_size must be a whole number of at least 1 and at most 4096"),
    (dict(batch_size=np.nan), "HairTransfer: batch_size must be a whole number"),
    (dict(checkpoint_every=10**30), "HairTransfer: checkpoint_every must be a whole number of at least 0 and at most"),
])
def test_bad_numbers_given_to_the_api(no_models, options, says):
    with pytest.raises(ValueError, match=says.replace("+", r"\+")):
        hair_transfer.HairTransfer(**options)


def test_bad_numbers_given_to_the_api_elsewhere(no_models, tmp_path):
    def refused(make, says):
        with pytest.raises(ValueError, match=says):
            make()
    refused(lambda: hair_transfer.HairTransfer.transfer_many(None, [], feather=math.nan),
            "transfer_many: feather must be at least 0 and at most 0.5")
    refused(lambda: pipeline_embed.embed([], tmp_path, batch_size=10**9), "embed: batch_size must be a whole number")
    refused(lambda: pipeline_embed.embed([], tmp_path, checkpoint_every=-5), "embed: checkpoint_every must be")
    refused(lambda: pipeline_embed.embed_files([], tmp_path, wave=0), "embed_files: wave must be a whole number")
    refused(lambda: face_crop.FaceCropper(size=10**9, landmarks=object()), "FaceCropper: size must be a whole number")
    refused(lambda: face_crop.FaceCropper(min_face=math.inf, landmarks=object()), "FaceCropper: min_face must be")
    refused(lambda: face_crop.FaceCropper(face_index=-1, landmarks=object()), "FaceCropper: face_index must be")
    refused(lambda: TargetEdit(shape_transform=(math.inf, 0, 0)), "shape_transform: scale must be above 0")
    refused(lambda: TargetEdit(shape_transform=(1.0, math.nan, 0)), "shape_transform: dx must be")
    refused(lambda: TargetEdit(shape_transform=(1.0, 0)), r"shape_transform: expected \(scale, dx, dy\)")
    refused(lambda: target_mask.parse_shape_transform("scale=nan"), "shape transform 'scale=nan': scale must be")
    refused(lambda: target_mask.parse_shape_transform("dy=1e400"), "shape transform 'dy=1e400': dy must be")
    # Settings that fit no generator of the run's size: found when the size is known, before any work.
    refused(lambda: TransferConfig(fs_block=7).resolve(SIZE), f"fs_block 7 has 512 px features, more than the "
                                                              f"generator's {SIZE} px")
    refused(lambda: TransferConfig(align_latents=12).resolve(SIZE), "align_latents 12 is more than the 10 W\\+ vectors")
    refused(lambda: EmbedConfig.for_size(SIZE, fs_block=5), "EmbedConfig: fs_block 5")
    refused(lambda: EmbedConfig.for_size(SIZE, lpips_size=24), "lpips_size 24 must divide the generator size")


def test_numbers_at_their_limits_are_taken_by_the_api():
    EmbedConfig(seed=2**32 - 1, w_steps=np.int64(10**6), l2_lambda=np.float32(2.5), learning_rate=1e-9)
    TransferConfig(smooth=1024, style_lambda=config.FLOAT32_MAX, guard_empty=np.bool_(False), region=["brows", "eyes"])
    assert TargetEdit(shape_transform=(np.float32(1.5), -20, 3)).shape_transform == (1.5, -20.0, 3.0)


# ----------------------------------------------------------------------------- arrays given to the API
GOOD = np.zeros((SIZE, SIZE, 3), np.uint8)
BAD_ARRAYS = {
    "empty": (np.zeros((0, SIZE, 3), np.uint8), "the image is empty"),
    "nan": (np.full((SIZE, SIZE, 3), np.nan, np.float32), "NaN or infinity"),
    "inf": (np.full((SIZE, SIZE, 3), np.inf), "NaN or infinity"),
    "rank 4": (np.zeros((1, SIZE, SIZE, 3), np.uint8), "got shape (1, 64, 64, 3)"),
    "rank 1": (np.zeros(SIZE, np.uint8), "got shape (64,)"),
    "5 channels": (np.zeros((SIZE, SIZE, 5), np.uint8), "got shape (64, 64, 5)"),
    "floats 0..255": (np.full((SIZE, SIZE, 3), 200.0), "float pixels must be in [0, 1], got 200 to 200"),
    "negative floats": (np.full((SIZE, SIZE, 3), -0.5, np.float32), "float pixels must be in [0, 1]"),
    "int64": (np.zeros((SIZE, SIZE, 3), np.int64), "uint8 (0..255) or float in [0, 1], got int64"),
    "uint16": (np.zeros((SIZE, SIZE, 3), np.uint16), "got uint16"),
    "bool": (np.zeros((SIZE, SIZE), bool), "got bool"),
    "a number": (7, "got shape () (int)"),
    "ragged list": ([[1, 2], [3]], "not an image array"),
    "empty PIL image": (Image.new("RGB", (0, 0)), "the image is empty (0x0)"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_degenerate_arrays_are_refused_naming_the_argument(no_models, case):
    bad, says = BAD_ARRAYS[case]
    never = hair_transfer.HairTransfer(bundle.Models(None, None, None, None), progress=False, compile_cache=False)
    never.transfer_many = lambda *a, **k: pytest.fail("ran")  # transfer's; the class's is called by name below
    with pytest.raises(ValueError, match="^shape: ") as e:
        hair_transfer.HairTransfer.transfer(never, GOOD, bad, GOOD)
    assert says in str(e.value)
    with pytest.raises(ValueError, match=r"^triples\[1\]\[2\] \(color\): "):
        hair_transfer.HairTransfer.transfer_many(never, [(GOOD, GOOD, GOOD), (GOOD, GOOD, bad)])
    with pytest.raises(ValueError, match=r"^hairstyles\[0\]: "):
        hair_transfer.HairTransfer.grid(never, [GOOD], [bad])
    with pytest.raises(ValueError, match=r"^triples\[0\]\[3\] \(structure\): "):
        hair_transfer.checked_triples([(GOOD, GOOD, GOOD, bad)])


def test_degenerate_arrays_given_to_embed_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^paths\[1\]: the image holds NaN or infinity"):
        pipeline_embed.embed([GOOD, np.full((SIZE, SIZE, 3), np.nan)], tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "W+").exists()


def test_good_arrays_are_taken():
    for image in (GOOD, np.ones((SIZE, SIZE, 4), np.float32), np.zeros((SIZE, SIZE), np.float64),
                  Image.new("L", (SIZE, SIZE))):
        assert image_files.as_rgb_array(image).shape == (SIZE, SIZE, 3)
    assert image_files.as_rgb_array(np.ones((2, 2, 3), np.float32)).max() == 255
    triple = hair_transfer.checked_triples([("face.png", GOOD, GOOD, None)])[0]
    assert triple[0] == "face.png" and triple[3] is None and isinstance(triple[1], sources.ImageSource)


def test_a_triple_that_is_not_one_is_refused():
    for bad in ("face.png", (GOOD, GOOD), 5):
        with pytest.raises(ValueError, match=r"^triples\[0\]: expected \(face, shape, color\)"):
            hair_transfer.checked_triples([bad])


# ----------------------------------------------------------------------------- convert: files that are no checkpoint
def _convert(model, src, dst, capsys):
    extra = {"stylegan2": ["--pca-samples", "0"], "vgg16": ["--lpips-weights", str(src)]}.get(model, [])
    rc = cli.main(["convert", model, str(src), str(dst), *extra])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not dst.exists()
    return err


@pytest.mark.parametrize("model", ["stylegan2", "bisenet", "vgg16"])
def test_convert_names_the_file_and_what_is_wrong(tmp_path, capsys, model):
    (tmp_path / "notes.pt").write_text("hello world\n" * 20)
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:1500])
    torch.save({"style.1.weight": [[0.0] * 4] * 4}, tmp_path / "list.pt")
    torch.save({"style.1.weight": torch.zeros(4, 4), "style.1.bias": "zeros"}, tmp_path / "string.pt")
    torch.save({"style.1.weight": torch.zeros(4, 4), 7: torch.zeros(4)}, tmp_path / "intkey.pt")
    torch.save({"style.1.weight": torch.full((4, 4), math.nan)}, tmp_path / "nan.pt")
    for name, says in [("notes.pt", "not a PyTorch checkpoint (neither a zip archive nor a pickle; it begins with "
                                    "b'hell')"),
                       ("empty.pt", "empty file"),
                       ("cut.pt", "not a readable PyTorch checkpoint, truncated or corrupt"),
                       ("list.pt", "state_dict: non-tensor entries style.1.weight (list)"),
                       ("string.pt", "non-tensor entries style.1.bias (str)"),
                       ("intkey.pt", "state_dict: non-string keys 7"),
                       ("nan.pt", "NaN, infinity or complex numbers in style.1.weight")]:
        err = _convert(model, tmp_path / name, tmp_path / "out", capsys)
        assert err.startswith(f"barbershop-jax: error: {tmp_path / name}: ") and says in err, err


def test_convert_refuses_a_latent_avg_that_is_not_a_tensor(tmp_path, capsys):
    torch.save({"g_ema": {"style.1.weight": torch.zeros(4, 4)}, "latent_avg": [0.0] * 4}, tmp_path / "g.pt")
    assert f"{tmp_path / 'g.pt'}: latent_avg is a list, not a tensor" in _convert("stylegan2", tmp_path / "g.pt",
                                                                                   tmp_path / "out", capsys)


# ----------------------------------------------------------------------------- odd file names
def test_a_file_name_with_a_newline_is_named_on_one_line(tmp_path, capsys, no_models):
    odd = tmp_path / "two\nlines.png"
    odd.write_text("not an image")
    rc = cli.main(["transfer", "--face", str(odd), "--shape", str(odd), "--color", str(odd), "--out",
                   str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and repr(str(odd)) + ": not a readable image" in err[0], err


def test_a_file_name_starting_with_a_dash_is_named(tmp_path, capsys, monkeypatch, no_models):
    monkeypatch.chdir(tmp_path)
    good_image(tmp_path / "-face.png")
    for argv in (["embed", "-face.png", "--out", "o"],
                 ["transfer", "--face", "-face.png", "--shape", "a", "--color", "a", "--out", "o"]):
        line = refused_by_argparse(capsys, argv)
        assert "-face.png is a file whose name starts with '-', which reads as an option: write ./-face.png" in line


def test_names_that_are_no_image_name_name_the_file(tmp_path):
    dots = good_image(tmp_path / "...png")  # its stem is ".."
    with pytest.raises(image_files.ImageError, match=f"^{tmp_path / '...png'}: its name '..': not usable"):
        sources.as_source(dots)
    long = good_image(tmp_path / ("x" * 201 + ".png"))
    with pytest.raises(image_files.ImageError, match=f"^{long}: the name is 201 bytes long, over the 200"):
        sources.as_source(long)
    good, failures = hair_transfer.check_triples([(long, long, long)])
    assert not good and f"{long}: the name is 201 bytes long" in failures[0][1]
    with pytest.raises(image_files.ImageError, match="not usable as an image name"):
        sources.as_source(GOOD, name=5)


def test_names_too_long_together_are_refused_before_any_work(tmp_path):
    """Each name fits, but the result's file joins three of them: refused before embedding."""
    names = [good_image(tmp_path / (c * 90 + ".png")) for c in "abc"]
    ht = hair_transfer.HairTransfer(out_dir=tmp_path / "o", progress=False, compile_cache=False)
    with pytest.raises(ValueError, match="the result's file name would be 3[0-9][0-9] bytes, over the 255") as e:
        ht.transfer(*names)
    assert all(str(n) in str(e.value) for n in names)
    assert not (tmp_path / "o" / "W+").exists()


def test_a_file_name_that_is_not_utf8_reaches_failures_csv(tmp_path, capsys, monkeypatch):
    """A batch whose bad image's name is not UTF-8: its row in failures.csv holds the name's
    own bytes (a strict encode failed the run at its end), and the others went on."""
    if os.uname().sysname == "Darwin":
        pytest.skip("macOS file systems refuse names that are not UTF-8")
    monkeypatch.setattr(bundle, "load", lambda *a, **k: (None, None))
    ran = []
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many", lambda self, good, **k: ran.append(good) or [])
    no_model_planning(monkeypatch)
    faces = tmp_path / "faces"
    faces.mkdir()
    good_image(faces / "ok.png")
    raw = os.fsencode(faces) + b"/bad\xff.png"
    with open(raw, "wb") as f:
        f.write(b"not an image")
    hair = str(good_image(tmp_path / "hair.png"))
    rc = cli.main(["transfer", "--faces", str(faces), "--hairstyles", hair, "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "bad\\udcff.png" in err and "Traceback" not in err, err
    assert b"bad\xff.png" in (tmp_path / "o" / "failures.csv").read_bytes()
    assert [[s.path.name for s in t] for t in ran[0]] == [["ok.png", "hair.png", "hair.png"]]
