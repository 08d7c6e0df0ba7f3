"""Ordinary photos in and out: the FFHQ crop of a face in an ordinary photo, exactly as the
official `align_face.py` (utils/shape_predictor.py) computes it, the transform that produced
the crop, and the way back: a result pasted into the photo with a feathered mask.

The official crop, from four key points (eye centres, mouth corners; `landmarks.py`):
1. an oriented square `quad` around eyes and mouth (`ffhq_quad`);
2. shrink: a photo much larger than the crop is first resized by an integer factor (LANCZOS);
3. crop to the quad plus a border;
4. pad: where the quad leaves the photo, reflect-pad, blur the padding and fade it to the
   median colour;
5. sample the quad at 4096 px (bilinear), then LANCZOS down to 1024, then to `size`.

The official code uses Pillow's ANTIALIAS, which Pillow 10 removed; it is LANCZOS by another
name, so the crops are the same. Its final ToTensor/ToPILImage round trip is the identity on
uint8 (checked for all 256 values) and is left out.

Geometry: crop pixel (row i, column j) of an R x R image sits at the normalised position
t = ((j + 0.5) / R, (i + 0.5) / R) of the quad, that is at source pixel coordinates
quad[0] + t_x (quad[3] - quad[0]) + t_y (quad[1] - quad[0]) (pixel centres at integers),
whatever R is. `CropTransform` keeps the quad in the original photo's coordinates (including
the small rounding of step 2), so a result of any size can be mapped back.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import scipy.ndimage
from PIL import Image

from barbershop_jax.config import check_numbers
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.store import cache
from barbershop_jax.pipeline.files.sources import content_hash

OFFICIAL_SIZE = 1024      # the official crop size; other sizes are LANCZOS-resized from it
TRANSFORM_SIZE = 4096     # the quad is sampled at this size first (official)
MIN_FACE = 64             # default: a quad smaller than this (photo pixels) is refused
MAX_CROP_TO_PHOTO = 8     # a quad wider than this many times the photo's longer side is refused


class FaceCropError(ValueError):
    """A face that cannot be cropped (too small, bad landmarks); the message names the input."""


# ----------------------------------------------------------------------------- the quad
def key_points(points) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(eye_left, eye_right, mouth_left, mouth_right), each (x, y), from 68 dlib landmarks
    (eyes: mean of 36-41 and 42-47; mouth corners: 48 and 54) or from 5 points in the order
    left eye, right eye, nose, left mouth corner, right mouth corner. Left and right are as
    seen in the image (image left = the person's right)."""
    p = np.asarray(points, np.float64)
    if p.shape == (68, 2):
        return p[36:42].mean(axis=0), p[42:48].mean(axis=0), p[48], p[54]
    if p.shape == (5, 2):
        return p[0], p[1], p[3], p[4]
    raise FaceCropError(f"landmarks must be 68 or 5 points (x, y), got an array of shape {p.shape}")


def ffhq_quad(eye_left, eye_right, mouth_left, mouth_right) -> tuple[np.ndarray, float]:
    """The FFHQ crop square: (quad (4, 2) corners top-left, bottom-left, bottom-right,
    top-right in source pixel coordinates, qsize its side length).

    Its half-side vector x points along the eyes, corrected by the eye-to-mouth direction
    (so the face is upright), with length max(2 |eye_to_eye|, 1.8 |eye_to_mouth|); y is x
    turned by 90 degrees; the centre sits a tenth of the way from the eyes to the mouth."""
    eye_left, eye_right = np.asarray(eye_left, np.float64), np.asarray(eye_right, np.float64)
    mouth_left, mouth_right = np.asarray(mouth_left, np.float64), np.asarray(mouth_right, np.float64)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


