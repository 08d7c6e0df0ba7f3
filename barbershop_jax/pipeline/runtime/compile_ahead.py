"""The compiler threads of a rehearsal (stages/rehearsal.py): the programs a rehearsal
lowers, compiled side by side, in the order the run will need them, while the run computes."""
from __future__ import annotations

import concurrent.futures
import logging
import os

log = logging.getLogger("barbershop_jax")
THREAD_PREFIX = "barbershop-jax-compile"


class Stopped(Exception):
    """Raised in the rehearsing thread once its run no longer wants it (CompilerThreads.close)."""


class CompilerThreads:
    """compile(name, lowered): `lowered` compiled on one of `workers` threads (default: one
    per core, at most 4; XLA compiles a program on one core). The threads are not daemons: a
    thread stopped at exit in the middle of an XLA compilation aborts the process, so exit
    waits for the compilations under way."""

    def __init__(self, workers: int | None = None):
        workers = workers or min(os.cpu_count() or 1, 4)
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=THREAD_PREFIX)
        self.closed = False
        self.programs: list[str] = []  # the names of the programs handed over, in order
        self.futures: list[concurrent.futures.Future] = []  # their compilations, in the same order

    def __call__(self, name: str, lowered) -> None:
        if self.closed:
            raise Stopped
        self.programs.append(name)
        self.futures.append(self._pool.submit(_compile, name, lowered))

    def close(self):
        """Stop: the rehearsal ends at its next program; compilations not started are dropped
        (those under way finish on their threads)."""
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wait(self):
        """Until every compilation handed over so far has ended (tests, benchmarks)."""
        self._pool.shutdown(wait=True)


def _compile(name: str, lowered):
    try:
        lowered.compile()
    except Exception as e:  # the run compiles it again when it calls it, and reports what fails then
        log.debug("compiling %s ahead failed: %s", name, e)
