"""The stages' optimiser, built from optax transforms: Adam with torch.optim.Adam's defaults
(b1 .9, b2 .999, eps 1e-8), its learning rate injected as data (optax.inject_hyperparams: it
lives in the optimiser's state, so a new rate compiles nothing), and, where a stage asks for
one, optax's box projection of the parameters after each update (the official blend's
ClampOptimizer clamps u to [0, 1] after every Adam step).

Each stage keeps per image an `OptState`; its step is

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = optimizer.apply(grads, state.opt_state, state.params)
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import optax
import optax.projections


class OptState(NamedTuple):
    params: object     # what the optimiser moves
    opt_state: object  # Adam's moments, step count and learning rate
    result: object     # what the official loop saves (the params of the last forward pass, mostly)


def _adam(learning_rate) -> optax.GradientTransformation:
    # Only the rate is data: b1, b2 and eps stay Python constants, as in optax.adam (injected as
    # float32 arrays, they change the bias correction in the last bit).
    return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))(learning_rate=learning_rate)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """Adam, then the projection onto [lower, upper] when `box` is (lower, upper)."""
    box: tuple | None = None

    def init(self, params, learning_rate: float):
        """The optimiser state of a batch of params (leading axis: one state per image)."""
        return jax.vmap(_adam(learning_rate).init)(params)

    def apply(self, grads, opt_state, params):
        """One update of one image's params: (new params, new optimiser state). The learning
        rate is the one in `opt_state` (the rate given here is a placeholder)."""
        updates, opt_state = _adam(0.0).update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if self.box is not None:
            params = optax.projections.projection_box(params, *self.box)
        return params, opt_state

    def start(self, params, learning_rate: float, result=None) -> OptState:
        """A batch's first OptState; `result` defaults to the params."""
        return OptState(params, self.init(params, learning_rate), params if result is None else result)


ADAM = Optimizer()  # W+, FS, the segmentation fits (target mask, align step 1) and align step 2
