"""The p-norm latent regulariser of the embedding stages (PULSE's "P-norm" space).

    p_norm(w) = mean_{latents, components} ((leaky_relu(w, 5) - X_mean) @ X_comp.T / X_stdev)^2

The statistics are a PCA of leaky_relu(mapping(z), slope 5) over random z, stored with the
official keys of `ffhq_PCA.npz`: X_mean (d,), X_comp (d, d) with one component per row,
X_stdev (d,) = sqrt(explained variance), X_var_ratio (d,). The official code weights the
term by p_norm_lambda = 0.001; the caller applies the weight. The statistics themselves are
models/pca.py's: they are stored with the generator's weights.
"""
from __future__ import annotations

import jax.numpy as jnp

from barbershop_jax.models.pca import to_p_space

def p_norm_loss(w_plus, pca: dict):
    """Unweighted p-norm of latents (..., d); the mean over every latent and component."""
    x = (to_p_space(w_plus) - pca["X_mean"]) @ jnp.asarray(pca["X_comp"]).T / pca["X_stdev"]
    return jnp.mean(jnp.square(x))
