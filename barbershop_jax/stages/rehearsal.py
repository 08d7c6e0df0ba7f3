"""Compiling a run's programs before they are needed: a rehearsal.

A cold run spends most of its time in XLA compiling its stage programs, one after another as
the stages reach them, each on one core (benchmarks/README.md, "Cold start"). A rehearsal
runs the same pipeline code on a second thread, where every stage program (`program`: the
stages' jitted functions) does not run: a call lowers it, hands it to compiler threads
(pipeline/runtime/compile_ahead.py) and returns zeros of its output shapes at once. So the
rehearsal goes through every stage in seconds, and the programs of all of them compile side
by side while the run itself computes. When the run calls a program, it finds it compiled,
or waits for the compilation in flight (JAX compiles one program once): the work moves to
other cores, the programs and so the results are the same bit for bit.

Only the thread inside `rehearsing` rehearses (a context variable: each thread has its own);
everywhere else a program is jax.jit.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging

import jax
import numpy as np

log = logging.getLogger("barbershop_jax")
# compile(program name, jax.stages.Lowered): who compiles this thread's programs, or None.
_compiler = contextvars.ContextVar("barbershop_jax_rehearsal", default=None)
# Where the programs' traces are kept across processes (pipeline/runtime/trace_cache.py's
# Store, set by keep_traces), or None: each process traces its programs.
_traces = None


def keep_traces(store) -> None:
    """Call the stage programs through `store` (None: trace them as jax.jit does)."""
    global _traces
    _traces = store


class _Quiet(logging.Filter):
    """A rehearsal says nothing: its lines (a batch padded over the devices, a stage's notes)
    are the run's to say, once."""

    def filter(self, record):
        return _compiler.get() is None


log.addFilter(_Quiet())


@contextlib.contextmanager
def rehearsing(compile):
    """Within the block, in this thread, a stage program hands its lowering to
    compile(name, lowered) and returns zeros of its outputs."""
    token = _compiler.set(compile)
    try:
        yield
    finally:
        _compiler.reset(token)


def active() -> bool:
    """Whether this thread is rehearsing: the loops run one chunk, the stage runners one batch."""
    return _compiler.get() is not None


def _traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def program(fun=None, **jit_options):
    """jax.jit(fun, **jit_options), which a rehearsal compiles instead of running (as a
    decorator: @program or @program(static_argnames=...)). With traces kept (keep_traces), a
    call runs the kept program instead, and `.lower` lowers it; `.trace` and `.jitted` are
    the jitted function's."""
    if fun is None:
        return functools.partial(program, **jit_options)
    jitted = jax.jit(fun, **jit_options)

    def find(args, kwargs):  # (its kept trace, the leaves to call it with), or None
        return None if _traces is None else _traces.find(fun, jit_options, args, kwargs)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        if _traced((args, kwargs)):  # called inside another program: part of it
            return jitted(*args, **kwargs)
        found = find(args, kwargs)
        compile = _compiler.get()
        if compile is None:
            return jitted(*args, **kwargs) if found is None else found[0](found[1])
        lowered = jitted.lower(*args, **kwargs) if found is None else found[0].lower(found[1])
        compile(fun.__name__, lowered)
        zeros = [np.zeros(s.shape, s.dtype) for s in jax.tree.leaves(lowered.out_info)]
        return jax.tree.unflatten(jax.tree.structure(lowered.out_info) if found is None else found[0].out_tree, zeros)

    def lower(*args, **kwargs):
        """The program a call with these arguments runs, lowered."""
        found = find(args, kwargs)
        return jitted.lower(*args, **kwargs) if found is None else found[0].lower(found[1])

    call.lower, call.trace, call.jitted = lower, jitted.trace, jitted
    return call
