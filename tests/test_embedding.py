"""W+ and FS embedding on the tiny generator: recovery, batching, sharding, seeds, cache."""
import collections
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from barbershop_jax.pipeline.store import cache
from barbershop_jax import cli
from barbershop_jax.stages import embed as embedding
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.config import EmbedConfig
from barbershop_jax.models import bundle
from barbershop_jax.pipeline import loop_hook
from barbershop_jax.pipeline.runtime import batching
from barbershop_jax.pipeline import embed as pipeline_embed
from barbershop_jax.pipeline.runtime import progress
from barbershop_jax.stages import loop
from barbershop_jax.pipeline.files.sources import content_hash
from conftest import (assert_adam_close, count_compilations, generator_images, known_w_plus, render,
                      render_from_features, render_targets, tiny_models)

@pytest.fixture(scope="module")
def consts():
    return tiny_models(parser=False)


def psnr(a, b):  # images in [-1, 1]: peak-to-peak 2
    return float(10 * np.log10(4.0 / np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def test_recovers_a_rendered_image(consts):
    """From latent_avg (PSNR about 1 dB here), 60 W+ steps must gain 8 dB (measured: 12.8 dB)
    and 60 FS steps (measured: 21.1 dB; F first dips under Adam's first steps, then climbs)
    3 dB more. A sign error in the loss, a zero learning rate or a broken gradient fails."""
    g = consts.generator
    targets = render_targets(consts, known_w_plus(consts, 1))
    cfg = EmbedConfig(w_steps=60, fs_steps=60, lpips_size=32, noise="const")
    start = psnr(render(g, g.mean_w_plus(1)), targets.full)
    w_plus, metrics = embedding.embed_w_plus(consts, targets, cfg)
    after_w = psnr(render(g, w_plus), targets.full)
    latent_in, structure_f, _ = embedding.embed_fs(consts, targets, w_plus, cfg)
    after_fs = psnr(render_from_features(g, structure_f, latent_in), targets.full)
    assert after_w >= start + 8.0, (start, after_w)
    assert after_fs >= after_w + 3.0, (after_w, after_fs)
    assert set(metrics) == {"loss", "l2", "lpips", "p_norm"}


def test_batch_equals_single_runs(consts):
    # The settings (and batch sizes 2 and 1) of the other tests here: their programs are reused.
    targets = render_targets(consts, known_w_plus(consts, 2, seed=6))
    cfg = EmbedConfig(w_steps=6, fs_steps=4, lpips_size=32)  # random noise
    w_batch, _ = embedding.embed_w_plus(consts, targets, cfg)
    li_batch, f_batch, _ = embedding.embed_fs(consts, targets, w_batch, cfg)
    for i in range(2):
        one = jax.tree.map(lambda x: x[i:i + 1], targets)
        w, _ = embedding.embed_w_plus(consts, one, cfg)
        assert_adam_close(w, w_batch[i:i + 1], steps=6)
        li, f, _ = embedding.embed_fs(consts, one, w, cfg)
        assert_adam_close(li, li_batch[i:i + 1])
        assert_adam_close(f, f_batch[i:i + 1])


def test_seed_reproducibility(consts):
    targets = render_targets(consts, known_w_plus(consts, 1, seed=7))
    cfg = EmbedConfig(w_steps=4, lpips_size=32)
    a, _ = embedding.embed_w_plus(consts, targets, cfg)
    b, _ = embedding.embed_w_plus(consts, targets, cfg)
    np.testing.assert_array_equal(a, b)
    other = targets._replace(key=jnp.stack([loop.image_key(1, "00000000")]))
    c, _ = embedding.embed_w_plus(consts, other, cfg)
    assert not np.allclose(a, c)


def test_result_is_from_before_the_last_update(consts):
    """Official: the saved W+ is the latent of the last iteration, captured before step()."""
    targets = render_targets(consts, known_w_plus(consts, 1, seed=8))
    w1, _ = embedding.embed_w_plus(consts, targets, EmbedConfig(w_steps=1, lpips_size=32))
    np.testing.assert_array_equal(w1, consts.generator.mean_w_plus(1))


@pytest.mark.production_loop
def test_unrolled_chunks_equal_rolled(consts, monkeypatch):
    """On CPU the loop unrolls its chunks (loop.loop_defaults); same numbers as rolled."""
    targets = render_targets(consts, known_w_plus(consts, 2, seed=3))
    cfg = EmbedConfig(w_steps=4, lpips_size=32)
    production, _ = embedding.embed_w_plus(consts, targets, cfg)
    # Rolled chunks of the same length: the program test_batch_equals_single_runs compiled.
    monkeypatch.setattr(loop, "loop_defaults", lambda platform=None: (4, False))
    rolled, _ = embedding.embed_w_plus(consts, targets, cfg)
    assert_adam_close(production, rolled)


def test_the_loops_chunking_comes_from_the_config():
    """A config's chunk and unroll choose the loop's program (a static argument of the compiled
    chunk, which jit's cache keys on); None leaves the backend's default; the step's own
    compile key (step_config) ignores both."""
    from barbershop_jax.config import TransferConfig
    default_length, default_unroll = loop.loop_defaults()
    assert loop.chunking_of(EmbedConfig(chunk=7, unroll=True)) == loop.Chunking(7, True)
    assert loop.chunking_of(TransferConfig(unroll=not default_unroll)) == loop.Chunking(default_length,
                                                                                      not default_unroll)
    assert loop.chunking_of(EmbedConfig()) == loop.chunking_of(None) == loop.Chunking(default_length, default_unroll)
    assert EmbedConfig(chunk=7, unroll=True).step_config() == EmbedConfig().step_config()
    with pytest.raises(ValueError, match="unroll must be True or False"):
        EmbedConfig(unroll="yes")


def test_chunk_lengths():
    assert loop.chunk_lengths(1100, 10) == [10] * 110
    assert loop.chunk_lengths(101, 50) == [50, 50, 1]
    assert loop.chunk_lengths(3, 4) == [3]
    assert loop.chunk_lengths(0, 4) == []


def test_progress_rate_and_eta_leave_out_compilation_and_restored_steps(monkeypatch):
    """A loop's first chunk may be mostly compilation, and a stage compiles between its loops:
    the rate and the ETA count the time between chunks without JAX's compilation spans (merged:
    nested traces overlap) and the chunk's dispatching call (in tqdm's average the ETA was
    several times too long for hundreds of steps); restored steps are not timed."""
    spans = collections.deque()
    monkeypatch.setattr(progress, "_compile_spans", spans)
    bar = progress.progress_bar(1100, "W+ embedding", 8)
    clock = [0.0]
    bar._time = lambda: clock[0]
    bar.start_t = bar.last_print_t = bar.mark = 0.0
    try:
        assert bar.format_dict["rate"] is None and "<?, ?step/s" in str(bar)  # unknown, not 0
        bar.skip(100)  # restored
        clock[0] = 37.0
        bar.advance(10, "loss 0.5", excluded=(0.2, 36.8))  # 36.6 s compiling in the call, 0.4 s of steps
        assert bar.format_dict["rate"] == pytest.approx(25.0)
        spans += [(37.1, 38.1), (37.3, 37.8), (38.0, 38.6)]  # compiling between loops, nested spans
        clock[0] = 39.0
        bar.advance(10, "loss 0.4", excluded=(38.9, 38.901))
        assert bar.format_dict["rate"] == pytest.approx(20 / (0.4 + 2.0 - 1.5 - 0.001))
        clock[0] = 39.4
        bar.advance(10, "loss 0.3", excluded=(39.0, 39.001))
        assert bar.format_dict["rate"] == pytest.approx(30 / 1.298)
        assert "130/1100 [00:39<00:41, 23.11step/s, loss 0.3]" in str(bar)  # (1100 - 130) / 23.11 s left
    finally:
        bar.close()


def test_compilation_spans_are_heard():
    """The events that the bars leave out exist in this JAX (else the ETA would silently include
    compilation again)."""
    progress._listen_to_compilation()
    before = time.time()
    jax.jit(lambda x: jnp.cos(x) * 3.25)(jnp.ones(7)).block_until_ready()
    assert progress._busy(progress._compile_spans, before, time.time()) > 0


def _count_step(consts, state, data, i, cfg):
    return state + data, {"loss": state}


def test_a_stage_has_one_bar_over_its_batches_and_loops(capsys):
    """StageProgress: one bar, total = batches x steps, advanced by every loop of every batch,
    its postfix naming the batch and the loop; a loop that does not run is skipped."""
    with progress.StageProgress("Alignment", 5, 2, 6 + 4, unit="pair") as stage:
        for batch, padded in batching.batches(list(range(5)), 2, "progress_test"):
            stage.next_batch()
            x = jnp.zeros((len(padded),))
            x, _ = loop.run(_count_step, EmbedConfig(chunk=2), (), x, jnp.ones_like(x), 6,
                            loop=loop.Loop("Align step 1"), hook=loop_hook.PipelineHook(stage))
            if stage.batch < 3:
                x, _ = loop.run(_count_step, EmbedConfig(chunk=2), (), x, jnp.ones_like(x), 4,
                                loop=loop.Loop("Align step 2"), hook=loop_hook.PipelineHook(stage))
            else:
                stage.skip(4)
            assert stage.bar.n == stage.batch * 10
            np.testing.assert_array_equal(x, 10.0 if stage.batch < 3 else 6.0)
        assert stage.bar.total == 30 and stage.bar.postfix.startswith("batch 3/3, Align step 1: loss")
    err = capsys.readouterr().err
    assert "Alignment (5 pairs)" in err and "30/30" in err and "Align step 2 (" not in err  # no bar of its own
    with progress.StageProgress("Blend", 0, 4, 400) as stage:  # nothing to do: no bar
        assert stage.bar is None and stage.loop("Blend", 0) is None


def test_idle_steps_of_the_last_chunk_change_nothing(consts):
    """7 steps in chunks of 4 (one compilation; the second chunk's last step idle) equal 7
    steps in chunks of 7, and the last live step's metrics are reported."""
    targets = render_targets(consts, known_w_plus(consts, 1, seed=12))
    cfg = EmbedConfig(w_steps=7, lpips_size=32, noise="const")
    a, metrics_a = embedding.embed_w_plus(consts, targets, dataclasses.replace(cfg, chunk=4))
    b, metrics_b = embedding.embed_w_plus(consts, targets, dataclasses.replace(cfg, chunk=7))
    assert_adam_close(a, b, steps=7)
    np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=1e-4)


def test_sharded_over_four_cpu_devices_equals_unsharded(consts, tmp_path):
    """2 images sharded over 4 forced CPU devices (padded to 4) in a subprocess equal the same
    batch on this process's single device (whose programs the other tests here share)."""
    script = textwrap.dedent("""
        import sys, jax, numpy as np
        sys.path.insert(0, sys.argv[1])
        import conftest as t
        from barbershop_jax.config import EmbedConfig
        from barbershop_jax.stages import embed as embedding
        assert len(jax.devices()) == 4, jax.devices()
        consts = t.tiny_models(parser=False)
        targets = t.render_targets(consts, t.known_w_plus(consts, 2, seed=4))
        cfg = EmbedConfig(w_steps=4, fs_steps=2, lpips_size=32)
        w, _ = embedding.embed_w_plus(consts, targets, cfg)
        li, f, _ = embedding.embed_fs(consts, targets, w, cfg)
        np.savez(sys.argv[2], w=np.asarray(w), li=np.asarray(li), f=np.asarray(f))
        print("sharded ok", w.shape)
    """)
    # JAX's own option, not XLA_FLAGS' --xla_force_host_platform_device_count: the XLA flags are
    # part of every persistent cache key, so with them changed the subprocess compiled the tiny
    # models' initialisation again (18 s against 3.7 s read from the suite's cache).
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4"}
    out = tmp_path / "sharded.npz"
    done = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__), str(out)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sharded ok (2, 10, 64)" in done.stdout
    # The idle devices are named once (both stages pad 2 to 4).
    assert done.stderr.count("a batch of 2 over 4 devices runs as 4 (2 copies)") == 1, done.stderr[-2000:]
    targets = render_targets(consts, known_w_plus(consts, 2, seed=4))
    cfg = EmbedConfig(w_steps=4, fs_steps=2, lpips_size=32)
    w, _ = embedding.embed_w_plus(consts, targets, cfg)
    li, f, _ = embedding.embed_fs(consts, targets, w, cfg)
    with np.load(out) as sharded:
        assert_adam_close(sharded["w"], w)
        assert_adam_close(sharded["f"], f, steps=2)
        assert_adam_close(sharded["li"], li, steps=2)


