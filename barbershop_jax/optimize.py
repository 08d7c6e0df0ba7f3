"""The loop every optimisation stage shares: one jitted step per image, vmapped over the batch,
run `chunk` steps at a time in `lax.scan` (no Python dispatch per step), sharded over the
local devices, with a progress bar between chunks.

A stage supplies a module-level step function

    step(consts, state, data, i, cfg) -> (state, metrics)

for ONE image: `consts` are the frozen models (replicated), `state` and `data` hold that
image's optimisation state and inputs, `i` is the global step number (for noise keys) and `cfg`
a hashable config. Each image keeps its own optimiser state, so a batch gives the same numbers
as running each image alone. Compiled once per (step, cfg, shapes, chunk length): later batches
and later calls reuse it; a config's `step_config()`, where it has one, blanks the fields the
step never reads (step counts, seed, chunk), so that changing those does not recompile.
"""
from __future__ import annotations

import collections
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from barbershop_jax import compile_cache

log = logging.getLogger("barbershop_jax")
BATCH_AXIS = "batch"
LOOP_ENV = "BARBERSHOP_JAX_LOOP"


@compile_cache.jit(static_argnames=("step", "cfg", "length", "unroll"), donate_argnums=(1,))
def _run_chunk(consts, state, data, start, n_steps, *, step, cfg, length, unroll=1):
    """Steps start .. start + length - 1; those at or beyond n_steps leave the state as it is
    (the last chunk of a stage may be partly idle), so one compilation serves any step count."""
    vstep = jax.vmap(step, in_axes=(None, 0, 0, None, None))

    def body(carry, i):
        new, metrics = vstep(consts, carry, data, i, cfg)
        live = i < n_steps
        return jax.tree.map(lambda a, b: jnp.where(live, a, b), new, carry), metrics

    state, metrics = jax.lax.scan(body, state, start + jnp.arange(length), unroll=unroll)
    last = jnp.minimum(n_steps - start, length) - 1  # the last live step's metrics
    return state, jax.tree.map(lambda m: m[last], metrics)


def loop_defaults(platform: str | None = None) -> tuple[int, bool]:
    """(steps per chunk, unroll the chunk fully?) for a backend.

    Accelerators: 10 steps in a rolled `lax.scan` (10 divides every official step count:
    1100, 250, 80, 140, 100, 400, so no chunk runs idle steps; at 1024 px a chunk is about
    0.1 s of device time, against well under a millisecond of dispatch between chunks).
    CPU: 4 steps, unrolled, because XLA:CPU runs convolutions inside a loop body 2.5x slower
    than the same step outside one (measured on 2 cores: a 64 px W+ step took 1,435 ms in a
    rolled scan, 574 ms unrolled); a 4-step unrolled chunk costs 4x the compile time of one
    step and saves most of that loss.

    BARBERSHOP_JAX_LOOP="CHUNK,rolled" or "CHUNK,unrolled" overrides both (tuning, and tests,
    which compile many stages and run few steps: rolled chunks compile faster).
    """
    override = os.environ.get(LOOP_ENV)
    if override:
        chunk, _, mode = override.partition(",")
        try:
            if int(chunk) < 1 or mode not in ("rolled", "unrolled"):
                raise ValueError
        except ValueError:
            raise ValueError(f"{LOOP_ENV}={override!r}: expected CHUNK,rolled or CHUNK,unrolled "
                             "(e.g. 4,rolled)") from None
        return int(chunk), mode == "unrolled"
    platform = platform or jax.default_backend()
    return (4, True) if platform == "cpu" else (10, False)


