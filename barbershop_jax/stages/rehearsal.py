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
    decorator: @program or @program(static_argnames=...)). `.lower` and `.trace` are the
    jitted function's."""
    if fun is None:
        return functools.partial(program, **jit_options)
    jitted = jax.jit(fun, **jit_options)

    @functools.wraps(fun)
    def call(*args, **kwargs):
        compile = _compiler.get()
        if _traced((args, kwargs)):  # called inside another program: part of it
            return jitted(*args, **kwargs)
        found = None if _traces is None else _traces.find(fun, jit_options, args, kwargs)
        if found is not None:
            kept, leaves = found
            if compile is None:
                return kept(leaves)
            lowered = kept.lower(leaves)
            compile(fun.__name__, lowered)
            return jax.tree.unflatten(kept.out_tree, [np.zeros(s.shape, s.dtype) for s in lowered.out_info])
        if compile is None:
            return jitted(*args, **kwargs)
        lowered = jitted.lower(*args, **kwargs)
        compile(fun.__name__, lowered)
        return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), lowered.out_info)

    call.lower, call.trace, call.jitted = jitted.lower, jitted.trace, jitted
    return call