# ------------------------------------------------------------------ files and cache
def _write_images(consts, folder, n=2):
    return generator_images(consts, [f"face{i}" for i in range(n)], 11, folder, one_at_a_time=True)


class _Counter:
    """Counts the distinct images each stage optimises (a short batch is padded with repeats)."""

    def __init__(self, monkeypatch):
        self.w = self.fs = 0
        real_w, real_fs = embedding.embed_w_plus, embedding.embed_fs
        distinct = lambda targets: len(np.unique(np.asarray(jax.random.key_data(targets.key)  # noqa: E731
                                                            if jnp.issubdtype(targets.key.dtype, jax.dtypes.prng_key)
                                                            else targets.key), axis=0))

        def w(*a, **k):
            self.w += distinct(a[1])
            return real_w(*a, **k)

        def fs(*a, **k):
            self.fs += distinct(a[1])
            return real_fs(*a, **k)

        monkeypatch.setattr(embedding, "embed_w_plus", w)
        monkeypatch.setattr(embedding, "embed_fs", fs)


def test_cache_skips_done_work_and_recomputes_damage(consts, tmp_path, monkeypatch):
    paths = _write_images(consts, tmp_path / "in")
    cfg = EmbedConfig(w_steps=3, fs_steps=2, lpips_size=32)
    count = _Counter(monkeypatch)
    out = tmp_path / "out"
    first = pipeline_embed.embed(paths, out, consts, cfg, batch_size=2, progress=False)
    assert (count.w, count.fs) == (2, 2)
    second = pipeline_embed.embed(paths + paths[:1], out, consts, cfg, batch_size=2, progress=False)
    assert (count.w, count.fs) == (2, 2)  # nothing optimised again, duplicates embedded once
    np.testing.assert_array_equal(first[0].w_plus, second[0].w_plus)
    np.testing.assert_array_equal(first[1].structure_f, second[1].structure_f)
    # A damaged FS file is recomputed (the W+ is still cached).
    (out / "FS" / "face1.npz").write_bytes(b"not a zip")
    pipeline_embed.embed(paths, out, consts, cfg, batch_size=2, progress=False)
    assert (count.w, count.fs) == (2, 3)
    # Other settings are another key: recomputed.
    pipeline_embed.embed(paths[:1], out, consts, cfg.__class__(**{**cfg.__dict__, "seed": 1}), progress=False)
    assert (count.w, count.fs) == (3, 4)


