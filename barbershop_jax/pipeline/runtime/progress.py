"""Progress bars of the optimisation stages, with an ETA that leaves out compilation. The
loops report to them through the pipeline's LoopHook (loop_hook.py)."""
from __future__ import annotations

import collections
import dataclasses
import threading
import time
import weakref

import jax
import numpy as np

def loss_summary(metrics) -> str:
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


@dataclasses.dataclass(frozen=True)
class BarState:
    """Where an open optimisation bar stands: its description, steps done of total, and the
    seconds left at its rate (compilation left out; None until one chunk has run)."""
    desc: str
    done: int
    total: int
    seconds_left: float | None


# The StepBars not yet closed, which a caller without a terminal (the web page) shows instead.
# Read from another thread than the one whose loops move them: the lock guards the set.
_open_bars: weakref.WeakSet = weakref.WeakSet()
_open_lock = threading.Lock()


def open_bars() -> list[BarState]:
    """The optimisation bars open now, oldest first (a stage's bar spans its batches)."""
    states = []
    with _open_lock:
        bars = sorted(_open_bars, key=lambda b: b.start_t)
    for bar in bars:
        d = bar.format_dict
        left = (d["total"] - d["n"]) / d["rate"] if d["rate"] and d["total"] else None
        states.append(BarState(bar.desc, int(d["n"]), int(d["total"] or 0), left))
    return states


def _busy(spans, lo: float, hi: float) -> float:
    """Seconds of [lo, hi] covered by the union of `spans`."""
    total, end = 0.0, lo
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def progress_bar(total, desc, n_items, *, initial=0, unit="image"):
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

        def close(self):
            with _open_lock:
                _open_bars.discard(self)
            super().close()

        @property
        def format_dict(self):
            d = super().format_dict
            steps, seconds = self.counted
            # With no rate, tqdm would average n - initial over the elapsed time: make that 0 ("?").
            d["rate"], d["initial"] = (steps / seconds, d["initial"]) if steps and seconds > 0 else (None, self.n)
            return d

    bar = StepBar(total=total, initial=initial, desc=f"{desc} ({n_items} {unit}{'s' if n_items != 1 else ''})",
                  unit="step", leave=True, dynamic_ncols=True, smoothing=0)
    bar.mark = time.time()
    with _open_lock:
        _open_bars.add(bar)
    return bar


# Steps each stage's bars counted in this process, and their seconds without compilation:
# {(stage, batch size): [steps, seconds]}; step_times.py keeps them for the plans of later runs.
_measured: dict = {}


def take_measured() -> dict:
    """What the bars measured since the last call (and forget it)."""
    out = dict(_measured)
    _measured.clear()
    return out


class StageProgress:
    """One progress bar over every loop of every batch of a stage, with its ETA: thousands of
    images run as hundreds of batches, and a bar per loop said nothing of the whole.

        with StageProgress("W+ embedding", len(todo), batch_size, w_steps) as stage:
            for batch in batches(todo, batch_size, "w_plus"):
                stage.next_batch()
                stage_fn(..., hook=LoopHook(progress=stage, ...))   # or stage.skip(steps)

    The postfix names the batch and the loop ("batch 3/750, Align step 2: loss ...").
    enabled=False: no bar."""

    def __init__(self, desc: str, n_items: int, batch_size: int, steps_per_batch: int, *, enabled=True,
                 unit="image"):
        self.desc, self.n_batches, self.batch, self.batch_size = desc, -(-n_items // batch_size), 0, batch_size
        total = self.n_batches * steps_per_batch
        self.bar = progress_bar(total, desc, n_items, unit=unit) if enabled and total > 0 else None

    def next_batch(self):
        # Wraps: stages that share a bar (the target mask and the alignment) each count from 1.
        self.batch = self.batch % self.n_batches + 1

    def skip(self, steps: int):
        if self.bar is not None and steps > 0:
            self.bar.skip(steps)

    def loop(self, desc: str, done: int):
        """A loop's view of the bar for one loop that starts at step `done` (restored steps are
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
            steps, seconds = self.bar.counted
            if steps > 0 and seconds > 0:
                total = _measured.setdefault((self.desc, self.batch_size), [0, 0.0])
                total[0] += steps
                total[1] += seconds

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
