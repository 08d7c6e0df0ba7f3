"""Flax models: one file per architecture, each with a strict load()."""

# How XLA compiles the random initialisations (stylegan2.init, vgg16.init; the face parser's
# draws are numpy's): a process runs each once, so they compile at XLA's optimisation level 1
# instead of the default 2: the embedded generator's and VGG16's together about 3 s sooner on 2
# CPU cores, the same weights bit for bit (the embedded models' compared array by array on an
# AVX2 and an AVX-512 EPYC; tests/test_recorded_results.py covers the tests' tiny models on
# each kind of CPU it has a recording for; benchmarks/README.md, "The demo and the test suite,
# avx512-epyc-2core").
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}

# Where the random initialisations are kept across processes (pipeline/runtime/init_cache.py's
# Store, set by keep_initialisations), or None: each process draws them. The models touch no
# file: the runtime injects the store, as it does the stage programs' traces.
_kept = None


def keep_initialisations(store) -> None:
    """Make `initialised` read and keep its results through `store` (None: draw every time)."""
    global _kept
    _kept = store


def initialised(draw, config, key):
    """draw(config, key): the random weights of a model (stylegan2.init, vgg16.init,
    bisenet.init), or the very arrays an earlier process on a machine like this one drew."""
    return draw(config, key) if _kept is None else _kept.initialised(draw, config, key)
