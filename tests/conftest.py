import atexit
import contextlib
import functools
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Optimisation loops in tests run as rolled scans: on CPU the production default unrolls each
# chunk (loop.loop_defaults), which multiplies compile time in tests that run a few steps.
# The command line's subprocesses read it from the environment (cli/args.py's loop_options, as
# their configs' chunk and unroll); this process, and scripts that import this file, from the
# loops' defaults replaced below (ROLLED_LOOP), so both compile the same programs.
os.environ["BARBERSHOP_JAX_LOOP"] = "4,rolled"
ROLLED_LOOP = (4, False)  # (steps per chunk, unrolled?), as "4,rolled"
# The CPU flags that change what XLA:CPU compiles (vector width, FMA, bf16 and int8 units).
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_bf16",
             "avx512_vnni", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16")


def cpu_isa() -> list[str]:
    """The instruction sets of this CPU that XLA:CPU compiles for (/proc/cpuinfo's flags)."""
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    return [f for f in ISA_FLAGS if f in flags]


def cpu_kind() -> str:
    """This CPU as XLA:CPU compiles for it: its instruction sets (cpu_isa), or where it has none
    of them its architecture's name."""
    return "+".join(cpu_isa()) or platform.machine()


# Cache the many small programs too. Set before the cache folder below, whose import of
# barbershop_jax imports JAX, which reads its environment then.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
# Cache keys that do not name the cache folder. By default JAX puts its GPU autotuning folder,
# inside the cache folder, into the compile options, which are part of the key: on a CPU that
# setting does nothing but make a program copied into another folder a miss (the device
# script's dry run copies its cold start's programs into this cache: test_device_run).
os.environ["JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES"] = "none"
# One persistent compilation cache, shared by the pytest-xdist workers and the CLI tests'
# subprocesses, so that a program compiled in one process is read from disk by the next (the
# cache's bound makes JAX lock the folder around each read and write). It is kept from one run to
# the next: a run after a change compiles only the programs the change altered (JAX's cache key is
# the program, the compile options (not the folder, as set above) and the jaxlib version, so a
# stale program is never read), in a folder of its own, apart from the user's ($XDG_CACHE_HOME or
# ~/.cache/barbershop-jax/tests-xla/, at most 2 GiB: the least recently used programs go first).
# On a CPU that key does not name the processor's instruction sets, so the folder does (a hash of
# cpu_kind()): a home shared between machines never hands one a program compiled for another.
# TEST_CACHE_ENV names another folder, or "fresh": a new folder for this run alone, removed at its
# end, as on a new machine (benchmarks/tests_time.py times the suite so).
TEST_CACHE_ENV = "BARBERSHOP_JAX_TEST_CACHE"
if not (os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("BARBERSHOP_JAX_TEST_CACHE_MADE")):
    _run_dir = tempfile.mkdtemp(prefix="barbershop-jax-test-run-")
    atexit.register(shutil.rmtree, _run_dir, ignore_errors=True)
    _setting = os.environ.get(TEST_CACHE_ENV, "").strip()
    if _setting == "fresh":
        _cache_dir = os.path.join(_run_dir, "xla")
    else:
        from barbershop_jax.pipeline.runtime.compile_cache import default_dir  # the user's cache: beside it
        _cache_dir = _setting or str(default_dir().parent / "tests-xla" /
                                     hashlib.sha256(cpu_kind().encode()).hexdigest()[:12])
        os.environ.setdefault("BARBERSHOP_JAX_COMPILE_CACHE_MAX_GB", "2")
    os.environ["BARBERSHOP_JAX_COMPILE_CACHE"] = _cache_dir
    os.environ["BARBERSHOP_JAX_TEST_CACHE_MADE"] = "1"  # the workers, started after this, reuse it
    # The steps the runs measure (pipeline/store/step_times.py) go to the run's folder, not to the
    # user's home nor to the kept cache.
    os.environ["BARBERSHOP_JAX_STEP_TIMES"] = os.path.join(_run_dir, "step_times.json")
# Runs compile their stages on their own thread: the rehearsal that compiles them ahead on others
# (stages/rehearsal.py) traces every stage a second time, about 10% more CPU in each transfer
# test, and with two workers on two cores there is no idle core for it to use. test_rehearsal
# asks for it, and the device script's dry run (test_device_run) runs the production setting.
os.environ["BARBERSHOP_JAX_COMPILE_AHEAD"] = "0"
# The default weights folder (models/weights_folder.py) is a folder that does not exist, so that
# weights a user downloaded into their cache folder never reach a test: the commands and
# HairTransfer() run on the embedded models unless a test names weights.
os.environ["BARBERSHOP_JAX_WEIGHTS"] = os.path.join(tempfile.gettempdir(), "barbershop-jax-test-no-weights")

