"""The store of results, content-addressed: no image is embedded twice, no pair aligned twice.

Files use the official layout (layout.py), so official latents can be read and ours used by
the official code:

    DIR/W+/{name}.npy    (1, n_latent, style_dim) float32
    DIR/FS/{name}.npz    latent_in (1, n_latent, style_dim), latent_F (1, C, r, r) in NCHW

Official outputs can be adopted as entries (`import_official`, `embed --import-official`).
Beside each, `{name}.json` records the key the file was made under: a hash of the image's
pixels, the weights and every setting that changes the result. An entry counts only when its
key matches and its arrays load with the expected shapes; otherwise it is recomputed. An
entry whose key is there but whose files do not read (truncated, other shapes or dtype, NaN)
is damaged: one warning names the file, its key is removed, and it is recomputed. Arrays
are written first and the JSON last, each atomically (temporary file, then rename), so an
interrupted run never leaves an entry that looks finished. The alignments and blends keep
their keys the same way (`stage_key`, pipeline/align.py and blend.py), and their target
label maps beside them (`save_labels`). Every path comes from layout.py.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from PIL import Image

from barbershop_jax.config import DEFAULT_OPTIMIZER, DEFAULT_REGION, OPTIMIZER_FIELDS
from barbershop_jax.models.bisenet import LabelMap
from barbershop_jax.models.weights import ARRAY_FILE_ERRORS
from barbershop_jax.pipeline.store.layout import FS_DIR, W_DIR, Layout
from barbershop_jax.pipeline.files.image_files import IMAGE_FILE_ERRORS, atomic_write, save_png
from barbershop_jax.stages.target_mask import check_target, palette

log = logging.getLogger("barbershop_jax")

W_FIELDS = ("w_steps", "learning_rate", "l2_lambda", "percept_lambda", "p_norm_lambda",
            "lpips_size", "noise", "seed", "w_optimizer")
FS_FIELDS = W_FIELDS + ("fs_steps", "l_f_lambda", "fs_block", "fs_optimizer")


def settings_of(cfg, fields) -> dict:
    """The `fields` of a config that a cache key holds. An optimiser field only when it is not
    the official Adam: a result made with another optimiser never passes for an official one,
    and the keys of earlier runs stay as they were."""
    return {f: getattr(cfg, f) for f in fields
            if not (f.endswith("_optimizer") and getattr(cfg, f) == DEFAULT_OPTIMIZER)}


def optimizers_of(*configs) -> dict:
    """{field: optimiser text} of every optimiser field of `configs`: what an entry's JSON
    records, so that a result says which optimisers made it."""
    return {f: getattr(cfg, f) for cfg in configs for f in OPTIMIZER_FIELDS if hasattr(cfg, f)}



def tree_fingerprint(tree) -> str:
    """sha256 over every array of a pytree (weights, statistics), in tree order, and over the
    models' non-default numerics (a bfloat16 compute dtype, a convolution precision), which
    change the results without changing the arrays. Default float32 models hash their arrays
    alone, so the keys of earlier runs stay valid."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    for tag in _numerics(tree):
        h.update(tag.encode())
    return h.hexdigest()


def _numerics(tree) -> list[str]:
    models = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: hasattr(x, "config"))
    tags = []
    for m in models:
        config = getattr(m, "config", None)
        for field, default in (("dtype", "float32"), ("precision", None)):
            value = getattr(config, field, default)
            if value != default:
                tags.append(f"{type(m).__name__}.{field}={value}")
    return tags


def _key(kind: str, image_hash: str, weights: str, cfg, fields) -> str:
    settings = settings_of(cfg, fields)
    blob = json.dumps({"kind": kind, "image": image_hash, "weights": weights, "settings": settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def save_npy(path: Path, array):
    atomic_write(path, lambda f: np.save(f, np.asarray(array, np.float32), allow_pickle=False))


def save_npz(path: Path, **arrays):
    atomic_write(path, lambda f: np.savez(f, **{k: np.asarray(v, np.float32) for k, v in arrays.items()}))


def save_json(path: Path, data: dict):
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=1, sort_keys=True) + "\n").encode()))


