"""The loop every optimisation stage shares: one jitted step per image, vmapped over the batch,
run `chunk` steps at a time in `lax.scan` (no Python dispatch per step), sharded over the
local devices.

A stage supplies a module-level step function

    step(models, state, data, i, cfg) -> (state, metrics)

for ONE image: `models` are the frozen models (replicated), `state` and `data` hold that
image's optimisation state and inputs, `i` is the global step number (for noise keys) and `cfg`
a hashable config. Each image keeps its own optimiser state, so a batch gives the same numbers
as running each image alone. Compiled once per (step, cfg, shapes, chunking): later batches
and later calls reuse it; a config's `step_config()`, where it has one, blanks the fields the
step never reads (step counts, seed, chunk and unroll, the learning rate: data), so that changing
those does not recompile the step (the chunking is a static argument of its own).

A loop may have a stopping rule (`Convergence`, from its optimiser text's `stop` and `window`):
each image then carries a `Watch` of its last losses beside its state, its updates are masked
once it has stopped, and the loop ends early when every image has.

The loop itself touches no file, clock, signal or progress bar: the pipeline attaches those
through one `LoopHook` (pipeline/loop_hook.py), which a stage passes down to each of its loops.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from barbershop_jax.stages import rehearsal

log = logging.getLogger("barbershop_jax")
BATCH_AXIS = "batch"


class Loop(NamedTuple):
    """Which loop of a stage is running: `desc` for people ("Align step 2"), `part` for the
    loop's place among its stage's loops ("step2"; "" for a stage with one loop), and `rule`,
    its stopping rule (None: every image runs every step, as the official loops)."""
    desc: str
    part: str = ""
    rule: Convergence | None = None


class LoopHook:
    """What the pipeline adds to the loops of a stage: progress, checkpoints, stop requests and
    the devices to shard over. This base does nothing; the loop calls it

        state, done = hook.begin(loop, state, n_steps)    # a restored state, and its step
        hook.before_chunk(loop)                           # a chunk is about to be dispatched
        hook.after_chunk(loop, state_of, done, n_steps, metrics)
        hook.end(loop)                                    # also when the loop or begin raises

    `state_of()` gives the batch's state (without padding) on the host's default device;
    `metrics` are the last live step's, per image, still on the device. A hook may raise
    (a stop request) from begin and after_chunk. `within(part)` is the hook of a stage's
    loops below `part` (a stage that runs another's loops: the target mask's rounds)."""

    devices = None  # the devices to shard a batch over (None: every local device)

    def begin(self, loop: Loop, state, n_steps: int):
        return state, 0

    def before_chunk(self, loop: Loop) -> None:
        pass

    def after_chunk(self, loop: Loop, state_of, done: int, n_steps: int, metrics) -> None:
        pass

    def end(self, loop: Loop) -> None:
        pass

    def within(self, part: str) -> "LoopHook":
        return self


NO_HOOK = LoopHook()


class Convergence(NamedTuple):
    """A loop's stopping rule: an image stops once its loss has improved by less than the
    fraction `tolerance` over its last `window` steps (an optimiser text's `stop` and `window`:
    config.OptimizerSpec). In a batch each image stops on its own: its state is held from then
    on while the others go on, so that it ends as it ends alone; the loop ends when every image
    has stopped or the step count is reached."""
    tolerance: float
    window: int


class Watch(NamedTuple):
    """One image's stopping rule at work."""
    losses: jax.Array   # (window,) the loss of each of its last `window` steps, at step % window
    stopped: jax.Array  # (): bool
    steps: jax.Array    # (): int32, the steps it took


def _watch_start(n_images: int, rule: Convergence) -> Watch:
    return Watch(jnp.zeros((n_images, rule.window), jnp.float32), jnp.zeros((n_images,), bool),
                 jnp.zeros((n_images,), jnp.int32))


def _watched(watch: Watch, loss, live, rule: Convergence) -> Watch:
    """One image's watch after a step whose forward pass measured `loss` (live: the step ran)."""
    slot = watch.steps % rule.window
    before = watch.losses[slot]  # the loss `window` steps ago
    converged = (watch.steps >= rule.window) & (before - loss <= rule.tolerance * jnp.abs(before))
    losses = watch.losses.at[slot].set(loss.astype(jnp.float32))
    return Watch(jnp.where(live, losses, watch.losses), watch.stopped | (live & converged),
                 watch.steps + live.astype(jnp.int32))


