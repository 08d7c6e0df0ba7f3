"""Landmarks from dlib with the packaged 68-point model (`barbershop-jax[landmarks]`: dlib-bin and
face-recognition-models): where the model is looked for, and align-faces on the bundled photo
without its sidecar landmarks, compared with the crop cut from the sidecar's."""
import json
import shutil

import cv2
import numpy as np
import pytest

from barbershop_jax import cli
from barbershop_jax.pipeline.faces import crop as face_crop
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.faces import landmarks
from barbershop_jax.pipeline.demo import example_images
from barbershop_jax.pipeline.hair_transfer import crop_inputs
from barbershop_jax.pipeline.transfer_job import TransferJob

SIZE = 256


def test_the_model_is_the_given_one_then_the_environment_s_then_the_packaged_one(tmp_path, monkeypatch):
    packaged = tmp_path / "site" / landmarks.MODEL_PACKAGE / "models" / landmarks.MODEL_NAME
    packaged.parent.mkdir(parents=True)
    packaged.write_bytes(b"")
    (packaged.parent.parent / "__init__.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv(landmarks.MODEL_ENV, raising=False)
    assert landmarks.packaged_model() == packaged
    assert landmarks.find_model() == packaged
    monkeypatch.setenv(landmarks.MODEL_ENV, str(tmp_path / "env.dat"))
    assert landmarks.find_model() == tmp_path / "env.dat"
    assert landmarks.find_model(tmp_path / "given.dat") == tmp_path / "given.dat"
    # A model asked for that is not there is an error naming it, not a quiet fall-back.
    with pytest.raises(landmarks.LandmarkModelError, match=r"env.dat: no such file; pip install "
                                                           r"'barbershop-jax\[landmarks\]'"):
        landmarks.DlibLandmarks()
    monkeypatch.setattr(landmarks, "MODEL_PACKAGE", "no_such_model_package")
    monkeypatch.delenv(landmarks.MODEL_ENV)
    assert landmarks.packaged_model() is None and landmarks.find_model() is None


def require_packaged_model():
    pytest.importorskip("dlib", reason="dlib is not installed (pip install 'barbershop-jax[landmarks]')")
    if landmarks.packaged_model() is None:
        pytest.skip("face-recognition-models is not installed (pip install 'barbershop-jax[landmarks]')")


def photo_without_sidecar(folder):
    """A copy of the bundled photo with no {stem}.landmarks.json beside it."""
    folder.mkdir()
    copy = shutil.copy(example_images()["photo"], folder / "photo.jpg")
    assert not landmarks.sidecar_path(copy).exists()
    return copy


def five_points(points68):
    """dlib's 68 points as the sidecar's 5: eye centres, nose tip, mouth corners."""
    p = np.asarray(points68)
    return np.stack([p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[30], p[48], p[54]])


def registered(crop, transform, onto: face_crop.CropTransform):
    """`crop` resampled into the frame of the crop `onto` (both of the same photo, SIZE px),
    through the two transforms; and the mask of pixels that lie well inside `crop`."""
    def homogeneous(t):
        return np.vstack([t.crop_to_source(SIZE), [0, 0, 1]])
    matrix = (np.linalg.inv(homogeneous(transform)) @ homogeneous(onto))[:2]  # onto's pixel -> crop's
    warped = cv2.warpAffine(crop.astype(np.float32), matrix, (SIZE, SIZE),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    cols, rows = np.meshgrid(np.arange(SIZE), np.arange(SIZE))
    where = matrix @ np.stack([cols.ravel(), rows.ravel(), np.ones(SIZE * SIZE)])
    margin = SIZE // 20
    return warped, ((where >= margin) & (where <= SIZE - 1 - margin)).all(axis=0).reshape(SIZE, SIZE)


def test_align_faces_without_the_sidecar_finds_the_face_with_the_packaged_model(tmp_path, monkeypatch):
    require_packaged_model()
    monkeypatch.delenv(landmarks.MODEL_ENV, raising=False)
    photo = photo_without_sidecar(tmp_path / "photos")
    rc = cli.main(["align-faces", str(photo), "--out", str(tmp_path / "dlib"), "--size", str(SIZE), "--quiet"])
    assert rc == 0
    # dlib's detector (upsampling once, as the official align_face.py) finds two faces here:
    # the astronaut's (score 1.21) and the round mission patch on her sleeve (0.16), which the
    # official would crop too, under the official names.
    assert sorted(p.name for p in (tmp_path / "dlib").iterdir()) == [
        "photo_0.crop.json", "photo_0.png", "photo_1.crop.json", "photo_1.png"]
    dlib_crop = image_io.load_rgb(tmp_path / "dlib" / "photo_0.png")
    dlib_t = face_crop.read_transform(tmp_path / "dlib" / "photo_0.png")
    found = np.asarray(dlib_t.landmarks)
    assert found.shape == (68, 2)

    sidecar = face_crop.FaceCropper(size=SIZE).crop_one(example_images()["photo"], tmp_path / "sidecar")
    given = np.asarray(json.loads(landmarks.sidecar_path(example_images()["photo"]).read_text()))
    # The sidecar's 5 points were placed by hand: dlib's differ by at most 3.0 px (x or y) in
    # this 512 px photo, whose crop square is 176 px wide.
    assert np.abs(five_points(found) - given).max() <= 4
    # The crop squares: corners 8.8 px apart (5% of the side), the scale 1.6% and the angle 3.8
    # degrees apart. The square magnifies the landmarks' differences: to first order these give
    # 8.7 px, and key points each off by up to 3 px in x and y could give up to 22 px.
    assert np.abs(dlib_t.quad - sidecar.transform.quad).max() <= 12

    # Pixel for pixel the two crops differ much (mean 18.0 levels, PSNR 17.9 dB: a 13 px
    # shift at 256 px); brought into one frame by their transforms they agree to a mean of
    # 0.76 levels (PSNR 46.6 dB; bilinear resampling of two LANCZOS-reduced crops): the
    # difference is the crop square's, that is the landmarks'.
    raw = np.abs(dlib_crop.astype(float) - sidecar.crop).mean()
    warped, inside = registered(dlib_crop, dlib_t, sidecar.transform)
    diff = np.abs(warped - sidecar.crop)[inside]
    psnr = 10 * np.log10(255 ** 2 / (diff ** 2).mean())
    assert raw > 10 and inside.mean() > 0.7
    assert diff.mean() < 1.5 and psnr > 40, (diff.mean(), psnr)


def test_transfer_align_takes_the_packaged_model_and_asks_which_face(tmp_path, monkeypatch):
    """transfer --align's cropper (TransferJob.cropper) on the photo without its sidecar: two
    faces, so --face-index is needed; with it, the astronaut's face is cropped."""
    require_packaged_model()
    monkeypatch.delenv(landmarks.MODEL_ENV, raising=False)
    photo = photo_without_sidecar(tmp_path / "photos")
    triples = [(photo, photo, photo)]
    _, failures = crop_inputs(triples, tmp_path / "aligned", TransferJob(out=str(tmp_path)).cropper(64))
    assert "2 faces found; choose one with --face-index" in str(failures[0][1])
    good, failures = crop_inputs(triples, tmp_path / "aligned", TransferJob(out=str(tmp_path), face_index=0).cropper(64))
    assert not failures and [p.name for p in good[0]] == ["photo_0.png"] * 3
    assert face_crop.read_transform(tmp_path / "aligned" / "photo_0.png").landmarks
