"""One bad item does not stop a batch: a manifest row with a bad option, two images under one
name, a photo whose landmarks put its crop outside it, a bad image in a grid or in `embed`.
Each is named in one line (its manifest row, its file) and in failures.csv, the other items
go on, and the exit status is 1 at the end. No optimisation runs here (the transfer and the
embedding are stubbed); the fault table (docs/faults.md) lists these cases."""
import csv
import json
import types

import numpy as np
from PIL import Image

from barbershop_jax import cli
from barbershop_jax.models import bundle, stylegan2
from barbershop_jax.pipeline import embed as pipeline_embed
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline import hair_transfer
from conftest import no_model_planning

SIZE = stylegan2.tiny_config().size  # the embedded generator's
# The models as far as the commands look at them when the transfer itself is stubbed: the
# generator's size (the crops of --align are cut at it).
NO_MODELS = types.SimpleNamespace(generator=types.SimpleNamespace(config=stylegan2.tiny_config()), parser=None)


def stub_transfer(monkeypatch):
    """No models, no optimisation: records the triples (as file paths) each transfer got."""
    ran = []
    monkeypatch.setattr(bundle, "load", lambda *args, **kwargs: NO_MODELS)
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many",
                        lambda self, good, **k: ran.append([tuple(s.path for s in t) for t in good]) or [])
    no_model_planning(monkeypatch)
    return ran


def image(path, seed=0, size=SIZE):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("barbershop-jax: error: ")]