import jax  # noqa: E402 (after the environment above, which JAX reads at import)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)
sys.path.insert(0, str(Path(__file__).parent))

from barbershop_jax.models import bisenet, embedded, vgg16  # noqa: E402
from barbershop_jax.models import pca as pca_lib  # noqa: E402
from barbershop_jax.models.bundle import Models  # noqa: E402
from barbershop_jax.pipeline.runtime import compile_cache  # noqa: E402
from barbershop_jax.stages import loop  # noqa: E402

compile_cache.enable()  # in this process too: the subprocesses then find what the tests compiled
PRODUCTION_LOOP_DEFAULTS = loop.loop_defaults
loop.loop_defaults = lambda platform=None: ROLLED_LOOP


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # JAX's event name (public API only)
# JAX's event for a program read from the persistent cache: inside the compile event above, on its
# thread, before it (jax/_src/compiler.py, compile_or_get_cached).
CACHE_READ_EVENT = "/jax/compilation_cache/cache_retrieval_time_sec"


# The programs of a transfer's stages (their jitted functions' names).
STAGE_PROGRAMS = {"_run_chunk", "target_units", "_f_init", "render_saved", "parse_images", "_after_round1",
                  "_after_round2", "_between_steps", "_finish", "blend_masks", "_final_render"}


def is_stage_program(compiled: str) -> bool:
    """Whether a program's name as count_compilations gives it ("jit(name)") is a stage program's."""
    return compiled.removeprefix("jit(")[:-1] in STAGE_PROGRAMS


def stage_programs(names) -> list[str]:
    """Those of `names` (as count_compilations gives them) that are stage programs."""
    return [n for n in names if is_stage_program(n)]


@contextlib.contextmanager
def count_compilations():
    """Yields a list that collects the name of every program XLA compiles (or reads from the
    persistent cache) inside the block: what jit's in-memory caches missed."""
    from jax import monitoring

    names = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            names.append(kwargs.get("fun_name", "?"))

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        monitoring.unregister_event_duration_listener(listener)


@functools.partial(jax.jit, static_argnames="noise")
def render(g, w_plus, noise="const", key=None):
    """g.render as one compiled program: fixtures that render eagerly compile each layer's
    ops one by one (about 15 s of a test file's time on 2 CPU cores)."""
    return g.render(w_plus, noise=noise, key=key)


@functools.partial(jax.jit, static_argnames="noise")
def render_from_features(g, structure_f, latents, noise="const"):
    return g.render_from_features(structure_f, latents, block=3, noise=noise)


def nhwc(t):
    """A torch NCHW tensor -> numpy NHWC."""
    return t.detach().numpy().transpose(0, 2, 3, 1)


def batch_position_exact() -> bool:
    """Whether this machine computes each item of a batch bit for bit as alone, wherever it sits
    in the batch: so on XLA:CPU with AVX-512. With AVX2 only, XLA:CPU's kernels block a batch
    differently by its size, which moves the last bits of an item's sums (W+ by 1e-7 after a
    tiny embedding); GPU kernels chosen by batch size may do the same."""
    return jax.default_backend() == "cpu" and "avx512f" in cpu_isa()


