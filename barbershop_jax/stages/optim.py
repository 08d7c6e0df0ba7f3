"""The stages' optimisers, built from optax transforms. Each stage's is data: an optimiser text
of its config (`EmbedConfig.w_optimizer`, `TransferConfig.blend_optimizer`, ...; config.py's
OptimizerSpec), "adam" by default: Adam with torch.optim.Adam's defaults (b1 .9, b2 .999, eps
1e-8), as every official loop. The learning rate is injected as data
(optax.inject_hyperparams: it lives in the optimiser's state, so a new rate compiles nothing);
every other hyperparameter stays a Python constant, as in optax's own factories. A schedule
other than "constant" scales each update by its factor at the stage's step (the step count is
data too). Where a stage asks for one, optax's box projection of the parameters follows the
update (the official blend's ClampOptimizer clamps u to [0, 1] after every Adam step).

Each stage keeps per image an `OptState`; its step is

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = Optimizer(cfg.w_optimizer).apply(grads, state.opt_state, state.params)
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.projections

from barbershop_jax.config import DEFAULT_OPTIMIZER, OptimizerSpec, optimizer_spec
from barbershop_jax.stages.loop import Convergence


class OptState(NamedTuple):
    params: object     # what the optimiser moves
    opt_state: object  # the optimiser's state: moments, step count, learning rate
    result: object     # what the official loop saves (the params of the last forward pass, mostly)


class ScheduleState(NamedTuple):
    count: jax.Array   # updates made so far
    total: jax.Array   # the stage's step count: data, so that another count compiles nothing


def scale_by_stage_schedule(schedule: str, warmup: float, total_steps: int = 0) -> optax.GradientTransformation:
    """Each update times the schedule's factor at its step of a stage of `total_steps` (kept in
    the state): a linear rise over the first `warmup` fraction, then "constant" 1, or a
    "cosine" or "linear" decay that reaches 0 one step after the last. optax's own schedules take the step
    count as a Python number, which would make every step count its own program."""
    def init(params):
        del params
        return ScheduleState(jnp.zeros([], jnp.int32), jnp.asarray(total_steps, jnp.int32))

    def update(updates, state, params=None):
        del params
        step, total = state.count.astype(jnp.float32), jnp.maximum(state.total, 1).astype(jnp.float32)
        rise = jnp.maximum(warmup * total, 1.0)
        factor = jnp.minimum(1.0, (step + 1.0) / rise) if warmup else jnp.float32(1.0)
        start = rise if warmup else 0.0
        progress = jnp.clip((step - start) / jnp.maximum(total - start, 1.0), 0.0, 1.0)
        if schedule == "cosine":
            factor = factor * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        elif schedule == "linear":
            factor = factor * (1.0 - progress)
        updates = jax.tree.map(lambda u: (u * factor).astype(u.dtype), updates)
        return updates, ScheduleState(state.count + 1, state.total)

    return optax.GradientTransformation(init, update)


@functools.lru_cache(maxsize=None)
def _factory(name: str):
    """optax.<name> with its learning rate injected as data and every other argument static:
    Adam's b1, b2 and eps stay Python constants, as in optax.adam (injected as float32 arrays,
    they change the bias correction in the last bit, and the official Adam no longer holds bit
    for bit)."""
    factory = getattr(optax, name)
    static = tuple(p for p in inspect.signature(factory).parameters if p != "learning_rate")
    return optax.inject_hyperparams(factory, static_args=static)


def transform(spec: OptimizerSpec, learning_rate: float, total_steps: int = 0) -> optax.GradientTransformation:
    """The optax transform of `spec` (its schedule chained after it when not constant)."""
    inner = _factory(spec.name)(learning_rate=learning_rate, **dict(spec.hyperparams))
    if spec.schedule == "constant" and not spec.warmup:
        return inner
    return optax.chain(inner, scale_by_stage_schedule(spec.schedule, spec.warmup, total_steps))


@functools.lru_cache(maxsize=None)
def _spec(text: str) -> OptimizerSpec:
    return optimizer_spec(text)  # parsed once per text: every traced step asks


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A stage's optimiser: `text` (an optimiser text, "adam" by default), then the projection
    onto [lower, upper] when `box` is (lower, upper)."""
    text: str = DEFAULT_OPTIMIZER
    box: tuple | None = None

    @property
    def spec(self) -> OptimizerSpec:
        return _spec(self.text)

    @property
    def rule(self) -> Convergence | None:
        """The loop's stopping rule (the text's `stop` and `window`), or None."""
        spec = self.spec
        return None if spec.stop is None else Convergence(spec.stop, spec.window)

    def init(self, params, learning_rate: float, total_steps: int = 0):
        """The optimiser state of a batch of params (leading axis: one state per image). The
        text's own learning rate, where it sets one, wins over `learning_rate`."""
        spec = self.spec
        rate = learning_rate if spec.learning_rate is None else spec.learning_rate
        return jax.vmap(transform(spec, rate, total_steps).init)(params)

    def apply(self, grads, opt_state, params):
        """One update of one image's params: (new params, new optimiser state). The learning
        rate and the step count are the ones in `opt_state` (those given here are placeholders)."""
        updates, opt_state = transform(self.spec, 0.0).update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if self.box is not None:
            params = optax.projections.projection_box(params, *self.box)
        return params, opt_state

    def start(self, params, learning_rate: float, result=None, total_steps: int = 0) -> OptState:
        """A batch's first OptState; `result` defaults to the params; `total_steps`: the stage's
        step count (what a schedule decays over)."""
        return OptState(params, self.init(params, learning_rate, total_steps),
                        params if result is None else result)


ADAM = Optimizer()  # the official optimiser of every stage
