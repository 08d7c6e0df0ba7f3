"""The p-norm statistics of a generator (PULSE's "P-norm" space): a PCA of
leaky_relu(mapping(z), slope 5) over random z, stored beside the generator's weights with the
official keys of `ffhq_PCA.npz`: X_mean (d,), X_comp (d, d) with one component per row,
X_stdev (d,) = sqrt(explained variance), X_var_ratio (d,). losses/p_norm.py is the loss."""
from __future__ import annotations

import jax
import numpy as np

from barbershop_jax.models.weights import ARRAY_FILE_ERRORS

PCA_KEYS = ("X_mean", "X_comp", "X_stdev", "X_var_ratio")
LEAKY_SLOPE = 5.0  # PULSE's inverse of the mapping network's 0.2 leaky ReLU


def to_p_space(w):
    return jax.nn.leaky_relu(w, LEAKY_SLOPE)


def pca_stats(model, n_samples: int, key, chunk: int = 50_000) -> dict:
    """PCA of the mapped latents in p-space, as the official build_PCA_model computes it
    (there with 1e6 samples and sklearn's IncrementalPCA keeping all d components, which is
    the exact PCA). Accumulated in float64 chunk by chunk, so memory stays flat."""
    d = model.config.style_dim
    chunk = min(chunk, n_samples)

    @jax.jit
    def mapped(model, k):  # the model an argument, not a closure: its weights stay out of the program
        return to_p_space(model.map(jax.random.normal(k, (chunk, d))))

    total = np.zeros(d)
    outer = np.zeros((d, d))
    seen = 0
    for i in range(-(-n_samples // chunk)):
        x = np.asarray(mapped(model, jax.random.fold_in(key, i)), np.float64)[: n_samples - seen]
        total += x.sum(0)
        outer += x.T @ x
        seen += len(x)
    mean = total / seen
    cov = (outer - seen * np.outer(mean, mean)) / (seen - 1)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval = np.clip(eigval[order], 0.0, None)
    return {"X_mean": mean.astype(np.float32),
            "X_comp": eigvec[:, order].T.astype(np.float32),
            "X_stdev": np.sqrt(eigval).astype(np.float32),
            "X_var_ratio": (eigval / eigval.sum()).astype(np.float32)}


def read_pca_file(path, style_dim: int) -> dict:
    """Read PCA statistics (an ffhq_PCA.npz, or the pca.npz of a weights folder; no pickle),
    checking keys, shapes and values: a damaged file is a ValueError naming it and what is
    wrong, at load rather than in the first loss."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stats = {k: np.asarray(z[k], np.float32) for k in z.files if k in PCA_KEYS}
    except ARRAY_FILE_ERRORS as e:
        raise ValueError(f"{path}: unreadable PCA file ({type(e).__name__}: {e})") from None
    want = {"X_mean": (style_dim,), "X_comp": (style_dim, style_dim), "X_stdev": (style_dim,)}
    for k, shape in want.items():
        if k not in stats:
            raise ValueError(f"{path}: PCA file lacks {k}")
        if stats[k].shape != shape:
            raise ValueError(f"{path}: {k} has shape {stats[k].shape}, expected {shape}")
    stats.setdefault("X_var_ratio", np.square(stats["X_stdev"]) / np.square(stats["X_stdev"]).sum())
    for k, v in stats.items():
        if not np.isfinite(v).all():
            raise ValueError(f"{path}: {k} holds NaN or infinity")
    return stats