def assert_adam_close(a, b, lr=0.01, steps=4):
    """Equal to float tolerance, allowing for Adam: an element whose gradient is near Adam's
    eps (1e-8) turns float-reassociation noise into a difference of up to lr per step (seen:
    up to 14 in 65,536 elements of F). So: all but 1 in 1,000 elements within 1e-4 of the
    largest magnitude, and none beyond lr * steps."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b)
    assert np.mean(diff <= 1e-4 * np.abs(b).max()) >= 0.999, (np.mean(diff <= 1e-4 * np.abs(b).max()), diff.max())
    assert diff.max() <= lr * steps, diff.max()


def assert_batch_independent(batched, alone, what: str, steps: int = 0):
    """The claim (docs/api.md) that a triple gives the same result alone or in any batch, as this
    machine makes it (batch_position_exact): bit for bit; or else a latent within
    assert_adam_close of its alone run after `steps` Adam steps of lr 0.01 (on an AVX2 EPYC, 5
    of F's 65,536 elements moved by up to 1.6e-3, the rest by under 2e-6), and a uint8 image
    within one level on average."""
    batched, alone = np.asarray(batched), np.asarray(alone)
    if batch_position_exact():
        assert np.array_equal(batched, alone), \
            f"{what}: max diff {np.abs(batched.astype(float) - alone).max()} (bit for bit on {'+'.join(cpu_isa())})"
    elif alone.dtype == np.uint8:
        assert np.abs(batched.astype(int) - alone.astype(int)).mean() < 1.0, what
    else:
        try:
            assert_adam_close(batched, alone, steps=steps)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from None


def normal(seed: int, shape) -> jax.Array:
    """Standard normal float32 draws from numpy: an eager jax.random draw compiles a threefry
    program for each new shape (about 1.2 s on 2 CPU cores)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def torch_generator_64():
    """The PyTorch reference at 64 px, channel multiplier 2, official widths (512 channels)."""
    import torch_stylegan2 as T
    return T.realistic_init_(T.Generator(64, 512, 8, channel_multiplier=2)).eval()


@pytest.fixture(scope="session")
def converted_64(torch_generator_64, tmp_path_factory):
    """torch_generator_64 saved as an official checkpoint and converted by the real command."""
    import torch
    import torch_stylegan2 as T
    from barbershop_jax import cli
    from barbershop_jax import load_generator

    root = tmp_path_factory.mktemp("g64")
    torch.save(T.checkpoint(torch_generator_64), root / "g64.pt")
    assert cli.main(["convert", "stylegan2", str(root / "g64.pt"), str(root / "weights"),
                     "--pca-samples", "4096"]) == 0
    return load_generator(root / "weights"), root




# ----------------------------------------------------------------------------- the tiny models of the tests
SMALL_VGG = vgg16.VGG16Config(widths=(8, 16, 16, 32, 32))
STEPS = dict(w_steps=3, fs_steps=2, inpaint_steps=2, align_steps1=3, align_steps2=2, blend_steps=3)


def parser_with_hair(generator):
    """A random BiSeNet whose output channels are permuted so that the class it predicts most
    on generator images is called hair: the hair paths of every stage then have pixels."""
    parser = bisenet.init(bisenet.BiSeNetConfig(), jax.random.PRNGKey(3))
    images = render(generator, generator.mean_w_plus(1))
    # One program: run eagerly, the parser compiled some 100 small ones (5 s) in each process.
    labels = jax.jit(lambda parser, x: parser.labels_of(x, parse_size=64))(parser, (images + 1) / 2)
    counts = np.bincount(np.asarray(labels).ravel(), minlength=16)
    top, hair = int(np.argmax(counts)), parser.labels.id("hair")
    order = np.arange(16)
    order[[top, hair]] = order[[hair, top]]
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x[..., order] if "conv_out" in jax.tree_util.keystr(path) and x.shape[-1] == 16 else x,
        parser.params)
    return bisenet.FaceParser(params=params, config=parser.config)


def tiny_models(parser: bool = True) -> Models:
    """The embedded generator with a small VGG16 and fewer p-norm samples (quick to build),
    and parser_with_hair (parser=False: none, as the embedding alone needs)."""
    g = embedded.generator()
    return Models(g, parser_with_hair(g) if parser else None, vgg16.init(SMALL_VGG, jax.random.PRNGKey(1)),
                  pca_lib.pca_stats(g, 2000, jax.random.PRNGKey(2)))


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def generator_images(models, names, seed: int, root, one_at_a_time: bool = False) -> list:
    """One generator image per name, {root}/{name}.png, from random latents of PRNGKey(seed)
    (known_w_plus), rendered by the jitted render: all names in one batch (the images fixture
    and the controller's rehearsed run, whose results the tests compare), or one_at_a_time, one
    program for any count of names (rendered eagerly instead, each new count compiled some 200
    small programs, 6 to 8 s)."""
    from barbershop_jax.pipeline.files import image_files

    Path(root).mkdir(parents=True, exist_ok=True)
    w = known_w_plus(models, len(names), seed)
    batches = [w[i:i + 1] for i in range(len(names))] if one_at_a_time else [w]
    pixels = np.concatenate([image_files.to_uint8(np.asarray(render(models.generator, b))) for b in batches])
    return [image_files.save_png(Path(root) / f"{name}.png", p) for name, p in zip(names, pixels)]


@pytest.fixture(scope="module")
def images(models, tmp_path_factory):
    """Four generator images, ann.png, bob.png, cid.png and dan.png."""
    return generator_images(models, ("ann", "bob", "cid", "dan"), 11, tmp_path_factory.mktemp("in"))


