"""Stop requests: SIGINT and SIGTERM end a run within seconds wherever it is, and leave nothing
half-written.

- Inside an optimisation loop (from `loop_started` to `loop_ended`: pipeline/loop_hook.py) a
  signal only sets the stop flag: the loop finishes its chunk, writes its checkpoint and raises
  resume.Interrupted, so that the same command resumes from that step.
- Anywhere else (reading and hashing inputs, target-mask morphology, face cropping, writing
  results, contact sheets, compiling) the handler raises `Stopped` at once.
- Atomic writes (`atomic_write`) run `shielded`: a stop that comes during one is raised when
  it ends, so the file is whole or absent and no temporary file stays behind.
- Thread pools (reading inputs, background writes) drop their queued work when a stop comes and
  wait only for the items already running: a thread cannot be interrupted, and each item is
  one image or one file (a fraction of a second to seconds).
- A second SIGINT raises KeyboardInterrupt at once, wherever the run is (the last resort).

Python runs signal handlers in the main thread only, between two bytecodes: a long call into C
(one XLA compilation or execution, one image decoded or encoded) delays the stop until it
returns. That is accepted: each such call takes seconds at most at the sizes we run, and
nothing can safely cut one short (killing XLA or a writer mid-call would leave the process or
a file in an unknown state).

The counters below are touched in the main thread only (the handler runs there; loops and
writes in other threads, e.g. the web server's jobs, are never interrupted by a signal).
"""
from __future__ import annotations

import os
import signal
import tempfile
import threading
from pathlib import Path

_stop = threading.Event()
_stop_signal: list = []


class _MainThread:
    """What the handler needs to know about the main thread: whether `handle_signals` is on
    (armed), how many loops run, how deep it is in shielded blocks, and whether it has raised
    `Stopped` already (once per stop)."""
    armed = False
    loops = 0
    shielded = 0
    raised = False


_main = _MainThread()


class Stopped(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run outside an optimisation loop. A KeyboardInterrupt, so
    that no `except Exception` (a per-item error report, a damaged-file check) takes it for a
    failure of the item at hand, and libraries clean up as they do on Ctrl-C."""

    def __init__(self, signum: int | None):
        self.signum = signum
        name = signal.Signals(signum).name if signum else "a stop request"
        super().__init__(f"interrupted by {name}; finished work is kept")


def request_stop(signum=None, frame=None):
    """Ask the run to stop: the running loop at its next chunk boundary, any other work at
    once (through the handler of `handle_signals`)."""
    _stop_signal[:] = [signum]
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def clear_stop():
    _stop.clear()
    _stop_signal.clear()
    _main.raised = False


def stop_signal() -> int | None:
    return _stop_signal[0] if _stop_signal else None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def raise_if_due():
    """Raise `Stopped` when a stop was asked and the main thread is outside every loop and
    shielded block (once per stop, and only while `handle_signals` is on)."""
    if (_stop.is_set() and _main.armed and not _main.raised and not _main.loops and not _main.shielded
            and _in_main_thread()):
        _main.raised = True
        raise Stopped(stop_signal())


def loop_started():
    """An optimisation loop begins: until `loop_ended`, a signal waits for its chunk boundary."""
    if _in_main_thread():
        _main.loops += 1


def loop_ended():
    if _in_main_thread():
        _main.loops = max(_main.loops - 1, 0)


class shielded:
    """Within the block, a stop waits (it is raised when the block ends): for writes that must
    finish or be undone as a whole. Keep such blocks short (a file write)."""

    def __enter__(self):
        if _in_main_thread():
            _main.shielded += 1
        return self

    def __exit__(self, *exc):
        if _in_main_thread():
            _main.shielded -= 1
            raise_if_due()  # over the block's own error too: the run stops either way
        return False


class handle_signals:
    """Within the block, SIGINT and SIGTERM stop the run cleanly instead of killing the process
    (see the module's docstring); a second SIGINT still interrupts at once."""

    def __enter__(self):
        clear_stop()
        self._old = {}
        if _in_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
            _main.armed, _main.loops, _main.shielded = True, 0, 0
        return self

    @staticmethod
    def _handler(signum, frame):
        if _stop.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # asked twice: stop now
            return  # the stop is under way
        request_stop(signum, frame)
        raise_if_due()

    def __exit__(self, *exc):
        _main.armed = False
        for sig, old in self._old.items():
            signal.signal(sig, old)
        clear_stop()
        return False


def atomic_write(path, write) -> Path:
    """Create `path` whole or not at all: `write(file)` fills a temporary file beside it
    (opened for binary writing), which is then renamed into place."""
    path = Path(path)
    # Shielded: a SIGINT/SIGTERM stop waits for the rename (or the clean-up), so that no
    # temporary file stays behind, also when it comes between mkstemp and the `try`.
    with shielded():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            os.replace(tmp, path)
        except BaseException:  # a second SIGINT too
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