# ----------------------------------------------------------------------------- the transform
@dataclasses.dataclass(frozen=True)
class CropTransform:
    """How a crop was cut from its photo: enough to map a result back.

    source_size: (width, height) of the photo (after EXIF rotation when `exif` is True);
    quad: (4, 2) the crop's corners (top-left, bottom-left, bottom-right, top-right) in the
    photo's pixel coordinates; size: the crop's side; source: the photo's path and
    source_hash its pixels' hash (sources.content_hash), so that paste-back finds it and can
    tell when the file has changed."""
    source_size: tuple[int, int]
    quad: np.ndarray
    size: int
    source: str = ""
    source_hash: str = ""
    face_index: int = 0
    exif: bool = True
    landmarks: tuple = ()

    def crop_to_source(self, resolution: int) -> np.ndarray:
        """(2, 3) affine matrix: pixel (x, y) of a `resolution`-sized crop -> photo (x, y)."""
        q = np.asarray(self.quad, np.float64)
        ex, ey = (q[3] - q[0]) / resolution, (q[1] - q[0]) / resolution
        return np.array([[ex[0], ey[0], q[0, 0] + 0.5 * (ex[0] + ey[0])],
                         [ex[1], ey[1], q[0, 1] + 0.5 * (ex[1] + ey[1])]])

    def to_json(self) -> dict:
        return {"source": self.source, "source_hash": self.source_hash, "source_size": list(self.source_size),
                "quad": np.asarray(self.quad).tolist(), "size": self.size, "face_index": self.face_index,
                "exif": self.exif, "landmarks": [list(map(float, p)) for p in self.landmarks]}

    @classmethod
    def from_json(cls, data: dict) -> "CropTransform":
        quad = np.asarray(data["quad"], np.float64)
        if quad.shape != (4, 2) or not np.isfinite(quad).all():
            raise ValueError(f"a crop transform's quad must be 4 finite points, got shape {quad.shape}")
        return cls(tuple(int(v) for v in data["source_size"]), quad, int(data["size"]), data.get("source", ""),
                   data.get("source_hash", ""), int(data.get("face_index", 0)), bool(data.get("exif", True)),
                   tuple(tuple(p) for p in data.get("landmarks", ())))


def transform_path(crop_path) -> Path:
    """Where a crop's transform lives: {stem}.crop.json beside {stem}.png."""
    crop_path = Path(crop_path)
    return crop_path.with_name(crop_path.stem + ".crop.json")


def read_transform(crop_path) -> CropTransform:
    path = transform_path(crop_path)
    try:
        return CropTransform.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FaceCropError(f"{crop_path}: no crop transform ({path.name}) beside it; paste-back needs the "
                            "crop to come from `barbershop-jax align-faces` or `transfer --align`") from None
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as e:
        raise FaceCropError(f"{path}: not a crop transform ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- in: the crop
def crop_face(photo: np.ndarray, points, size: int = OFFICIAL_SIZE, *, min_face: float = MIN_FACE,
              what="photo") -> tuple[np.ndarray, CropTransform]:
    """The official FFHQ crop of one face. photo: uint8 (H, W, 3); points: its 68 or 5
    landmarks. Returns (crop (size, size, 3) uint8, transform)."""
    if size < 1 or size > TRANSFORM_SIZE:
        raise FaceCropError(f"crop size must be 1 to {TRANSFORM_SIZE}, got {size}")
    quad, qsize = ffhq_quad(*key_points(points))
    if not np.isfinite(quad).all():
        raise FaceCropError(f"{what}: landmarks give no crop (eyes and mouth coincide)")
    if qsize < min_face:
        raise FaceCropError(f"{what}: face too small: its crop square is {qsize:.0f} px wide in the photo, "
                            f"at least {min_face:.0f} needed")
    h, w = photo.shape[:2]
    _check_in_photo(quad, qsize, w, h, what)
    img = Image.fromarray(np.ascontiguousarray(photo, np.uint8), "RGB")
    quad_orig = quad.copy()

    # Shrink a photo much larger than the crop first (official: integer factor, LANCZOS).
    shrink = int(np.floor(qsize / OFFICIAL_SIZE * 0.5))
    if shrink > 1:
        rsize = (max(int(np.rint(float(w) / shrink)), 1), max(int(np.rint(float(h) / shrink)), 1))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
        # The true scale is w / rsize, not shrink: keep the quad the crop really samples.
        scale = np.array([w / rsize[0], h / rsize[1]])
        quad_orig = (quad + 0.5) * scale - 0.5

    # Crop to the quad plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))),
            int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]),
            min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    img, quad = _pad_outside(img, quad, qsize, border)

    # Sample the quad (Pillow's continuous coordinates put pixel centres at +0.5).
    img = img.transform((TRANSFORM_SIZE, TRANSFORM_SIZE), Image.Transform.QUAD, tuple((quad + 0.5).flatten()),
                        Image.Resampling.BILINEAR)
    first = OFFICIAL_SIZE if size <= OFFICIAL_SIZE else size
    img = img.resize((first, first), Image.Resampling.LANCZOS)
    if size != first:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    transform = CropTransform((w, h), quad_orig, size,
                              landmarks=tuple(tuple(map(float, p)) for p in np.asarray(points, np.float64)))
    return np.asarray(img), transform