@pytest.fixture(scope="module")
def weights_dir(models, tmp_path_factory):
    """The fixture's models saved as a weights folder, for the command line in a subprocess
    (the shapes and settings of the batch run: the persistent compilation cache serves both)."""
    from barbershop_jax.models import stylegan2

    m, pca = models, models.pca
    root = tmp_path_factory.mktemp("weights")
    stylegan2.save(m.generator, root, pca=pca)
    bisenet.save(m.parser, root)
    vgg16.save(m.vgg, root)
    return root


def tiny_transfer(models, out, *, batch_size: int = 2, checkpoint_every: int | None = 2, fresh: bool = False,
                  pad_batches: bool = True, **options):
    """A HairTransfer on `models` (the fixture's, not loaded), writing to `out`: no progress
    bars, the persistent compilation cache left as this process set it, and STEPS with random
    noise unless `options` say otherwise. pad_batches: as a process that runs many small runs
    (RunSettings), so that the tests' single transfers reuse the batch run's programs."""
    from barbershop_jax.pipeline.hair_transfer import HairTransfer
    from barbershop_jax.pipeline.runtime.settings import RunSettings

    run = RunSettings(batch_size=batch_size, progress=False, checkpoint_every=checkpoint_every,
                      pad_batches=pad_batches)
    options = {**STEPS, "noise": "random", **options}
    return HairTransfer(models, out, run=run, compile_cache=False, fresh=fresh, **options)


# ----------------------------------------------------------------------------- the transfer's programs, compiled once
# The test files that run whole transfers of the tiny models at batch size 2 (tiny_transfer's
# default; the web page's server too): they run the same stage programs, which the persistent
# cache serves to every process once compiled. But two workers that start two of these files at
# once each compile every program (about 250 s of CPU apiece), so the controller compiles them
# first (pytest_sessionstart below).
TRANSFER_FILES = ("test_transfer.py", "test_web.py", "test_damaged_files.py", "test_grid.py")
NAMES = ("ann", "bob", "cid", "dan")  # the images fixture's
# test_transfer's batch run: 4 triples, two with shape == colour, so every stage runs full batches of 2.
BATCH_TRIPLES = [("ann", "bob", "cid"), ("bob", "cid", "cid"), ("cid", "dan", "ann"), ("dan", "ann", "ann")]


def selected_files(config) -> set[str]:
    """The names of the test files the command line selects (pytest's args: its paths, or
    testpaths when it names none)."""
    names = set()
    for arg in config.args:
        path = Path(config.invocation_params.dir, str(arg).split("::")[0])
        names |= {p.name for p in path.glob("test_*.py")} if path.is_dir() else {path.name}
    return names


# Where the controller's rehearsed batch run (pytest_sessionstart) leaves its folder, for
# test_rehearsal: the workers find it through the environment they inherit.
REHEARSED_RUN_ENV = "BARBERSHOP_JAX_TEST_REHEARSED_RUN"


def rehearse_batch_run(folder: Path):
    """test_transfer's batch run with the rehearsal, which compiles the stages' programs on one
    thread per core (nothing else runs yet to use the cores): its images in folder/in, its
    results in folder/out, and in folder/compiled.json the thread each program compiled on, or
    was read on from the persistent cache (this process has compiled no stage yet; the cache is
    new, or holds the programs of an earlier run: conftest's kept cache)."""
    import json

    models = tiny_models()
    (folder / "in").mkdir()
    path = dict(zip(NAMES, generator_images(models, NAMES, 11, folder / "in")))
    where = rehearsed_transfer(models, [tuple(path[n] for n in t) for t in BATCH_TRIPLES], folder / "out")
    (folder / "compiled.json").write_text(json.dumps(where))


def rehearsed_transfer(models, triples, out, batch_size: int = 2) -> list:
    """`triples` transferred into `out` with the rehearsal; [thread name, program name, read]
    of each program XLA compiled meanwhile, on any thread (read: taken from the persistent cache
    instead, as the suite's kept cache gives the programs of an earlier run)."""
    import threading

    from jax import monitoring

    where, reading = [], set()  # reading: the threads inside a compile event that read the cache

    def listener(event, duration, **kwargs):
        thread = threading.current_thread().name
        if event == CACHE_READ_EVENT:
            reading.add(thread)
        elif event == BACKEND_COMPILE_EVENT:
            where.append([thread, kwargs.get("fun_name", "?"), thread in reading])
            reading.discard(thread)
    monitoring.register_event_duration_secs_listener(listener)
    try:
        tiny_transfer(models, out, batch_size=batch_size, compile_ahead=True).transfer_many(triples)
    finally:
        monitoring.unregister_event_duration_listener(listener)
    return where