def test_batches_pad_short_ones_to_a_compiled_size():
    def batches(n, b, stage, pad=False):
        return [(len(r), len(p)) for r, p in batching.batches(list(range(n)), b, stage, pad=pad)]
    assert batches(3, 4, "t1") == [(3, 3)]            # one small run: no padding
    assert batches(5, 2, "t1") == [(2, 2), (2, 2), (1, 2)]  # the short last batch takes the compiled size
    assert batches(1, 2, "t1", pad=True) == [(1, 2)]  # a run that pads: size 2, compiled above, reused
    assert batches(1, 3, "t1", pad=True) == [(1, 3)]  # and size 3
    assert batches(1, 5, "t1") == [(1, 1)]
    [(real, padded)] = batching.batches(["a", "b", "c"], 4, "t2")
    assert real == ["a", "b", "c"] and padded == ["a", "b", "c"]
    assert list(batching.batches(["a", "b", "c"], 2, "t3"))[1] == (["c"], ["c", "c"])


def test_a_short_last_batch_compiles_nothing_new(consts, tmp_path, monkeypatch):
    """Once a batch of 2 has run, 3 images (2 + a short 1) and then 1 more (padded: pad_batches)
    run every loop at batch size 2 and compile nothing. (The settings of the cache test above, so in a full run
    nothing compiles here at all.)"""
    paths = _write_images(consts, tmp_path / "in", n=6)
    cfg = EmbedConfig(w_steps=3, fs_steps=2, lpips_size=32)
    pipeline_embed.embed(paths[:2], tmp_path / "out", consts, cfg, batch_size=2, progress=False)
    sizes, real_w, real_fs = [], embedding.embed_w_plus, embedding.embed_fs
    monkeypatch.setattr(embedding, "embed_w_plus", lambda c, t, *a, **k: sizes.append(len(t.full)) or real_w(c, t, *a, **k))
    monkeypatch.setattr(embedding, "embed_fs", lambda c, t, *a, **k: sizes.append(len(t.full)) or real_fs(c, t, *a, **k))
    # XLA's compilation events, not jax.jit's own cache: they see every program compiled.
    with count_compilations() as compiled:
        pipeline_embed.embed(paths[2:5], tmp_path / "out", consts, cfg, batch_size=2, progress=False)
        pipeline_embed.embed(paths[5:], tmp_path / "out", consts, cfg, batch_size=2, progress=False, pad_batches=True)
    assert sizes == [2] * 6  # W+ and FS: 2 batches, then 1
    assert compiled == []