def _pad_outside(img, quad, qsize: float, border: int):
    """(image, quad) padded where the quad leaves the photo, as the official: reflected, the
    padding blurred and faded to the median colour."""
    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))),
           int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - img.size[0] + border, 0),
           max(pad[3] - img.size[1] + border, 0))
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        ph, pw, _ = arr.shape
        yy, xx, _ = np.ogrid[:ph, :pw, :1]
        # Official float32 arithmetic; a zero pad side divides by zero there too (inf, then
        # clipped), so numpy's warnings are silenced rather than the formula changed.
        with np.errstate(divide="ignore", invalid="ignore"):
            mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(pw - 1 - xx) / pad[2]),
                              1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(ph - 1 - yy) / pad[3]))
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad += pad[:2]
    return img, quad


def _check_in_photo(quad, qsize: float, w: int, h: int, what) -> None:
    """Landmarks from a file can put the face anywhere: a crop square whose centre lies outside
    the photo, or one so large that the photo is a speck in it (MAX_CROP_TO_PHOTO times the
    photo's longer side), is no face of this photo (and its padding would be past any memory).
    A face near the photo's edge is fine: the official reflect-pads what its square leaves."""
    x, y = np.asarray(quad, np.float64).mean(axis=0)
    if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):  # pixel centres at integers
        raise FaceCropError(f"{what}: the landmarks put the face's centre at ({x:.0f}, {y:.0f}), outside the "
                            f"{w}x{h} photo")
    if qsize > MAX_CROP_TO_PHOTO * max(w, h):
        raise FaceCropError(f"{what}: the landmarks give a crop square {qsize:.0f} px wide, over "
                            f"{MAX_CROP_TO_PHOTO} times the {w}x{h} photo")


# ----------------------------------------------------------------------------- out: paste-back
def feathered_alpha(region, feather: float) -> np.ndarray:
    """A soft mask (R, R) float32 in [0, 1] from a region (R, R) bool in crop pixels: the
    region grown by `feather` pixels, then blurred with sigma feather / 2, so that it is 1 on
    the region and falls smoothly to 0 outside; it is also brought to 0 over `feather`
    pixels at the crop's edge, so that nothing outside the crop square is touched."""
    region = np.asarray(region, bool)
    r = max(int(round(feather)), 1)
    grown = scipy.ndimage.binary_dilation(region, iterations=r) if region.any() else region
    alpha = scipy.ndimage.gaussian_filter(grown.astype(np.float32), r / 2.0, mode="constant")
    alpha = np.maximum(alpha, region)  # the region itself stays fully replaced
    n = region.shape[0]
    ramp = np.clip((np.minimum(np.arange(n), np.arange(n)[::-1]) + 0.5) / r, 0.0, 1.0).astype(np.float32)
    return np.clip(alpha * ramp[:, None] * ramp[None, :], 0.0, 1.0)