def _per_image(mask, leaf):
    return mask.reshape(mask.shape + (1,) * (leaf.ndim - mask.ndim))


class Chunking(NamedTuple):
    """How a loop's steps are compiled: `length` steps per `lax.scan`, unrolled or rolled, and
    the stopping rule, if any (it is part of the program)."""
    length: int
    unroll: bool
    rule: Convergence | None = None


@rehearsal.program(static_argnames=("step", "cfg", "chunking"), donate_argnums=(1,))
def _run_chunk(models, state, data, start, n_steps, *, step, cfg, chunking: Chunking):
    """Steps start .. start + chunking.length - 1; those at or beyond n_steps leave the state as
    it is (the last chunk of a stage may be partly idle), so one compilation serves any step count.
    With a stopping rule (chunking.rule), `state` is (the batch's state, its Watch), and an
    image's steps after it stopped leave its state as it is too."""
    vstep = jax.vmap(step, in_axes=(None, 0, 0, None, None))
    rule = chunking.rule

    def body(carry, i):
        if rule is None:  # the program as it was before stopping rules
            new, metrics = vstep(models, carry, data, i, cfg)
            live = i < n_steps
            return jax.tree.map(lambda a, b: jnp.where(live, a, b), new, carry), metrics
        opt_state, watch = carry
        new, metrics = vstep(models, opt_state, data, i, cfg)
        live = (i < n_steps) & ~watch.stopped
        opt_state = jax.tree.map(lambda a, b: jnp.where(_per_image(live, a), a, b), new, opt_state)
        watch = jax.vmap(_watched, in_axes=(0, 0, 0, None))(watch, metrics["loss"], live, rule)
        return (opt_state, watch), metrics

    length = chunking.length
    state, metrics = jax.lax.scan(body, state, start + jnp.arange(length), unroll=length if chunking.unroll else 1)
    last = jnp.minimum(n_steps - start, length) - 1  # the last live step's metrics
    return state, jax.tree.map(lambda m: m[last], metrics)


def loop_defaults(platform: str | None = None) -> tuple[int, bool]:
    """(steps per chunk, unroll the chunk fully?) for a backend.

    Accelerators: 10 steps in a rolled `lax.scan` (10 divides every official step count:
    1100, 250, 80, 140, 100, 400, so no chunk runs idle steps; at 1024 px a chunk is about
    0.1 s of device time, against well under a millisecond of dispatch between chunks).
    CPU: 2 steps, unrolled. XLA:CPU runs convolutions inside a rolled loop body much slower than
    outside one, and a chunk of a single step runs slower still; two unrolled steps run as fast
    per step as four at 64 and 256 px and compile in less time, which is most of a cold run on
    a CPU (benchmarks/README.md, "Cold start").

    A config's `chunk` and `unroll` fields override these (`chunking_of`).
    """
    platform = platform or jax.default_backend()
    return (2, True) if platform == "cpu" else (10, False)


def chunking_of(cfg) -> Chunking:
    """The chunking of a stage's loops: its config's `chunk` and `unroll` where they are set
    (not None), the backend's defaults (`loop_defaults`) otherwise. Resolved before the chunk
    is traced and passed to it as a static argument, so each chunking is its own program."""
    default_length, default_unroll = loop_defaults()
    length, unroll = getattr(cfg, "chunk", None), getattr(cfg, "unroll", None)
    return Chunking(default_length if length is None else int(length),
                    default_unroll if unroll is None else bool(unroll))


def chunk_lengths(n_steps: int, chunk: int) -> list[int]:
    """The chunks of a stage: all of length `chunk` (one compilation), the last one idle after
    step n_steps. Returns the number of live steps of each."""
    if n_steps <= 0:
        return []
    full, rest = divmod(n_steps, chunk)
    return [chunk] * full + ([rest] if rest else [])


def batch_mesh(devices=None) -> Mesh | None:
    """A 1-D mesh over the local devices (None on a single device: nothing to shard)."""
    devices = jax.local_devices() if devices is None else devices
    if len(devices) <= 1:
        return None
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


_WARNED_PADDING: set = set()