def test_files_are_in_the_official_format(consts, tmp_path):
    paths = _write_images(consts, tmp_path / "in", n=1)
    cfg = EmbedConfig(w_steps=3, fs_steps=2, lpips_size=32, noise="const")
    result = pipeline_embed.embed(paths, tmp_path / "out", consts, cfg, progress=False)[0]
    w = np.load(tmp_path / "out" / "W+" / "face0.npy")
    assert w.shape == (1, 10, 64) and w.dtype == np.float32
    with np.load(tmp_path / "out" / "FS" / "face0.npz") as z:
        assert set(z.files) == {"latent_in", "latent_F"}
        assert z["latent_in"].shape == (1, 10, 64) and z["latent_F"].shape == (1, 64, 32, 32)  # NCHW
        structure_f = jnp.asarray(z["latent_F"].transpose(0, 2, 3, 1))
        latent_in = jnp.asarray(z["latent_in"])
    g = consts.generator
    png = np.asarray(Image.open(tmp_path / "out" / "FS" / "face0.png"))
    np.testing.assert_array_equal(png, image_io.to_uint8(np.asarray(
        render_from_features(g, structure_f, latent_in)[0])))
    np.testing.assert_array_equal(result.w_plus, w[0])
    meta = json.loads((tmp_path / "out" / "W+" / "face0.json").read_text())
    assert meta["image_sha256"] == content_hash(np.asarray(Image.open(paths[0]).convert("RGB")))