def key_matches(path: Path, key: str) -> bool:
    """Whether the JSON beside `path` records `key` (a missing or damaged JSON: no)."""
    try:
        return json.loads(Path(path).with_suffix(".json").read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def load_array(path: Path, array, shape) -> np.ndarray:
    """`array` (read from `path`) as float32 if it is a float array of `shape` with finite
    values; otherwise a ValueError naming the file and what is wrong."""
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{path}: holds {array.dtype} values, not floats")
    if array.shape != tuple(shape):
        raise ValueError(f"{path}: shape {array.shape}, expected {tuple(shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: holds NaN or infinity")
    return array.astype(np.float32, copy=False)


def load_npy(path: Path, shape) -> np.ndarray:
    """A W+ file (1, *shape) as (shape) float32; a ValueError naming the file if it is missing,
    does not load, or has another shape, dtype or a non-finite value."""
    try:
        array = np.load(path, allow_pickle=False)
    except ARRAY_FILE_ERRORS as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise ValueError(f"{path}: an npz archive, not an npy array")
    return load_array(path, array, (1, *shape))[0]


LATENT_KEYS = ("latent_in", "latent_F")  # the official npz's arrays


def load_latents_npz(path: Path, latent_shape, f_shape_nhwc):
    """An official FS/Align/Blend npz as (latent_in (n_latent, d), F (r, r, C) NHWC); a
    ValueError naming the file if it is missing, does not load, lacks a key, or has other
    shapes, dtypes or a non-finite value."""
    r, _, c = f_shape_nhwc
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise TypeError("an npy array, not an npz archive")
        with loaded as z:
            arrays = {k: z[k] for k in LATENT_KEYS if k in z.files}
    except (*ARRAY_FILE_ERRORS, TypeError) as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    missing = [k for k in LATENT_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(missing)} in it")
    latent_in = load_array(f"{path}[latent_in]", arrays["latent_in"], (1, *latent_shape))
    latent_f = load_array(f"{path}[latent_F]", arrays["latent_F"], (1, c, r, r))
    return latent_in[0], latent_f[0].transpose(1, 2, 0)


def read_latents_npz(path: Path, latent_shape, f_shape_nhwc):
    """`load_latents_npz`, or None when the file cannot be used."""
    try:
        return load_latents_npz(path, latent_shape, f_shape_nhwc)
    except ValueError:
        return None


def read_entry(path: Path, key: str, read):
    """`read(path)`: what the finished entry at `path` holds when it was made under `key`,
    else None. `read` raises a ValueError naming the file when a file of the entry does not
    read or holds wrong values: the entry is damaged. Then one warning names that file, and
    the entry's key is removed (so that it is recomputed, and not warned about again)."""
    if not key_matches(path, key):
        return None
    try:
        return read(path)
    except (ValueError, OSError) as e:
        log.warning("%s; the cache entry is damaged and is recomputed", e)
        Path(path).with_suffix(".json").unlink(missing_ok=True)
        return None


def save_latents_npz(path: Path, latent_in, structure_f):
    """Write (latent_in (n_latent, d), F (r, r, C) NHWC) in the official npz form (NCHW F)."""
    save_npz(path, latent_in=np.asarray(latent_in)[None], latent_F=np.asarray(structure_f).transpose(2, 0, 1)[None])


@dataclasses.dataclass
class EmbeddingCache:
    """Lookup and storage of W+ and FS codes under `root`, for one set of weights."""
    root: Path
    weights: str                      # tree_fingerprint of generator, VGG and PCA statistics

    def __post_init__(self):
        self.root = Path(self.root)

    # --- keys
    def w_key(self, image_hash, cfg):
        return _key("W+", image_hash, self.weights, cfg, W_FIELDS)

    def fs_key(self, image_hash, cfg):
        return _key("FS", image_hash, self.weights, cfg, FS_FIELDS)

    # --- W+
    def get_w_plus(self, name, image_hash, cfg, shape):
        """The cached W+ (n_latent, style_dim) or None."""
        path = Layout(self.root).w_plus(name)
        return read_entry(path, self.w_key(image_hash, cfg), lambda p: load_npy(p, shape))

    def put_w_plus(self, name, image_hash, cfg, w_plus, image_png=None, extra=None):
        path = Layout(self.root).w_plus(name)
        self._start(path)
        save_npy(path, np.asarray(w_plus)[None])
        extra = {"optimizers": {"w_optimizer": cfg.w_optimizer}, **(extra or {})}
        self._finish(path, self.w_key(image_hash, cfg), name, image_hash, image_png, extra)

    # --- FS
    def get_fs(self, name, image_hash, cfg, latent_shape, f_shape_nhwc):
        """The cached (latent_in (n_latent, d), structure_f (r, r, C) NHWC) or None."""
        path = Layout(self.root).fs(name)
        return read_entry(path, self.fs_key(image_hash, cfg),
                          lambda p: load_latents_npz(p, latent_shape, f_shape_nhwc))

    def put_fs(self, name, image_hash, cfg, latent_in, structure_f, image_png=None, extra=None):
        path = Layout(self.root).fs(name)
        self._start(path)
        save_latents_npz(path, latent_in, structure_f)
        extra = {"optimizers": optimizers_of(cfg), **(extra or {})}
        self._finish(path, self.fs_key(image_hash, cfg), name, image_hash, image_png, extra)

    # --- import
    def import_official(self, src_root, name, image_hash, cfg, latent_shape, f_shape_nhwc) -> list[str]:
        """Adopt official outputs (src_root/W+/{name}.npy, src_root/FS/{name}.npz) as this
        image's entries under the current settings. Returns the stages imported. A file that
        is not there is not imported; one that does not load, or has other shapes or a
        non-finite value, is named in a warning and not imported either: the image is then
        embedded, as it would be without the official folder."""
        src_root, done = Path(src_root), []
        meta = {"imported_from": str(src_root)}
        w_file, fs_file = Layout(src_root).w_plus(name), Layout(src_root).fs(name)
        w = _importable(w_file, lambda p: load_npy(p, latent_shape))
        if w is not None:
            self.put_w_plus(name, image_hash, cfg, w, extra=meta)
            done.append(W_DIR)
        fs = _importable(fs_file, lambda p: load_latents_npz(p, latent_shape, f_shape_nhwc))
        if fs is not None:
            self.put_fs(name, image_hash, cfg, *fs, extra=meta)
            done.append(FS_DIR)
        return done

    # --- helpers
    @staticmethod
    def _start(path: Path):
        """Drop the old key first: arrays half-replaced must never sit beside a valid key."""
        path.with_suffix(".json").unlink(missing_ok=True)

    def _finish(self, path: Path, key, name, image_hash, image_png, extra=None):
        if image_png is not None:
            save_png(path.with_suffix(".png"), image_png)
        save_json(path.with_suffix(".json"), {"key": key, "name": name, "image_sha256": image_hash,
                                              "weights": self.weights, **(extra or {})})


def _importable(path: Path, read):
    """`read(path)` of an official file, or None: silently when there is no such file, with
    one warning naming it when it is there but cannot be used."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except (ValueError, OSError) as e:
        log.warning("%s; not imported, the image is embedded instead", e)
        return None


# ----------------------------------------------------------------------------- reuse
REUSE_KINDS = ("W+", "FS", "alignment", "blend")  # the finished entries a run can find in OUT


@dataclasses.dataclass
class Reuse:
    """Which finished entries of the output folder a run may reuse, and which it did: what a
    re-run into the same folder skipped is said, not silent (`note`).

    fresh: redo the entries that earlier runs left; reuse only those this run made (one face
    of many triples is still embedded once). An interrupted loop's checkpoint (OUT/.resume/)
    is resumed either way: it gives the same numbers as a run from the start."""
    fresh: bool = False
    made: set = dataclasses.field(default_factory=set)  # keys this run wrote (shared by its pipelines)
    reused: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # kind -> n from OUT
    computed: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # kind -> n done

    def allows(self, key: str) -> bool:
        """Whether the entry under `key`, if the folder holds it, may be used."""
        return not self.fresh or key in self.made

    def finds(self, path: Path, key: str) -> bool:
        """Whether the folder holds a finished entry at `path` under `key` that may be used
        (its JSON key alone is read: the plan's counts, the rehearsal's check)."""
        return self.allows(key) and key_matches(path, key)

    def found(self, kind: str, key: str):
        """An entry was used: counted as reused unless this run made it."""
        if key not in self.made:
            self.reused[kind] += 1

    def making(self, kind: str, keys):
        """Entries about to be computed (and written under these keys)."""
        keys = list(keys)
        self.computed[kind] += len(keys)
        self.made.update(keys)

    def share(self) -> "Reuse":
        """A Reuse with its own counts and this one's `fresh` and `made` (one per pipeline)."""
        return Reuse(self.fresh, self.made)

    def add(self, other: "Reuse"):
        self.reused.update(other.reused)
        self.computed.update(other.computed)

    def note(self, out_dir, fresh_flag: str = "--fresh") -> str | None:
        """'reused from OUT/: 4 W+ embeddings, 4 FS, 1 alignment, 1 blend; --fresh to redo
        them', or None when nothing was reused."""
        words = {"W+": ("W+ embedding", "W+ embeddings"), "FS": ("FS", "FS"),
                 "alignment": ("alignment", "alignments"), "blend": ("blend", "blends")}
        parts = [f"{n} {words.get(kind, (kind, kind))[n != 1]}" for kind in (*REUSE_KINDS, *sorted(
            set(self.reused) - set(REUSE_KINDS))) if (n := self.reused.get(kind, 0))]
        if not parts:
            return None
        return f"reused from {Path(out_dir)}/: {', '.join(parts)}; {fresh_flag} to redo them"


# ----------------------------------------------------------------------------- weights
class _EmbeddingWeights(NamedTuple):  # the fields, and so the keys, of earlier versions' Consts
    generator: object
    vgg: object
    pca: dict


class _TransferWeights(NamedTuple):  # likewise: the transfer's models without the statistics
    generator: object
    parser: object
    vgg: object


def embedding_weights(models) -> str:
    """The fingerprint of what an embedding depends on (generator, VGG16, p-norm statistics),
    as the keys of earlier versions computed it: their caches stay valid."""
    return tree_fingerprint(_EmbeddingWeights(models.generator, models.vgg, models.pca))


def transfer_weights(models) -> str:
    """The fingerprint of every model of a transfer (the alignments' and blends' keys)."""
    return tree_fingerprint((_TransferWeights(models.generator, models.parser, models.vgg), models.pca))


# ----------------------------------------------------------------------------- transfer entries
ALIGN_FIELDS = ("sign", "smooth", "learning_rate", "ce_lambda", "style_lambda", "inpaint_steps", "align_steps1",
                "align_steps2", "align_latents", "align_more_region", "parse_size", "loss_size", "guard_empty",
                "noise", "seed", "inpaint_optimizer", "align_optimizer")
BLEND_FIELDS = ("learning_rate", "face_lambda", "hair_lambda", "blend_steps", "blend_smooth", "blend_parse_size",
                "parse_size", "loss_size", "guard_empty", "noise", "seed", "blend_optimizer")


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def stage_key(kind, hashes, weights, embed_cfg, cfg, fields, edit: str = "") -> str:
    """The key of an alignment or blend: its images, weights, embedding settings, its own
    settings (`fields` of the TransferConfig) and target-mask edit."""
    settings = settings_of(cfg, fields)
    if cfg.region != DEFAULT_REGION:  # only then: the keys of hair transfers stay as they were
        settings["region"] = cfg.region
    embed_settings = settings_of(embed_cfg, FS_FIELDS)
    blob = {"kind": kind, "images": list(hashes), "weights": weights, "embedding": embed_settings,
            "settings": settings}
    if edit:  # only when there is one, so that the keys of unedited runs stay as they were
        blob["edit"] = edit
    return digest(json.dumps(blob, sort_keys=True))


def save_labels(path: Path, labels):
    """A target label map as an 8-bit grey PNG (grey level = class id)."""
    atomic_write(path, lambda f: Image.fromarray(np.asarray(labels, np.uint8), "L").save(f, format="PNG"))


def load_labels(path: Path, size: int, n_classes: int) -> np.ndarray:
    """A target label map that save_labels wrote, (size, size) int32 class ids below
    `n_classes`; a ValueError naming the file if it is missing, does not read or holds
    anything else."""
    try:
        with Image.open(path) as im:
            labels = np.asarray(im).astype(np.int32)
    except IMAGE_FILE_ERRORS as e:
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if labels.shape != (size, size):
        raise ValueError(f"{path}: a label map of shape {labels.shape}, expected {(size, size)}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= n_classes:
        raise ValueError(f"{path}: class ids outside 0 to {n_classes - 1}")
    return labels


def read_labels(path: Path, size: int):
    """The label map at `path` ((size, size) int32), or None when it cannot be used."""
    try:
        return load_labels(path, size, 256)
    except ValueError:
        return None


def save_label_png(path, labels, n_classes: int):
    """A label map (P, P) as an indexed PNG: pixel values are the class ids (read back exactly)
    and the palette shows them in the official colours."""
    labels = np.asarray(labels)
    im = Image.fromarray(labels.astype(np.uint8), "P")
    im.putpalette(palette(max(n_classes, 16)).reshape(-1).tolist())
    return atomic_write(path, lambda f: im.save(f, format="PNG"))


def read_label_png(path, label_map: LabelMap, size: int) -> np.ndarray:
    """A target mask given by the user (an indexed PNG as save_label_png writes it, or an 8-bit
    grey PNG of class ids), checked: readable, size x size, only the checkpoint's classes."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            labels = np.asarray(im).astype(np.int32) if mode in ("P", "L") else None
    except FileNotFoundError:
        raise ValueError(f"{path}: no such target mask") from None
    except IMAGE_FILE_ERRORS as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    if labels is None:
        raise ValueError(f"{path}: a {mode} image, not a label map (an indexed or grey PNG whose "
                         "values are class ids, as --save-target-mask writes it)")
    return check_target(labels, label_map, size, path)
