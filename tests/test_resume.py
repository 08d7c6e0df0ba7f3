"""Robust long runs: loops resume from their checkpoints with the numbers of an uninterrupted
run, a stop request ends a loop cleanly, and a diverging image fails alone. (SIGTERM and
SIGKILL of a whole transfer: test_transfer.py.)"""

import os
import signal
import time

import jax
import numpy as np
import pytest

from barbershop_jax.stages import embed as embedding
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline import loop_hook
from barbershop_jax.pipeline.store import resume
from barbershop_jax.config import EmbedConfig
from barbershop_jax.pipeline import embed as pipeline_embed
from conftest import generator_images, known_w_plus, render_targets, tiny_models


@pytest.fixture(scope="module")
def consts():
    return tiny_models(parser=False)


def stop_after(monkeypatch, n_checks):
    """resume.stop_requested() answers True from its n-th call on (it is asked once when a loop
    starts and once after every chunk), as if SIGINT had come."""
    calls = []

    def fake():
        calls.append(1)
        return len(calls) >= n_checks
    monkeypatch.setattr(resume, "stop_requested", fake)
    return calls


def test_interrupted_loop_resumes_with_the_uninterrupted_numbers(consts, tmp_path, monkeypatch):
    targets = render_targets(consts, known_w_plus(consts, 2, seed=21), noise="random")
    cfg = EmbedConfig(w_steps=12, lpips_size=32, chunk=4)
    clean, _ = embedding.embed_w_plus(consts, targets, cfg)

    ckpt = resume.LoopCheckpoint(tmp_path / "ckpt", every=100)
    stop_after(monkeypatch, 3)  # after the second chunk
    with pytest.raises(resume.Interrupted) as info:
        embedding.embed_w_plus(consts, targets, cfg, hook=loop_hook.PipelineHook(checkpoint=ckpt))
    assert (info.value.done, info.value.total, info.value.saved) == (8, 12, True)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step_0000008.npz"]  # saved on the stop

    monkeypatch.undo()
    resumed, metrics = embedding.embed_w_plus(consts, targets, cfg, hook=loop_hook.PipelineHook(checkpoint=ckpt))
    np.testing.assert_array_equal(resumed, clean)
    assert metrics is not None
    # Done and saved: a third call restores the finished loop and runs no step.
    again, metrics = embedding.embed_w_plus(consts, targets, cfg, hook=loop_hook.PipelineHook(checkpoint=ckpt))
    np.testing.assert_array_equal(again, clean)
    assert metrics is None


def test_checkpoints_that_do_not_fit_are_ignored(consts, tmp_path):
    targets = render_targets(consts, known_w_plus(consts, 2, seed=22))
    cfg = EmbedConfig(w_steps=4, lpips_size=32, chunk=4)
    ckpt = resume.LoopCheckpoint(tmp_path / "ckpt", every=4)
    ckpt.folder.mkdir(parents=True)
    (ckpt.folder / "step_0000002.npz").write_bytes(b"not a zip")             # damaged
    np.savez(ckpt.folder / "step_0000003.npz", leaf_0000=np.zeros((7,)))    # another batch's
    clean, _ = embedding.embed_w_plus(consts, targets, cfg)
    got, metrics = embedding.embed_w_plus(consts, targets, cfg, hook=loop_hook.PipelineHook(checkpoint=ckpt))
    assert metrics is not None  # started over
    np.testing.assert_array_equal(got, clean)
    assert sorted(p.name for p in ckpt.folder.iterdir()) == ["step_0000004.npz"]