@pytest.fixture(scope="module")
def consts_weights(consts, tmp_path_factory):
    """consts saved as a weights folder (no parser: the embedding needs none)."""
    from barbershop_jax.models import stylegan2, vgg16
    root = tmp_path_factory.mktemp("weights")
    stylegan2.save(consts.generator, root, pca=consts.pca)
    vgg16.save(consts.vgg, root)
    return root


def test_embed_command(consts, consts_weights, tmp_path, capsys):
    """The command on this file's models (--weights), at batch 1: the programs of
    test_batch_equals_single_runs' single runs, compiled already (on the embedded models they
    were programs of their own, some 25 s to compile)."""
    _write_images(consts, tmp_path / "in", n=2)
    args = ["embed", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--w-steps", "2",
            "--fs-steps", "2", "--batch-size", "1", "--weights", str(consts_weights), "--quiet"]
    assert cli.main(args) == 0
    assert "2 image(s) embedded" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out" / "FS").glob("*.npz")) == ["face0.npz", "face1.npz"]
    assert cli.main(["embed", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o2"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"barbershop-jax: error: {tmp_path / 'missing.png'}: no such file"]
    assert not (tmp_path / "o2").exists()
    # Again into the same folder: nothing embedded, and a note says so; --fresh embeds again.
    first = np.load(tmp_path / "out" / "W+" / "face0.npy")
    assert cli.main(args) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f"barbershop-jax: note: reused from {tmp_path / 'out'}/: 2 W+ embeddings, 2 FS; --fresh to redo them"]
    entries = [tmp_path / "out" / d / f"face{i}.{x}" for d, x in (("W+", "npy"), ("FS", "npz")) for i in (0, 1)]
    inodes = [p.stat().st_ino for p in entries]
    assert cli.main(args + ["--fresh"]) == 0
    assert "reused" not in capsys.readouterr().err
    assert all(p.stat().st_ino != ino for p, ino in zip(entries, inodes))  # each written again (atomic_write)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "W+" / "face0.npy"), first)
    assert cli.main(args + ["--fresh", "--import-official", str(tmp_path / "out")]) == 1
    assert "with --fresh" in capsys.readouterr().err


# ------------------------------------------------------------------ evaluation
def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from barbershop_jax.pipeline import evaluate
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    ref = structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255)
    assert abs(evaluate.ssim(a, b) - ref) <= 1e-9
    assert abs(evaluate.psnr(a, b) - peak_signal_noise_ratio(a, b, data_range=255)) <= 1e-9
    assert evaluate.ssim(a, a) == pytest.approx(1.0) and evaluate.psnr(a, a) == float("inf")