def paste_back(photo: np.ndarray, result: np.ndarray, transform: CropTransform, alpha: np.ndarray) -> np.ndarray:
    """The photo with `result` (R, R, 3) uint8, a crop of it, mapped back by the inverse of
    the crop transform and blended in with `alpha` (R, R) in [0, 1] (`feathered_alpha`).
    Photo pixels where the mapped alpha is 0 are returned unchanged, bit for bit."""
    photo = np.asarray(photo, np.uint8)
    h, w = photo.shape[:2]
    if (w, h) != tuple(transform.source_size):
        raise FaceCropError(f"{transform.source or 'photo'}: is {w}x{h}, but the crop was cut from a "
                            f"{transform.source_size[0]}x{transform.source_size[1]} image")
    result = np.asarray(result, np.uint8)
    alpha = np.asarray(alpha, np.float32)
    res = result.shape[0]
    # Where the photo's face is smaller than the result, a plain bilinear warp would alias:
    # bring the result (and its mask) to about the photo's scale first.
    side = float(np.hypot(*(np.asarray(transform.quad[3]) - transform.quad[0])))
    if side < res:
        res = max(int(np.ceil(side)), 1)
        result = np.asarray(Image.fromarray(result).resize((res, res), Image.Resampling.LANCZOS))
        alpha = cv2.resize(alpha, (res, res), interpolation=cv2.INTER_AREA)
    matrix = transform.crop_to_source(res)
    # Only the quad's bounding box can change: warp into it, not into the whole photo.
    corners = np.asarray(transform.quad)
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 3, [w, h])
    if x1 <= x0 or y1 <= y0:
        return photo.copy()
    matrix = matrix - np.array([[0, 0, x0], [0, 0, y0]])
    box = (int(x1 - x0), int(y1 - y0))
    warped = cv2.warpAffine(result.astype(np.float32), matrix, box, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(alpha, matrix, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = photo.copy()
    patch = out[y0:y1, x0:x1]
    a = np.clip(a, 0.0, 1.0)[..., None]
    blended = np.rint(a * warped + (1.0 - a) * patch.astype(np.float32)).clip(0, 255).astype(np.uint8)
    out[y0:y1, x0:x1] = np.where(a > 0, blended, patch)
    return out


# ----------------------------------------------------------------------------- files
EDITED_REGIONS = ("hair", "skin", "nose", "eyeglasses", "eyes", "brows", "ears", "mouth", "upper_lip",
                  "lower_lip")


def edited_region(label_map, labels_before, labels_after) -> np.ndarray:
    """What paste-back replaces: the union of the old and the new hair with the face (both
    parses), as a bool map of the labels' shape."""
    ids = np.asarray(label_map.ids(*EDITED_REGIONS))
    return np.isin(labels_before, ids) | np.isin(labels_after, ids)


@dataclasses.dataclass
class CroppedFace:
    photo: Path
    crop_path: Path
    transform: CropTransform
    crop: np.ndarray


@dataclasses.dataclass
class FaceCropper:
    """Photo -> FFHQ crop(s), written as `{stem}.png` (or `{stem}_{i}.png` when the photo has
    several faces, as the official) with the transform in `{stem}.crop.json` beside it.

    landmarks: a backend (landmarks.Landmarks(); default: sidecar JSON, else dlib);
    face_index: which face of a photo with several (None: all of them for `crop`, and an
    error for `crop_one`); exif: honour EXIF orientation (the official does not)."""
    size: int = OFFICIAL_SIZE
    landmarks: object = None
    face_index: int | None = None
    min_face: float = MIN_FACE
    exif: bool = True

    def __post_init__(self):
        check_numbers("FaceCropper", size=self.size, min_face=self.min_face)
        if self.face_index is not None:
            check_numbers("FaceCropper", face_index=self.face_index)
        if self.landmarks is None:
            from barbershop_jax.pipeline.faces.landmarks import Landmarks
            self.landmarks = Landmarks()
        self._written: dict[str, Path] = {}  # crop name -> the photo it was cut from

    @classmethod
    def from_options(cls, size: int, landmarks=None, dlib_model=None, face_index=None,
                     min_face: float = MIN_FACE, exif: bool = True) -> "FaceCropper":
        """The cropper of the command-line options: landmarks from a JSON file (else sidecars,
        else dlib with `dlib_model`), the face of a photo to take, the smallest face allowed,
        the photo's EXIF orientation honoured or not (--no-exif)."""
        from barbershop_jax.pipeline.faces.landmarks import Landmarks
        return cls(size=size, landmarks=Landmarks(landmarks, dlib_model), face_index=face_index, min_face=min_face,
                   exif=exif)

    def _claim(self, name: str, photo_path: Path):
        """Two photos whose crops would have one name (same stem, different folders) would
        overwrite each other, and the later stages would take them for one image: refuse."""
        owner = self._written.setdefault(name, photo_path.resolve())
        if owner != photo_path.resolve():
            raise FaceCropError(f"{photo_path}: its crop would be named {name}.png, like the crop of {owner}; "
                                "rename one of them")

    def crop(self, photo_path, out_dir, *, one: bool = False) -> list[CroppedFace]:
        photo_path = Path(photo_path)
        pixels = image_io.load_rgb(photo_path, exif=self.exif)
        faces = self.landmarks(pixels, photo_path)
        if not faces:
            raise FaceCropError(f"{photo_path}: no face found")
        if self.face_index is not None:
            if not 0 <= self.face_index < len(faces):
                raise FaceCropError(f"{photo_path}: face index {self.face_index} asked for, but {len(faces)} "
                                    "face(s) found")
            chosen = [self.face_index]
        elif one and len(faces) > 1:
            raise FaceCropError(f"{photo_path}: {len(faces)} faces found; choose one with --face-index "
                                f"(0 to {len(faces) - 1}, in the landmark backend's order)")
        else:
            chosen = range(len(faces))
        source_hash = content_hash(pixels)
        names = {i: photo_path.stem + (f"_{i}" if len(faces) > 1 else "") for i in chosen}
        for name in names.values():
            self._claim(name, photo_path)
        out = []
        for i in chosen:
            what = f"{photo_path}" + (f" (face {i})" if len(faces) > 1 else "")
            try:
                crop, t = crop_face(pixels, faces[i], self.size, min_face=self.min_face, what=what)
            except FaceCropError:
                raise
            except (ValueError, MemoryError) as e:  # landmarks no check foresaw: this photo fails, not the batch
                raise FaceCropError(f"{what}: cannot crop the face ({type(e).__name__}: {e})") from None
            t = dataclasses.replace(t, source=str(photo_path.resolve()), source_hash=source_hash, face_index=i,
                                    exif=self.exif)
            crop_path = image_io.save_png(Path(out_dir) / f"{names[i]}.png", crop)
            # The transform is written last: its presence marks a finished crop.
            cache.save_json(transform_path(crop_path), t.to_json())
            out.append(CroppedFace(photo_path, crop_path, t, crop))
        return out

    def crop_one(self, photo_path, out_dir) -> CroppedFace:
        """The one face of a photo (or the face_index-th): an error when there are several."""
        return self.crop(photo_path, out_dir, one=True)[0]


def load_source_photo(transform: CropTransform, what="crop") -> np.ndarray:
    """The photo a crop was cut from, checked against the hash stored with the crop."""
    if not transform.source:
        raise FaceCropError(f"{what}: its crop transform does not name the source photo")
    photo = image_io.load_rgb(transform.source, exif=transform.exif)
    if transform.source_hash and content_hash(photo) != transform.source_hash:
        raise FaceCropError(f"{transform.source}: the photo has changed since {what} was cut from it")
    return photo


def crop_photos(cropper: FaceCropper, photos, out_dir, progress: bool = True):
    """`align-faces`: the crops of every photo; a photo without a usable face is left out, with
    its reason, and the others go on. Returns (crops, [((photo,), reason)]) (the command line
    prints each reason)."""
    from tqdm import tqdm

    from barbershop_jax.pipeline.faces.landmarks import LandmarkError, LandmarkModelError

    crops, failures = [], []
    for photo in tqdm(photos, desc="align faces", unit="photo", disable=not progress or len(photos) < 2):
        try:
            crops += cropper.crop(photo, out_dir)
        except LandmarkModelError:
            raise  # no photo can succeed: stop here
        except (FaceCropError, LandmarkError, image_io.ImageError) as e:
            failures.append(((photo,), str(e)))
    return crops, failures