def test_a_diverging_image_fails_alone(consts, tmp_path, monkeypatch):
    """NaN in one image's target: that image is reported and nothing is written for it; the
    other image of its batch gets exactly what a clean run gives it."""
    paths = generator_images(consts, ["im0", "im1"], 23, tmp_path / "in", one_at_a_time=True)
    cfg = EmbedConfig(w_steps=3, fs_steps=2, lpips_size=32)
    clean = pipeline_embed.embed(paths, tmp_path / "clean", consts, cfg, batch_size=2, progress=False)

    real_targets = pipeline_embed._targets

    def poisoned(batch, decoded, cfg):
        t = real_targets(batch, decoded, cfg)
        bad = np.array([s.name == "im1" for s in batch])
        full = np.where(bad[:, None, None, None], np.nan, np.asarray(t.full))
        return t._replace(full=jax.numpy.asarray(full))
    monkeypatch.setattr(pipeline_embed, "_targets", poisoned)
    failures = []
    out = tmp_path / "out"
    # The FS stage has im0 alone left: padded to the clean run's batch of 2 (batching.batches),
    # where XLA's kernels compute it as they did there.
    got = pipeline_embed.embed(paths, out, consts, cfg, batch_size=2, progress=False, failures=failures,
                               pad_batches=True)
    assert [name for name, _ in failures] == ["im1"] and "diverged (NaN or infinity)" in failures[0][1]
    assert [e.name for e in got] == ["im0"]
    np.testing.assert_array_equal(got[0].w_plus, clean[0].w_plus)
    np.testing.assert_array_equal(got[0].structure_f, clean[0].structure_f)
    assert not list(out.glob("*/im1.*"))  # nothing written for the failed image
    assert not (out / resume.RESUME_DIR / "w_plus").exists() or not any((out / resume.RESUME_DIR / "w_plus").iterdir())
    with pytest.raises(pipeline_embed.NonFiniteError, match="im1.png: W\\+ embedding diverged"):
        pipeline_embed.embed(paths, tmp_path / "out2", consts, cfg, batch_size=2, progress=False)


def test_background_writes_keep_order_wait_and_report_errors():
    """image_io.BackgroundWrites: a write waits for those it comes after, leaving the block
    waits for all, a failed write is raised (and skips what comes after it), and an error of
    the block itself is the one that goes on."""
    import time

    done = []
    with image_io.BackgroundWrites(2) as writes:
        first = writes.submit(lambda: (time.sleep(0.05), done.append("first")))
        writes.submit(done.append, "second", after=[first])
    assert done == ["first", "second"]

    def disk_full():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with image_io.BackgroundWrites() as writes:
            failed = writes.submit(disk_full)
            writes.submit(done.append, "after a failure", after=[failed])
    assert "after a failure" not in done
    with pytest.raises(ValueError, match="the block's"):
        with image_io.BackgroundWrites() as writes:
            writes.submit(disk_full)
            raise ValueError("the block's own error")


def test_clearing_the_last_batch_removes_the_emptied_resume_folders(tmp_path):
    """A finished run leaves no empty OUT/.resume/: clearing a batch removes the stage folder
    and .resume/ when they end empty, never a folder that holds another batch's checkpoint,
    and nothing above .resume/."""
    state = {"w": np.zeros(3, np.float32)}
    a = resume.batch_checkpoint(tmp_path, "w_plus", ["a"], 2)
    b = resume.batch_checkpoint(tmp_path, "fs", ["b"], 2)
    a.save(state, 2)
    b.sub("mask").save(state, 4)
    resume.clear(a.folder)
    assert not (tmp_path / ".resume" / "w_plus").exists()
    assert resume.LoopCheckpoint(b.folder / "mask").restore(state)[1] == 4  # the other batch is kept
    resume.clear(b.folder)
    assert not (tmp_path / ".resume").exists() and tmp_path.is_dir()
    resume.clear(b.folder)  # already gone: nothing to do
    assert tmp_path.is_dir()


def test_clear_outside_a_resume_folder_removes_only_that_folder(tmp_path):
    (tmp_path / "out" / "batch").mkdir(parents=True)
    resume.clear(tmp_path / "out" / "batch")
    assert (tmp_path / "out").is_dir() and not (tmp_path / "out" / "batch").exists()


def test_a_checkpoint_write_survives_its_stage_folder_being_removed(tmp_path, monkeypatch):
    """clear() of another batch may remove the emptied stage folder between atomic_write's
    mkdir and its temporary file: the save tries again."""
    ckpt = resume.batch_checkpoint(tmp_path, "align", ["k"], 2)
    real, calls = resume.atomic_write, []

    def racing(path, write):
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(path.parent)
        return real(path, write)
    monkeypatch.setattr(resume, "atomic_write", racing)
    ckpt.save({"w": np.ones(2, np.float32)}, 6)
    assert len(calls) == 2 and ckpt.restore({"w": np.zeros(2, np.float32)})[1] == 6