def rehearsed_run() -> Path | None:
    """The folder of the controller's rehearsed batch run, when this run made one."""
    folder = os.environ.get(REHEARSED_RUN_ENV)
    return Path(folder) if folder and (Path(folder) / "compiled.json").is_file() else None


def pytest_sessionstart(session):
    """Before pytest-xdist starts two or more workers (its own hook runs last), when the run
    selects two or more of TRANSFER_FILES: the transfer's programs compiled into the run's
    persistent cache by a rehearsed batch run, so that no two workers compile them at once
    (test_rehearsal checks that run)."""
    config = session.config
    workers = getattr(config.option, "numprocesses", None)
    if (os.environ.get("PYTEST_XDIST_WORKER") or not isinstance(workers, int) or workers < 2
            or len(selected_files(config) & set(TRANSFER_FILES)) < 2):
        return
    start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="barbershop-jax-test-rehearsed-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    rehearse_batch_run(folder)
    os.environ[REHEARSED_RUN_ENV] = str(folder)
    seconds = time.perf_counter() - start
    config.pluginmanager.get_plugin("terminalreporter").write_line(
        f"conftest: the transfer's programs compiled into the run's persistent cache in {seconds:.0f} s")


def known_w_plus(models, n, seed=5):
    """n latents W+ of the generator, from normal draws of `seed`."""
    g = models.generator
    return g.w_plus_from_w(g.map(jax.random.normal(jax.random.PRNGKey(seed), (n, g.config.style_dim))))


def render_targets(models, w_plus, noise="const", seeds=None):
    """The embedding's Targets of the images the generator renders from w_plus."""
    from barbershop_jax.ops import resample
    from barbershop_jax.pipeline.files import image_files
    from barbershop_jax.stages import embed as embedding
    from barbershop_jax.stages import loop

    g = models.generator
    image = render(g, w_plus, noise=noise, key=jax.random.PRNGKey(9))
    small = np.stack([resample.uint8_to_signed(resample.lanczos_resize(im, 32))
                      for im in image_files.to_uint8(np.asarray(image))])
    hashes = seeds or [f"{i:08x}" for i in range(len(w_plus))]
    keys = jnp.stack([loop.image_key(0, h) for h in hashes])
    return embedding.Targets(image, jnp.asarray(small), keys)


@pytest.fixture(autouse=True)
def _production_loop(request, monkeypatch):
    """Tests marked `production_loop` run the loops with the production defaults."""
    if "production_loop" in request.keywords:
        monkeypatch.delenv("BARBERSHOP_JAX_LOOP")
        monkeypatch.setattr(loop, "loop_defaults", PRODUCTION_LOOP_DEFAULTS)


def pytest_configure(config):
    config.addinivalue_line("markers", "production_loop: run optimisation loops with the production defaults")


# The test files that take longest, longest first (benchmarks/tests_time.py measures them; in
# one run on 2 AVX2 cores with 2 workers from 562 s to 25 s). Run first, so that no worker starts
# one while the other is nearly done: scripts/test.sh keeps this order (--no-loadscope-reorder;
# pytest-xdist would otherwise hand out the files with the most tests first, which left one
# worker idle for the last 500 s of a run).
LONGEST_FIRST = ("test_device_run.py", "test_embedding.py", "test_transfer.py", "test_stylegan2.py",
                 "test_benchmarks.py", "test_web.py", "test_grid.py", "test_weights_download.py", "test_bisenet.py",
                 "test_lpips.py", "test_optimizers.py", "test_cli.py", "test_conv.py", "test_install_lines.py",
                 "test_damaged_files.py")


def pytest_collection_modifyitems(config, items):
    """The files of LONGEST_FIRST first, in its order; the others after them, as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def no_model_planning(monkeypatch):
    """For command-line tests whose HairTransfer runs no model (transfer_many stubbed, the
    models a stand-in): the batch's plan and the step times it would keep are stubbed too."""
    from barbershop_jax.pipeline import hair_transfer

    class Plan:
        @staticmethod
        def describe():
            return "plan: (no models in this test)"
    monkeypatch.setattr(hair_transfer.HairTransfer, "plan", lambda self, *a, **k: Plan())
    monkeypatch.setattr(hair_transfer.HairTransfer, "save_step_times", lambda self: {})


def record_decodes(monkeypatch) -> list:
    """The files image_files.load_rgb decodes from now on (each a Path, in order)."""
    from barbershop_jax.pipeline.files import image_files
    decoded = []
    real = image_files.load_rgb
    monkeypatch.setattr(image_files, "load_rgb", lambda path, **k: decoded.append(Path(path)) or real(path, **k))
    return decoded