def _warn_idle_devices(n_images: int, n_devices: int):
    """Once per (batch, device count): a batch that is not a multiple of the device count is
    padded with copies, so part of the devices compute nothing useful (--batch-size 4 on 8
    GPUs leaves half of them idle, and nothing else would say so)."""
    if n_images % n_devices and (n_images, n_devices) not in _WARNED_PADDING:
        _WARNED_PADDING.add((n_images, n_devices))
        padded = -(-n_images // n_devices) * n_devices
        log.warning("a batch of %d over %d devices runs as %d (%d copies): a batch size that is a multiple of "
                    "%d keeps every device busy", n_images, n_devices, padded, padded - n_images, n_devices)


def _pad_batch(tree, multiple):
    """Pad the leading axis to a multiple of `multiple` with copies of the last item."""
    n = jax.tree.leaves(tree)[0].shape[0]
    extra = (-n) % multiple
    if not extra:
        return tree, n
    return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]), tree), n


def run(step, cfg, models, state, data, n_steps: int, *, loop: Loop = Loop(""), hook: LoopHook | None = None):
    """Run `n_steps` of `step` on a batch.

    Args:
      step, cfg: the stage's per-image step function and its hashable config; the config's
        `chunk` and `unroll` (where it has them) say how the steps are compiled (`chunking_of`).
      models: frozen pytree shared by all images (models, statistics).
      state, data: pytrees with a leading batch axis.
      n_steps: total steps.
      loop: which loop this is (for the hook: its progress line and checkpoint).
      hook: the pipeline's LoopHook (progress, checkpoints, stop requests, devices), or None.
    Returns:
      (state, metrics of the last step), both with the batch axis, on the host's default
      device. Metrics are None when no step ran (a loop restored complete); with a stopping
      rule (loop.rule) they hold "steps", the steps each image took (counted from a restored
      checkpoint, where the rule starts again).
    """
    hook = NO_HOOK if hook is None else hook
    mesh = batch_mesh(hook.devices)
    # Settings the step never reads (step counts, seeds, chunking) must not recompile it.
    step_cfg = cfg.step_config() if hasattr(cfg, "step_config") else cfg
    chunks = chunking_of(cfg)._replace(rule=loop.rule)
    metrics = None
    try:  # from begin on: the hook's end always follows its begin
        state, done = hook.begin(loop, state, n_steps)
        done = min(done, n_steps)
        # The chunks donate the state: work on private copies, one buffer per leaf, so that the
        # caller's arrays survive and leaves that share a buffer are not donated twice.
        state = jax.tree.map(jnp.array, state)
        n_images = jax.tree.leaves(state)[0].shape[0]
        if loop.rule is not None:  # the chunks carry each image's Watch beside its state
            state = (state, _watch_start(n_images, loop.rule))
        if mesh is not None:
            (state, data), n_images = _pad_batch((state, data), mesh.size)
            _warn_idle_devices(n_images, mesh.size)
            shard = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
            state, data = jax.device_put((state, data), shard)
            models = jax.device_put(models, NamedSharding(mesh, PartitionSpec()))
        unpad = lambda x: x[:n_images]  # noqa: E731
        while done < n_steps:
            live = min(chunks.length, n_steps - done)
            hook.before_chunk(loop)
            state, metrics = _run_chunk(models, state, data, jnp.int32(done), jnp.int32(n_steps), step=step,
                                        cfg=step_cfg, chunking=chunks)
            # Rehearsed, one chunk compiles them all; stopped, every image has met its rule.
            done = n_steps if rehearsal.active() or _all_stopped(state, loop.rule) else done + live
            hook.after_chunk(loop, lambda: jax.tree.map(unpad, _opt_state(state, loop.rule)), done, n_steps, metrics)
    finally:
        hook.end(loop)
    if loop.rule is not None and metrics is not None:
        metrics = {**metrics, "steps": state[1].steps}
    return (jax.tree.map(unpad, _opt_state(state, loop.rule)),
            jax.tree.map(unpad, metrics) if metrics is not None else None)


def _opt_state(carry, rule):
    return carry if rule is None else carry[0]


def _all_stopped(carry, rule) -> bool:
    """Whether every image of the batch has stopped under the rule (its padding copies too)."""
    return rule is not None and bool(jnp.all(carry[1].stopped))


def image_key(seed: int, content_hash: str) -> jax.Array:
    """The PRNG key of one image: derived from the run's seed and the image's content, so an
    image draws the same noise whatever batch it is in."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), int(content_hash[:8], 16) & 0x7FFFFFFF)