def check_counts(owner: str, minimum: int = 0, **values):
    """ValueError naming `owner` and the field unless every value is a whole number (not a
    bool) of at least `minimum`: step counts (0 skips a stage), batch sizes (minimum 1), chunk
    lengths. Checked before any work: a negative batch size once ran nothing and reported
    success, a negative step count silently skipped its stage."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{owner}: {name} must be a whole number of at least {minimum}, got {value!r}")


_RAN_BATCH_SIZES: set = set()  # (stage, batch size) run in this process: their programs are compiled


def batches(items: list, batch_size: int, stage: str):
    """The batches of a stage whose programs compile once per batch size. Yields (real,
    padded): `padded` repeats the last item until the batch has the size that runs. That is
    batch_size when the items fill more than one batch, or when a batch of that size has run
    before in this process (a short last batch, or a later single item, then reuses the
    compiled programs instead of compiling new ones); otherwise the items' own number (a
    single small run computes no padding). Callers keep the results of `real` only."""
    check_counts(stage, 1, batch_size=batch_size)
    items = list(items)
    for i in range(0, len(items), batch_size):
        real = items[i:i + batch_size]
        size = len(real)
        if size < batch_size and (len(items) > batch_size or (stage, batch_size) in _RAN_BATCH_SIZES):
            size = batch_size
        _RAN_BATCH_SIZES.add((stage, size))
        yield real, real + [real[-1]] * (size - len(real))


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


def waves(n_items: int, wave: int, unit: str):
    """(start, stop) of each wave of a long run (api.embed_files, HairTransfer.transfer_files),
    with a line per wave when there are several (log_wave)."""
    check_counts(f"waves of {unit}", 1, wave=wave)
    started, n_waves = time.time(), -(-n_items // wave)
    for k, start in enumerate(range(0, n_items, wave), 1):
        stop = min(start + wave, n_items)
        if n_waves > 1:
            log_wave(k, n_waves, start + 1, stop, n_items, unit, started)
        yield start, stop


def log_wave(k: int, n_waves: int, first: int, last: int, total: int, unit: str, started: float):
    """One line per wave of a long run (the stage bars span one wave): its place, and from the
    second wave on the time left by the average wave so far (about: later waves find more of
    their images embedded already)."""
    left = ""
    if k > 1:
        seconds = (time.time() - started) / (k - 1) * (n_waves - k + 1)
        hours, minutes = divmod(round(seconds / 60), 60)
        left = f"; about {f'{hours} h ' if hours else ''}{minutes} min left"
    log.info("wave %d of %d: %s %d to %d of %d%s", k, n_waves, unit, first, last, total, left)


def _pad_batch(tree, multiple):
    """Pad the leading axis to a multiple of `multiple` with copies of the last item."""
    n = jax.tree.leaves(tree)[0].shape[0]
    extra = (-n) % multiple
    if not extra:
        return tree, n
    return jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]), tree), n


def run(step, cfg, consts, state, data, n_steps: int, *, chunk: int | None = None, desc: str = "",
        progress=True, devices=None, summary=None, checkpoint=None):
    """Run `n_steps` of `step` on a batch.

    Args:
      step, cfg: the stage's per-image step function and its hashable config.
      consts: frozen pytree shared by all images (models, statistics).
      state, data: pytrees with a leading batch axis.
      n_steps: total steps; chunk: steps per compiled scan (default: `loop_defaults`).
      desc: progress-bar label; progress: show a bar for this loop (tqdm, to stderr), or a
        StageProgress: advance the bar of the stage that this loop is part of.
      devices: the devices to shard the batch over (default: all local devices; the batch is
        padded to a multiple of their number).
      summary: metrics -> short string for the progress bar (default: per-image 'loss').
      checkpoint: a resume.LoopCheckpoint, or None. With one, the loop starts from its newest
        saved step (when its arrays match `state`), saves every `checkpoint.every` steps and
        at the end, and a stop request (SIGINT/SIGTERM, resume.handle_signals) saves and
        raises resume.Interrupted at the next chunk boundary.
    Returns:
      (state, metrics of the last step), both with the batch axis, on the host's default
      device. Metrics are None when no step ran (a loop restored complete).
    """
    from barbershop_jax import resume

    mesh = batch_mesh(devices)
    # Settings the step never reads (step counts, seeds, chunking) must not recompile it.
    step_cfg = cfg.step_config() if hasattr(cfg, "step_config") else cfg
    default_chunk, unroll = loop_defaults()
    chunk = chunk or default_chunk
    done = 0
    if checkpoint is not None:
        restored = checkpoint.restore(state)
        if restored is not None:
            state, done = restored[0], min(restored[1], n_steps)
            log.info("%s: resumed at step %d of %d from %s", desc or "loop", done, n_steps, checkpoint.folder)
    if resume.stop_requested():  # asked between two loops: the earlier ones are saved, this one starts over
        raise resume.Interrupted(desc or "a loop", done, n_steps, saved=checkpoint is not None,
                                 signum=resume.stop_signal())
    # The chunks donate the state: work on private copies, one buffer per leaf, so that the
    # caller's arrays survive and leaves that share a buffer are not donated twice.
    state = jax.tree.map(jnp.array, state)
    n_images = jax.tree.leaves(state)[0].shape[0]
    if mesh is not None:
        (state, data), n_images = _pad_batch((state, data), mesh.size)
        _warn_idle_devices(n_images, mesh.size)
        shard = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
        state, data = jax.device_put((state, data), shard)
        consts = jax.device_put(consts, NamedSharding(mesh, PartitionSpec()))
    unpad = lambda x: x[:n_images]  # noqa: E731
    if isinstance(progress, StageProgress):
        bar = progress.loop(desc, done)
    else:
        bar = _progress(n_steps, desc, n_images, initial=done) if progress else None
    metrics, saved = None, done
    try:
        while done < n_steps:
            live = min(chunk, n_steps - done)
            called = time.time()
            state, metrics = _run_chunk(consts, state, data, jnp.int32(done), jnp.int32(n_steps), step=step,
                                        cfg=step_cfg, length=chunk, unroll=chunk if unroll else 1)
            dispatch = (called, time.time())  # tracing, reading and compiling, when this call did them
            done += live
            if bar is not None:  # the metrics wait for the chunk, so the bar moves when its steps are done
                bar.advance(live, (summary or _loss_summary)(jax.device_get(metrics)), excluded=dispatch)
            stop = resume.stop_requested()
            if checkpoint is not None and (done - saved >= checkpoint.every or done == n_steps or stop):
                checkpoint.save(jax.tree.map(unpad, state), done)
                saved = done
            if stop and done < n_steps:
                raise resume.Interrupted(desc or "a loop", done, n_steps, saved=checkpoint is not None,
                                         signum=resume.stop_signal())
    finally:
        if bar is not None:
            bar.close()
    return jax.tree.map(unpad, state), (jax.tree.map(unpad, metrics) if metrics is not None else None)


def _loss_summary(metrics) -> str:
    loss = np.asarray(metrics["loss"]) if isinstance(metrics, dict) and "loss" in metrics else None
    if loss is None:
        return ""
    if loss.size <= 4:
        return "loss " + " ".join(f"{v:.4f}" for v in loss)
    return f"loss mean {loss.mean():.4f} min {loss.min():.4f} max {loss.max():.4f}"


# Wall-time spans (start, end) of JAX tracing, lowering and compiling (or reading a compiled
# program from the persistent cache), from its monitoring events: the progress bars leave them
# out of their rate. Nested traces overlap; _busy merges them.
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_spans: collections.deque = collections.deque(maxlen=10_000)
_listening = False


def _listen_to_compilation():
    global _listening
    if _listening:
        return
    _listening = True

    def on_span(event, start, end, *args, **kwargs):
        # JAX calls this inside its compilation: whatever another JAX passes, it must not raise.
        try:
            if event in _COMPILE_EVENTS:
                _compile_spans.append((float(start), float(end)))
        except Exception:  # noqa: BLE001
            pass
    try:
        jax.monitoring.register_event_time_span_listener(on_span)
    except Exception:  # noqa: BLE001 (a JAX without it: only the chunks' own dispatching calls are left out)
        pass


def _busy(spans, lo: float, hi: float) -> float:
    """Seconds of [lo, hi] covered by the union of `spans`."""
    total, end = 0.0, lo
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _progress(total, desc, n_items, *, initial=0, unit="image"):
    """A tqdm bar of optimisation steps whose rate and ETA leave out compilation.

    A loop's first chunk may be mostly tracing and compiling (37 s against 0.4 s per chunk for
    the W+ step at 1024 px), and a stage compiles small programs between its loops too. In
    tqdm's moving average that made the ETA several times too long for the first couple of
    hundred steps. Here the time between two chunks is counted without JAX's compilation
    spans and the chunk's dispatching call (where its own compilation happens; otherwise well
    under a millisecond), steps restored from a checkpoint are not counted at all, and the
    rate is the counted steps over the counted time: unknown ("?") until one chunk has run."""
    from tqdm.auto import tqdm
    _listen_to_compilation()

    class StepBar(tqdm):
        counted = (0, 0.0)  # steps, seconds
        mark = None         # when the last chunk was done (or the bar was made)

        def advance(self, steps, postfix, excluded=None):
            """`steps` more done; excluded: a (start, end) span of time.time() not to count."""
            now = self._time()
            spans = [excluded] if excluded else []
            for span in reversed(_compile_spans):  # appended as they end: the recent ones last
                if span[1] <= self.mark:
                    break
                spans.append(span)
            steps_so_far, seconds = self.counted
            self.counted = (steps_so_far + steps, seconds + now - self.mark - _busy(spans, self.mark, now))
            self.mark = now
            self.set_postfix_str(postfix, refresh=False)
            self.update(steps)

        def skip(self, steps):
            """Steps done without running them here (restored, or a loop that has nothing to do)."""
            self.mark = self._time()
            self.update(steps)

        @property
        def format_dict(self):
            d = super().format_dict
            steps, seconds = self.counted
            # With no rate, tqdm would average n - initial over the elapsed time: make that 0 ("?").
            d["rate"], d["initial"] = (steps / seconds, d["initial"]) if steps and seconds > 0 else (None, self.n)
            return d

    bar = StepBar(total=total, initial=initial, desc=f"{desc} ({n_items} {unit}{'s' if n_items != 1 else ''})",
                  unit="step", leave=True, dynamic_ncols=True, smoothing=0)
    bar.mark = bar._time()
    return bar


class StageProgress:
    """One progress bar over every loop of every batch of a stage, with its ETA: thousands of
    images run as hundreds of batches, and a bar per loop said nothing of the whole.

        with StageProgress("W+ embedding", len(todo), batch_size, w_steps) as stage:
            for batch in batches(todo, batch_size, "w_plus"):
                stage.next_batch()
                run(..., progress=stage)   # or stage.skip(steps) for a loop that does not run

    The postfix names the batch and the loop ("batch 3/750, Align step 2: loss ...").
    enabled=False: no bar (run() then shows none)."""

    def __init__(self, desc: str, n_items: int, batch_size: int, steps_per_batch: int, *, enabled=True,
                 unit="image"):
        self.desc, self.n_batches, self.batch = desc, -(-n_items // batch_size), 0
        total = self.n_batches * steps_per_batch
        self.bar = _progress(total, desc, n_items, unit=unit) if enabled and total > 0 else None

    def next_batch(self):
        self.batch += 1

    def skip(self, steps: int):
        if self.bar is not None and steps > 0:
            self.bar.skip(steps)

    def loop(self, desc: str, done: int):
        """run()'s view of the bar for one loop that starts at step `done` (restored steps are
        skipped, not timed); None when disabled."""
        if self.bar is None:
            return None
        self.skip(done)
        where = [f"batch {self.batch}/{self.n_batches}"] if self.n_batches > 1 else []
        where += [desc] if desc and desc != self.desc else []
        return _StageLoop(self.bar, ", ".join(where))

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _StageLoop:
    def __init__(self, bar, where):
        self.bar, self.where = bar, where

    def advance(self, steps, postfix, excluded=None):
        self.bar.advance(steps, f"{self.where}: {postfix}" if self.where and postfix else self.where or postfix,
                         excluded)

    def close(self):  # the stage's owner closes the bar
        pass


def image_key(seed: int, content_hash: str) -> jax.Array:
    """The PRNG key of one image: derived from the run's seed and the image's content, so an
    image draws the same noise whatever batch it is in."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), int(content_hash[:8], 16) & 0x7FFFFFFF)