# ----------------------------------------------------------------------------- stops outside the loops
def _every_file(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_loop_that_ends_with_a_stop_pending_raises_at_its_end(consts, tmp_path, monkeypatch):
    """A stop that comes during a loop's last chunk ends the run when the loop ends (saved at
    its last step), not at the next loop, after whatever work lies between the two."""
    targets = render_targets(consts, known_w_plus(consts, 2, seed=21), noise="random")
    cfg = EmbedConfig(w_steps=8, lpips_size=32, chunk=4)
    ckpt = resume.LoopCheckpoint(tmp_path / "ckpt", every=100)
    stop_after(monkeypatch, 3)  # asked at begin and after each chunk: the stop comes in the last chunk
    with pytest.raises(resume.Interrupted) as info:
        embedding.embed_w_plus(consts, targets, cfg, hook=loop_hook.PipelineHook(checkpoint=ckpt))
    assert (info.value.done, info.value.total, info.value.saved) == (8, 8, True)
    assert [p.name for p in ckpt.folder.iterdir()] == ["step_0000008.npz"]
    monkeypatch.undo()
    _, metrics = embedding.embed_w_plus(consts, targets, cfg, hook=loop_hook.PipelineHook(checkpoint=ckpt))
    assert metrics is None  # the same command goes on from the saved last step: no step runs


def test_a_signal_during_a_write_outside_the_loops_stops_when_the_file_is_whole(tmp_path):
    """SIGTERM in the middle of an atomic write, outside any loop: the write ends (renamed into
    place, no temporary file), then the run stops with the signal's number."""
    def write(f):
        f.write(b"first half ")
        signal.raise_signal(signal.SIGTERM)  # the handler runs in this thread, here
        time.sleep(0.1)
        f.write(b"second half")

    with pytest.raises(resume.Stopped) as info:
        with resume.handle_signals():
            image_io.atomic_write(tmp_path / "result.bin", write)
            time.sleep(5)  # not reached: the stop is raised when the write ends
    assert info.value.signum == signal.SIGTERM
    assert _every_file(tmp_path) == ["result.bin"]
    assert (tmp_path / "result.bin").read_bytes() == b"first half second half"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and not resume.stop_requested()


def test_a_stop_drops_queued_background_writes_and_waits_for_running_ones(tmp_path):
    """SIGTERM while results are queued for the writer threads: the running write ends whole,
    the queued ones are dropped (not minutes of writing), no temporary file is left, and a
    clean-up runs when what it comes after was written (only then)."""
    def slow_write(name):
        time.sleep(0.3)
        image_io.atomic_write(tmp_path / name, lambda f: f.write(name.encode()))

    started, cleaned = time.monotonic(), []
    with pytest.raises(resume.Stopped):
        with resume.handle_signals(), image_io.BackgroundWrites(1) as writes:
            queued = [writes.submit(slow_write, f"{i}.bin") for i in range(20)]  # 6 s of writing, one at a time
            writes.submit(cleaned.append, "after the running write", after=queued[:1], cleanup=True)
            writes.submit(cleaned.append, "after a dropped write", after=queued[:10], cleanup=True)
            time.sleep(0.1)
            signal.raise_signal(signal.SIGTERM)
            time.sleep(5)  # not reached
    assert time.monotonic() - started < 2
    assert _every_file(tmp_path) == ["0.bin"] and (tmp_path / "0.bin").read_bytes() == b"0.bin"
    assert cleaned == ["after the running write"]


def test_a_stop_while_reading_inputs_drops_the_reads_not_started(tmp_path, monkeypatch):
    """SIGTERM while the input images are read on the thread pool: the main thread stops at
    once, the reads not started are dropped, and only the running one is waited for."""
    from barbershop_jax.pipeline.files import sources

    paths = [image_io.save_png(tmp_path / f"im{i}.png", np.zeros((8, 8, 3), np.uint8)) for i in range(8)]
    real, started = sources.as_source, []

    def slow_read(path, **kwargs):
        started.append(path)
        if len(started) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # from a reading thread: the main thread handles it
        time.sleep(0.3)
        return real(path, **kwargs)
    monkeypatch.setattr(sources, "as_source", slow_read)
    monkeypatch.setattr(sources, "READ_THREADS", 1)
    began = time.monotonic()
    with pytest.raises(resume.Stopped):
        with resume.handle_signals():
            sources.read_sources(paths, progress=False)
            time.sleep(5)  # not reached
    assert time.monotonic() - began < 1.5 and len(started) == 1