def test_a_row_with_a_bad_option_fails_alone_and_is_named(tmp_path, capsys, monkeypatch):
    """A shape transform out of range, not finite, overflowing or misspelt, or a row without
    its face: that row is reported with its number and files, and the other rows run."""
    ran = stub_transfer(monkeypatch)
    a, b, c = (image(tmp_path / f"{n}.png", seed=i) for i, n in enumerate("abc"))
    bad = {3: ("a.png,b.png,c.png,scale=-1", "scale"), 4: ("a.png,b.png,c.png,scale=nan", "scale=nan"),
           5: ("a.png,b.png,c.png,dx=1e999", "dx=1e999"), 6: ("a.png,b.png,c.png,dy=-inf", "dy=-inf"),
           7: ("a.png,b.png,c.png,scale=x", "scale is not a number"), 8: ("a.png,b.png,c.png,size=2", "size=2"),
           9: (",b.png,c.png,", "no face given")}
    lines = ["face,shape,color,shape_transform", "a.png,b.png,c.png,", *(row for row, _ in bad.values()),
             "b.png,a.png,c.png,"]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = cli.main(["transfer", "--pairs", str(tmp_path / "t.csv"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert ran == [[(a, b, c), (b, a, c)]]  # the good rows, and only they, ran
    assert f"{len(bad)} of {len(bad) + 2} triple(s) failed" in err
    errors = error_lines(err)
    for number, (_, says) in bad.items():
        line = next((x for x in errors if f"t.csv row {number}: " in x), err)
        assert says in line, (number, line)
    failures = read_csv(out / "failures.csv")
    assert [int(r["row"]) for r in failures] == list(bad)
    assert all(r["shape"] == str(b) and r["color"] == str(c) for r in failures)
    assert [r["face"] for r in failures[:-1]] == [str(a)] * (len(bad) - 1)
    assert all(says in r["error"] for r, (_, says) in zip(failures, bad.values()))


def test_images_that_share_a_name_fail_the_later_rows_only(tmp_path, capsys, monkeypatch):
    """face.png and face.jpg would write the same output files: the first row to use the name
    keeps it; a later row with the other image fails, naming both files; the rest runs."""
    ran = stub_transfer(monkeypatch)
    face_png, face_jpg = image(tmp_path / "face.png", seed=1), image(tmp_path / "face.jpg", seed=2)
    a, b = image(tmp_path / "a.png", seed=3), image(tmp_path / "b.png", seed=4)
    rows = [(face_png, a, b), (face_jpg, a, b), (a, face_jpg, b), (a, b, face_png), (b, a, a)]
    with open(tmp_path / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows([("face", "shape", "color"), *((p.name for p in row) for row in rows)])
    out = tmp_path / "out"
    rc = cli.main(["transfer", "--pairs", str(tmp_path / "t.csv"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert ran == [[rows[0], rows[3], rows[4]]]
    failures = read_csv(out / "failures.csv")
    assert [int(r["row"]) for r in failures] == [3, 4]
    for r in failures:
        assert f"{face_jpg} and {face_png} (row 2) are two images named 'face'" in r["error"]
    assert sum(f"t.csv row {n}: {face_jpg} and {face_png}" in x for x in error_lines(err) for n in (3, 4)) == 2


def write_landmarks(photo, points):
    photo.with_name(photo.stem + ".landmarks.json").write_text(json.dumps(np.asarray(points).tolist()))


FACE = np.array([(70, 80), (130, 80), (100, 110), (78, 140), (122, 140)], np.float64)  # 5 points in a 200 px photo
CENTRE = np.array([100, 86])  # of FACE's crop square: a tenth of the way from the eyes to the mouth


def photos_with_a_face_outside(folder):
    """p1 and p4: faces in them; p2: landmarks far outside the photo; p3: landmarks whose crop
    square is vastly larger than the photo (its centre inside)."""
    folder.mkdir()
    photos = [image(folder / f"p{i}.png", seed=i, size=200) for i in range(1, 5)]
    write_landmarks(photos[0], FACE)
    write_landmarks(photos[1], FACE + 1e7)
    write_landmarks(photos[2], (FACE - CENTRE) * 1e5 + CENTRE)
    write_landmarks(photos[3], FACE + 5)
    return photos


def test_align_faces_goes_past_a_photo_whose_crop_leaves_it(tmp_path, capsys):
    photos = photos_with_a_face_outside(tmp_path / "photos")
    out = tmp_path / "out"
    rc = cli.main(["align-faces", str(tmp_path / "photos"), "--out", str(out), "--size", "64", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["failures.csv", "p1.crop.json", "p1.png", "p4.crop.json",
                                                     "p4.png"]
    assert [r["photo"] for r in read_csv(out / "failures.csv")] == [str(photos[1]), str(photos[2])]
    errors = error_lines(err)
    assert any(f"{photos[1]}: the landmarks put the face's centre at" in x and "outside the 200x200 photo" in x
               for x in errors), err
    assert any(f"{photos[2]}: the landmarks give a crop square" in x for x in errors), err
    assert "2 of 4 photo(s) failed" in err



def test_a_crop_error_no_check_foresaw_fails_its_photo_alone(tmp_path, capsys, monkeypatch):
    """Whatever else the crop raises (Pillow's ValueError for a box it cannot cut, memory) is
    that photo's failure, named, and not the batch's."""
    photos = photos_with_a_face_outside(tmp_path / "photos")
    real_crop = face_crop.crop_face

    def crop(pixels, points, size, *, min_face, what):
        if what.endswith("p1.png"):
            raise ValueError("Coordinate 'right' is less than 'left'")
        return real_crop(pixels, points, size, min_face=min_face, what=what)
    monkeypatch.setattr(face_crop, "crop_face", crop)
    out = tmp_path / "out"
    rc = cli.main(["align-faces", str(photos[0]), str(photos[3]), "--out", str(out), "--size", "64", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert error_lines(err) == [f"barbershop-jax: error: {photos[0]}: cannot crop the face (ValueError: Coordinate "
                                "'right' is less than 'left')"]
    assert sorted(p.name for p in out.iterdir()) == ["failures.csv", "p4.crop.json", "p4.png"]

def test_transfer_align_goes_past_a_photo_whose_crop_leaves_it(tmp_path, capsys, monkeypatch):
    ran = stub_transfer(monkeypatch)
    p1, p2, p3, p4 = photos_with_a_face_outside(tmp_path / "photos")
    (tmp_path / "t.csv").write_text("face,shape,color\nphotos/p1.png,photos/p1.png,photos/p4.png\n"
                                    "photos/p2.png,photos/p1.png,photos/p1.png\n"
                                    "photos/p4.png,photos/p3.png,photos/p1.png\n"
                                    "photos/p4.png,photos/p4.png,photos/p1.png\n")
    out = tmp_path / "out"
    rc = cli.main(["transfer", "--pairs", str(tmp_path / "t.csv"), "--out", str(out), "--align", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    crops = out / "aligned"
    assert ran == [[(crops / "p1.png", crops / "p1.png", crops / "p4.png"),
                    (crops / "p4.png", crops / "p4.png", crops / "p1.png")]]
    failures = read_csv(out / "failures.csv")
    assert [int(r["row"]) for r in failures] == [3, 4]
    assert f"{p2}: the landmarks put the face's centre at" in failures[0]["error"]
    assert f"{p3}: the landmarks give a crop square" in failures[1]["error"]
    assert any(x.startswith(f"barbershop-jax: error: {tmp_path / 't.csv'} row 3: {p2}: ") for x in error_lines(err))


def test_a_grid_goes_past_a_bad_face_and_a_name_clash(tmp_path, capsys, monkeypatch):
    ran = stub_transfer(monkeypatch)
    a, face_jpg = image(tmp_path / "a.png", seed=1), image(tmp_path / "face.jpg", seed=2)
    hair_png, b = image(tmp_path / "face.png", seed=3), image(tmp_path / "b.png", seed=4)
    (tmp_path / "junk.png").write_text("not an image")
    out = tmp_path / "out"
    rc = cli.main(["transfer", "--faces", str(a), str(tmp_path / "junk.png"), str(face_jpg), "--hairstyles",
                   str(hair_png), str(b), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert ran == [[(a, hair_png, hair_png), (a, b, b)]]  # face.png (a hairstyle) came first: it keeps "face"
    failures = read_csv(out / "failures.csv")
    assert [(r["face"], r["shape"]) for r in failures] == [(str(tmp_path / "junk.png"), str(hair_png)),
                                                          (str(tmp_path / "junk.png"), str(b)),
                                                          (str(face_jpg), str(hair_png)), (str(face_jpg), str(b))]
    assert "not a readable image" in failures[0]["error"] and "two images named 'face'" in failures[2]["error"]
    assert (out / "grid.png").is_file() and "4 of 6 triple(s) failed" in err


def test_embed_goes_past_unreadable_images_and_name_clashes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bundle, "load", lambda *args, **kwargs: NO_MODELS)
    embedded = []
    monkeypatch.setattr(pipeline_embed, "embed", lambda items, out, models, cfg, **kw: embedded.extend(
        it.path for it in items) or [pipeline_embed.EmbeddedImage(it.name, it.image_hash, None, None, None)
                                     for it in items])
    (tmp_path / "other").mkdir()
    a, clash = image(tmp_path / "a.png", seed=1), image(tmp_path / "other" / "a.png", seed=2)
    (tmp_path / "junk.png").write_text("not an image")
    b = image(tmp_path / "b.png", seed=3)
    out = tmp_path / "out"
    rc = cli.main(["embed", str(a), str(tmp_path / "junk.png"), str(clash), str(b), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err
    assert embedded == [a, b] and "2 image(s) embedded" in captured.out
    failures = read_csv(out / "failures.csv")
    assert [r["image"] for r in failures] == [str(tmp_path / "junk.png"), str(clash)]
    assert "not a readable image" in failures[0]["error"]
    assert f"{clash} and {a} are two images named 'a'" in failures[1]["error"]
    assert len(error_lines(captured.err)) == 2
