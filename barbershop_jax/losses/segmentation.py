"""The cross-entropy losses of Barbershop's alignment (losses/align_loss.py), per image.

`logits` (H, W, n_classes) from the parser's main head, `target` (H, W) class ids. PyTorch's
CrossEntropyLoss with class weights w and mean reduction is
sum_p w[t_p] * (-log softmax(logits_p)[t_p]) / sum_p w[t_p]; the official uses three:

- `cross_entropy`: no weights, the mean over all pixels (align steps, 'fidelity' inpainting);
- `cross_entropy_without`: weight 0 for one class (background): the mean over the pixels whose
  target is another class ('realistic' inpainting, first term);
- `cross_entropy_only`: weight 1 for one class only, with the target given as a boolean map
  `other` (the official passes ggg, 1 where face or hair is kept, as class ids 0/1): the mean
  of -log p(class) over the pixels where `other` is False ('realistic', second term).

With no pixel to average, PyTorch returns 0 / 0 = NaN; `guard_empty` returns 0 instead.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def nll(logits, target):
    """-log softmax(logits)[target] per pixel."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_p, target[..., None].astype(jnp.int32), axis=-1)[..., 0]


def weighted_mean(values, weights, guard_empty):
    """sum(values * weights) / sum(weights): PyTorch's weighted mean reduction."""
    total = jnp.sum(weights)
    if guard_empty:
        return jnp.where(total > 0, jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0), 0.0)
    return jnp.sum(values * weights) / total


def cross_entropy(logits, target):
    return jnp.mean(nll(logits, target))


def cross_entropy_without(logits, target, excluded: int, guard_empty: bool = True):
    weights = (target != excluded).astype(jnp.float32)
    return weighted_mean(nll(logits, target), weights, guard_empty)


def cross_entropy_only(logits, other, cls: int, guard_empty: bool = True):
    weights = jnp.logical_not(other).astype(jnp.float32)
    return weighted_mean(nll(logits, jnp.full(other.shape, cls, jnp.int32)), weights, guard_empty)
