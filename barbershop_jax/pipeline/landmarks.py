"""Face landmarks for the FFHQ crop (face_crop.py), from a pluggable backend:

- JSON given by the user: a file mapping photo names to faces, or a sidecar file
  `{photo stem}.landmarks.json` beside the photo. Each face is 68 points (dlib's order) or
  5 points (left eye, right eye, nose, left and right mouth corner, as seen in the image),
  each [x, y] in the photo's pixels:

      {"photo.jpg": [[x, y], ...]}                      one face
      {"photo.jpg": [[[x, y], ...], [[x, y], ...]]}     several faces
      a sidecar holds the value alone: [[x, y], ...] or [[[x, y], ...], ...]

  Keys may be the file name, its stem, or the path as given on the command line.
- dlib's frontal face detector and 68-point shape predictor (`pip install dlib-bin`), with
  the user's `shape_predictor_68_face_landmarks.dat` given by argument or by the
  environment variable BARBERSHOP_DLIB_MODEL. Nothing is downloaded.

A backend is a callable (photo uint8 (H, W, 3), path) -> list of (N, 2) float arrays, one
per face, in the backend's order (dlib: detector order, as the official align_face.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

MODEL_ENV = "BARBERSHOP_DLIB_MODEL"
SIDECAR_SUFFIX = ".landmarks.json"
DLIB_MODEL_HELP = ("dlib's 68-point model is shape_predictor_68_face_landmarks.dat, from "
                   "http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2 (unpack it with bunzip2); "
                   f"give it with --dlib-model or the environment variable {MODEL_ENV}, or give landmarks as "
                   "JSON with --landmarks")


class LandmarkError(ValueError):
    """No usable landmarks for an input; the message names it."""


class LandmarkModelError(LandmarkError):
    """The landmark backend itself is unusable (no dlib, no model file): no photo can succeed."""


def _faces(value, where: str) -> list[np.ndarray]:
    """A JSON value (one face, or a list of faces; [] for none) -> list of (N, 2) arrays."""
    if isinstance(value, list) and not value:
        return []
    try:
        arr = np.asarray(value, np.float64)
    except (ValueError, TypeError):
        raise LandmarkError(f"{where}: landmarks must be lists of [x, y] points") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] not in (5, 68) or arr.shape[2] != 2:
        raise LandmarkError(f"{where}: each face needs 68 or 5 [x, y] points, got an array of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise LandmarkError(f"{where}: landmarks contain NaN or infinity")
    return list(arr)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LandmarkError(f"{path}: no such landmarks file") from None
    except (OSError, ValueError) as e:
        raise LandmarkError(f"{path}: not readable JSON ({e})") from None


class JsonLandmarks:
    """Landmarks from a JSON file mapping photo names to faces (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        data = _read_json(self.path)
        if not isinstance(data, dict):
            raise LandmarkError(f"{self.path}: expected an object mapping photo names to landmarks")
        self.data = data

    def __call__(self, photo, path) -> list[np.ndarray]:
        path = Path(path)
        for key in (str(path), path.name, path.stem):
            if key in self.data:
                return _faces(self.data[key], f"{self.path}[{key!r}]")
        raise LandmarkError(f"{path}: no landmarks for it in {self.path} (keys are file names or stems)")


def sidecar_path(photo_path) -> Path:
    photo_path = Path(photo_path)
    return photo_path.with_name(photo_path.stem + SIDECAR_SUFFIX)


class DlibLandmarks:
    """dlib's HOG face detector (upsampling once, as the official) and 68-point predictor."""

    def __init__(self, model_path=None):
        model_path = model_path or os.environ.get(MODEL_ENV)
        if not model_path:
            raise LandmarkModelError("no landmarks (no sidecar .landmarks.json beside the photo) and no landmark "
                                     "model: " + DLIB_MODEL_HELP)
        if not Path(model_path).is_file():
            raise LandmarkModelError(f"{model_path}: no such file; " + DLIB_MODEL_HELP)
        try:
            import dlib
        except ImportError:
            raise LandmarkModelError("dlib landmarks need dlib: pip install 'barbershop-jax[dlib]' (the dlib-bin "
                                "wheel), or give landmarks as JSON with --landmarks") from None
        try:
            self.predictor = dlib.shape_predictor(str(model_path))
        except RuntimeError as e:
            raise LandmarkModelError(f"{model_path}: not a dlib shape predictor ({e})") from None
        self.detector = dlib.get_frontal_face_detector()

    def __call__(self, photo, path) -> list[np.ndarray]:
        detections = self.detector(np.ascontiguousarray(photo), 1)
        shapes = [self.predictor(photo, d) for d in detections]
        return [np.array([[p.x, p.y] for p in s.parts()], np.float64) for s in shapes]


class Landmarks:
    """The backend chain: a JSON file if given; else a sidecar JSON beside the photo; else
    dlib (created when first needed, so that JSON-only runs never need dlib or its model)."""

    def __init__(self, json_path=None, dlib_model=None):
        self.json = JsonLandmarks(json_path) if json_path else None
        self.dlib_model = dlib_model
        self._dlib = None

    def __call__(self, photo, path) -> list[np.ndarray]:
        if self.json is not None:
            return self.json(photo, path)
        if path is not None and sidecar_path(path).is_file():
            side = sidecar_path(path)
            return _faces(_read_json(side), str(side))
        if self._dlib is None:
            if path is not None and not (self.dlib_model or os.environ.get(MODEL_ENV)):
                # Name the photo that needed the model: most runs meant to give it a sidecar.
                raise LandmarkModelError(f"{path}: no landmarks (no {sidecar_path(path).name} beside it) and no "
                                         "landmark model: " + DLIB_MODEL_HELP)
            self._dlib = DlibLandmarks(self.dlib_model)
        return self._dlib(photo, path)