def test_evaluate_embedding_command(consts, tmp_path, capsys):
    paths = _write_images(consts, tmp_path / "in", n=2)
    cfg = EmbedConfig(w_steps=3, fs_steps=2, lpips_size=32)
    pipeline_embed.embed(paths[:1], tmp_path / "emb", consts, cfg, progress=False)
    assert cli.main(["evaluate-embedding", str(tmp_path / "in"), "--embeddings", str(tmp_path / "emb")]) == 0
    out = capsys.readouterr().out
    assert "no embeddings for 1 image(s)" in out and "mean of 1 | FS" in out
    report = json.loads((tmp_path / "emb" / "evaluation.json").read_text())
    assert [(r["name"], r["stage"]) for r in report["images"]] == [("face0", "W+"), ("face0", "FS")]
    assert report["missing"] == [str(paths[1])]
    render = np.asarray(Image.open(tmp_path / "emb" / "W+" / "face0.png"))
    from barbershop_jax.pipeline import evaluate
    assert report["images"][0]["psnr"] == pytest.approx(evaluate.psnr(render, np.asarray(Image.open(paths[0]))))

    # Nothing evaluated: one line and exit 1, no empty report; an unreadable image is listed
    # and the others go on; a folder that is not there is named.
    capsys.readouterr()
    rc = cli.main(["evaluate-embedding", str(paths[1]), "--embeddings", str(tmp_path / "emb"), "--out",
                   str(tmp_path / "none.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "no embeddings of the 1 image(s) given (embed them first" in err[0]
    assert not (tmp_path / "none.json").exists()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rc = cli.main(["evaluate-embedding", str(paths[0]), str(tmp_path / "broken.png"), "--embeddings",
                   str(tmp_path / "emb")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "broken.png: not a readable image" in err[0]
    report = json.loads((tmp_path / "emb" / "evaluation.json").read_text())
    assert len(report["images"]) == 2 and report["unreadable"][0]["path"] == str(tmp_path / "broken.png")
    assert cli.main(["evaluate-embedding", str(paths[0]), "--embeddings", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: no such embeddings folder" in capsys.readouterr().err


def test_official_outputs_are_imported(consts, tmp_path, monkeypatch):
    paths = _write_images(consts, tmp_path / "in", n=1)
    official = tmp_path / "official"
    (official / "W+").mkdir(parents=True)
    (official / "FS").mkdir()
    w = np.random.default_rng(0).normal(size=(1, 10, 64)).astype(np.float32)
    latent_f = np.random.default_rng(1).normal(size=(1, 64, 32, 32)).astype(np.float32)
    np.save(official / "W+" / "face0.npy", w)
    np.savez(official / "FS" / "face0.npz", latent_in=w, latent_F=latent_f)
    count = _Counter(monkeypatch)
    cfg = EmbedConfig(w_steps=3, fs_steps=2, lpips_size=32)
    result = pipeline_embed.embed(paths, tmp_path / "out", consts, cfg, progress=False, import_official=official)[0]
    assert (count.w, count.fs) == (0, 0)
    np.testing.assert_array_equal(result.w_plus, w[0])
    np.testing.assert_array_equal(result.structure_f, latent_f[0].transpose(1, 2, 0))
    assert json.loads((tmp_path / "out" / "FS" / "face0.json").read_text())["imported_from"] == str(official)


def test_two_processes_share_the_images(consts, consts_weights, tmp_path):
    """`embed --distributed`: two jax.distributed processes on this machine split the images
    and write into one output folder. (On this file's models at batch 1, as test_embed_command:
    the processes read those programs from the persistent cache, 22 s against 34 s when they
    compiled their own.)"""
    import socket
    _write_images(consts, tmp_path / "in", n=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "barbershop_jax.cli", "embed", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
           "--w-steps", "2", "--fs-steps", "2", "--batch-size", "1", "--weights", str(consts_weights), "--quiet",
           "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id"]
    procs = [subprocess.Popen(cmd + [str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, err[-2000:]
        assert f"1 image(s) embedded by process {i} of 2" in out
    assert sorted(p.name for p in (tmp_path / "out" / "FS").glob("*.npz")) == ["face0.npz", "face1.npz"]


def test_bfloat16_compute_is_an_option_cached_apart(consts):
    """bundle.with_dtype: both networks compute in bfloat16, close to float32, and the cache keys
    of their results differ from float32 ones (which keep their earlier keys)."""
    g16, vgg16_ = bundle.with_dtype(consts.generator, "bfloat16"), bundle.with_dtype(consts.vgg, "bfloat16")
    assert bundle.with_dtype(consts.generator, "float32") is consts.generator
    half = consts._replace(generator=g16, vgg=vgg16_)
    assert cache.tree_fingerprint(half) != cache.tree_fingerprint(consts)
    assert cache.tree_fingerprint(consts) == cache.tree_fingerprint(tiny_models(parser=False))
    w = consts.generator.mean_w_plus(1)
    full, low = render(consts.generator, w), render(g16, w)
    err = float(jnp.abs(full - low).max() / jnp.abs(full).max())
    assert 0 < err < 0.05, err
    x = full[:, ::2, ::2]
    features = jax.jit(lambda vgg, x: vgg.features(x))  # one program each, not one per operation
    taps, taps16 = features(consts.vgg, x), features(vgg16_, x)
    assert all(taps16[t].dtype == jnp.float32 for t in taps16)
    assert 0 < float(jnp.abs(taps["relu3_3"] - taps16["relu3_3"]).max()) < 0.05 * float(jnp.abs(taps["relu3_3"]).max())
    with pytest.raises(ValueError, match="dtype"):
        bundle.with_dtype(consts.generator, "float16")


def test_the_compilation_counter_sees_compilations():
    """The counter the no-recompilation tests rely on (conftest.count_compilations)."""
    from conftest import count_compilations

    fn, x, y = jax.jit(lambda x: x * 3 + 1), jnp.ones(7), jnp.zeros(7)
    with count_compilations() as first:
        fn(x)
    with count_compilations() as again:
        fn(y)
    assert any("lambda" in name for name in first) and again == []
