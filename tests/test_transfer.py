"""The whole transfer on the tiny config with reduced step counts: files in the official layout,
batches equal to single runs, the cache, the blend clamp, the command line and the Python API."""
import collections
import csv
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from barbershop_jax.models import bundle
from PIL import Image

from barbershop_jax.stages import blend as blending
from barbershop_jax import cli
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline.faces import landmarks
from barbershop_jax.pipeline.store import resume
from barbershop_jax import config
from barbershop_jax.pipeline.store import batch_files
from barbershop_jax.pipeline.runtime import batching
from barbershop_jax.pipeline import demo
from barbershop_jax.pipeline import hair_transfer
from barbershop_jax.pipeline.store import records
from barbershop_jax.pipeline import run
from barbershop_jax.stages import align as stage_align
from barbershop_jax.stages import blend as stage_blend
from barbershop_jax.stages import embed as stage_embed
from barbershop_jax.stages import target_mask as stage_target_mask
from barbershop_jax.pipeline.files import sources
from barbershop_jax.pipeline.store import cache
from barbershop_jax.stages import loop
from conftest import (BATCH_TRIPLES, STEPS, count_compilations, known_w_plus, no_model_planning, record_decodes,
                      render, tiny_transfer)
from barbershop_jax.config import TransferConfig
from barbershop_jax.models.bundle import Models

# 4 images, 4 triples (two with shape == colour: one alignment each), 6 distinct pairs: at
# batch size 2 every stage runs full batches, so each compiles once (conftest's BATCH_TRIPLES).
NAMED_TRIPLES = BATCH_TRIPLES
PAIRS = {("ann", "bob"), ("ann", "cid"), ("bob", "cid"), ("cid", "dan"), ("cid", "ann"), ("dan", "ann")}


@pytest.fixture(scope="module")
def batch_run(models, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch")
    path = dict(zip(("ann", "bob", "cid", "dan"), images))
    triples = [tuple(path[n] for n in t) for t in NAMED_TRIPLES]
    ht = tiny_transfer(models, out)
    return out, triples, ht.transfer_many(triples)


def test_under_jax_distributed_a_transfer_embeds_every_image_it_needs(batch_run, models, monkeypatch):
    """pipeline_embed.embed splits the images over jax.distributed's processes (embed --distributed);
    a transfer must not: each process needs every image of the triples it was given. As
    process 1 of 2 (faked), the batch run's triples all come back, read from its files."""
    out, triples, results = batch_run
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    ht = tiny_transfer(models, out)
    again = ht.transfer_many(triples)
    assert ht.failures == [] and all(r is not None for r in again)
    for a, b in zip(results, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


def test_outputs_use_the_official_names_shapes_and_keys(batch_run, models):
    out, triples, results = batch_run
    g = models.generator
    n, d, c = g.config.n_latent, g.config.style_dim, g.config.channels(32)
    for name in ("ann", "bob", "cid", "dan"):
        assert np.load(out / "W+" / f"{name}.npy").shape == (1, n, d)
        with np.load(out / "FS" / f"{name}.npz") as z:
            assert set(z.files) == {"latent_in", "latent_F"}
    assert {tuple(p.stem.split("_")) for p in (out / "Align_realistic").glob("*.npz")} == PAIRS
    for f, r in PAIRS:
        with np.load(out / "Align_realistic" / f"{f}_{r}.npz") as z:
            assert set(z.files) == {"latent_in", "latent_F"}
            assert z["latent_in"].shape == (1, n, d) and z["latent_F"].shape == (1, c, 32, 32)
            with np.load(out / "FS" / f"{f}.npz") as fs:
                np.testing.assert_array_equal(z["latent_in"], fs["latent_in"])  # official: the face's FS latent
        assert (out / "Align_realistic" / f"{f}_{r}.png").is_file()
        assert (out / f"vis_mask_{f}_{r}_realistic.png").is_file()
    for (f, s, col), result in zip(NAMED_TRIPLES, results):
        with np.load(out / "Blend_realistic" / f"{f}_{s}_{col}.npz") as z:
            assert set(z.files) == {"latent_in", "latent_F"}
            np.testing.assert_allclose(z["latent_in"][0], result.latent_in)
            with np.load(out / "Align_realistic" / f"{f}_{s}.npz") as a:  # official: F of Align face_shape
                np.testing.assert_array_equal(z["latent_F"], a["latent_F"])
        final = out / f"{f}_{s}_{col}_realistic.png"
        assert result.path == final
        np.testing.assert_array_equal(image_io.load_rgb(final), result.image)
        assert result.image.shape == (64, 64, 3) and result.target_labels.shape == (64, 64)
        assert (result.target_labels == 10).any()  # the fixture's parser sees hair


def test_blend_weights_stay_between_face_and_colour(batch_run):
    """w = s1 + u (s3 - s1) with u clamped to [0, 1]: every blended latent lies between the
    face's and the colour reference's FS latents."""
    out, _, results = batch_run
    for r in results:
        with np.load(out / "FS" / f"{r.face}.npz") as z:
            s1 = z["latent_in"][0]
        with np.load(out / "FS" / f"{r.color}.npz") as z:
            s3 = z["latent_in"][0]
        lo, hi = np.minimum(s1, s3), np.maximum(s1, s3)
        assert np.all(r.latent_in >= lo - 1e-6) and np.all(r.latent_in <= hi + 1e-6)


def test_blend_clamp_keeps_u_in_the_unit_interval(models):
    """Started next to 0 and 1, Adam steps push u past them; the clamp after each step holds
    it inside. (The batch run's settings and shapes: its compiled step is reused.)"""
    m = models
    g = m.generator
    cfg = TransferConfig(noise="random").resolve(64)
    w = known_w_plus(m, 2, seed=5)
    f, _ = jax.jit(lambda g, w: g.features(w, block=3, noise="const"))(g, w)  # one program, not one per operation
    small = jax.image.resize(render(g, w), (2, 32, 32, 3), "linear")
    hair = jnp.zeros((2, 64, 64)).at[:, 8:40, 12:52].set(1.0)
    inputs = blending.BlendInputs(w, w[::-1], f, f, small, small[::-1], hair[:, ::2, ::2], hair[::-1, ::2, ::2],
                                  jnp.stack([jax.random.PRNGKey(0)] * 2),
                                  jnp.asarray(np.stack([cfg.region_classes(m.parser.labels)] * 2)))
    face_mask, hair_mask = blending.blend_masks(m, inputs, cfg=cfg.step_config(keep=("blend_smooth",)))  # as blend()
    u = jnp.where(jnp.arange(w.shape[2]) % 2 == 0, 0.004, 0.996) * jnp.ones_like(w)
    state = blending.optimizer().start(u, cfg.learning_rate)
    state, _ = loop.run(blending._step, cfg, m, state, (inputs, face_mask, hair_mask), 3)
    u = np.asarray(state.params)
    assert np.all(u >= 0.0) and np.all(u <= 1.0)
    assert np.mean(u == 0.0) > 0.05 and np.mean(u == 1.0) > 0.05, (np.mean(u == 0.0), np.mean(u == 1.0))


def test_batch_equals_single_runs(batch_run, models, tmp_path):
    out, triples, batched = batch_run
    single_out = tmp_path / "single"
    for sub in ("W+", "FS"):  # the same embeddings: this test is about the transfer stages
        shutil.copytree(out / sub, single_out / sub)
    for t, expected in list(zip(triples, batched))[:3]:
        # Alone, at the batch run's size: padded (batching.batches), so nothing compiles again:
        # not the loops' chunks, not the stages' other programs, not a triple's eager work.
        with count_compilations() as compiled:
            [one] = tiny_transfer(models, single_out, batch_size=2).transfer_many([t])
        assert compiled == [], compiled
        agree = np.mean(one.target_labels == expected.target_labels)
        assert agree >= 0.995, agree  # argmax labels: a float-level tie may flip a pixel
        if agree == 1.0:
            np.testing.assert_allclose(one.structure_f, expected.structure_f, atol=5e-3 * np.abs(expected.structure_f).max())
            np.testing.assert_allclose(one.latent_in, expected.latent_in, atol=0.03)  # Adam steps of lr 0.01
            assert np.abs(one.image.astype(int) - expected.image).mean() < 1.0


def test_cached_rerun_does_no_work(batch_run, models, monkeypatch):
    out, triples, first = batch_run
    calls = []
    for module, name in ((stage_target_mask, "gan_inpaint"), (stage_align, "align"),
                         (stage_blend, "blend"), (stage_embed, "embed_w_plus"),
                         (stage_embed, "embed_fs")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: calls.append(_n))
    again = tiny_transfer(models, out).transfer_many(triples)
    assert calls == []
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.target_labels, b.target_labels)
        np.testing.assert_array_equal(a.latent_in, b.latent_in)


def test_a_rerun_says_what_it_reused_and_fresh_redoes_it(batch_run, models, tmp_path):
    """Into the same folder, a re-run reuses every finished entry and counts them (the note the
    commands print); with fresh=True it redoes them all, to the same numbers, and counts what
    it made; what a fresh run made itself it reuses (one face, one embedding)."""
    out, triples, first = batch_run
    everything = {"W+": 4, "FS": 4, "alignment": 6, "blend": 4}
    ht = tiny_transfer(models, out)
    ht.transfer_many(triples)
    assert ht.reuse.reused == everything and sum(ht.reuse.computed.values()) == 0
    assert ht.reuse.note(out) == (f"reused from {out}/: 4 W+ embeddings, 4 FS, 6 alignments, 4 blends; "
                                  "--fresh to redo them")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    fresh = tiny_transfer(models, copy, fresh=True)
    again = fresh.transfer_many(triples)
    assert sum(fresh.reuse.reused.values()) == 0 and fresh.reuse.computed == everything
    assert fresh.reuse.note(copy) is None
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.latent_in, b.latent_in)
    fresh.transfer_many(triples[:1])  # the same object: its own entries are reused, not counted as found
    assert sum(fresh.reuse.computed.values()) == 0 and sum(fresh.reuse.reused.values()) == 0


def test_the_end_table_keeps_the_rows_of_reused_stages():
    reuse = cache.Reuse(reused=collections.Counter({"W+": 2, "FS": 2, "alignment": 1, "blend": 1}),
                        computed=collections.Counter({"blend": 1}))
    rows = batch_files.summary([], {"embedding": 0.5, "parsing": 1.0, "blending": 2.0, "paste-back": 0.2},
                               reuse=reuse).splitlines()
    assert rows[2:9] == ["| embedding | 0.5 (reused) |", "| parsing | 1.0 |", "| target mask | reused |",
                         "| alignment | reused |", "| blending | 2.0 |", "| paste-back | 0.2 |", "| total | 3.7 |"]
    plain = batch_files.summary([], {"embedding": 0.5, "blending": 2.0}).splitlines()
    assert plain[2:5] == ["| embedding | 0.5 |", "| blending | 2.0 |", "| total | 2.5 |"]


def test_parts_split_the_rows_by_face_and_do_each_once(batch_run, tmp_path, capsys, monkeypatch):
    """transfer --part K/N on N hosts with no coordinator: together the parts do every row
    once; a face's rows (all its alignments) stay in one part; each part writes its own
    failures file; the parts balance the rows."""
    _, triples, _ = batch_run
    rows = triples + [(triples[0][0], triples[1][1], triples[2][2]), (triples[0][0], triples[3][1], triples[0][2])]
    manifest = tmp_path / "triples.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["face", "shape", "color"])
        w.writerows([[str(p) for p in t] for t in rows])
        w.writerow([str(triples[1][0]), "missing.png", str(triples[1][2])])  # bob's: a bad row
    ran = {}
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": (None, None))
    no_model_planning(monkeypatch)
    for k in (1, 2, 3):
        monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many",
                            lambda self, good, k=k, **kw: ran.setdefault(k, [tuple(s.path for s in t) for t in good])
                            and [])
        rc = cli.main(["transfer", "--pairs", str(manifest), "--out", str(tmp_path / "o"), "--quiet",
                       "--part", f"{k}/3"])
        assert rc == (1 if k == ran_part_of_bob(ran, triples) else 0), (k, ran)
    done = [t for k in ran for t in ran[k]]
    assert sorted(done) == sorted(tuple(t) for t in rows)  # every good row, once
    faces = {k: {t[0] for t in ran[k]} for k in ran}
    assert all(not faces[a] & faces[b] for a in faces for b in faces if a < b)  # a face in one part
    # By rows (bad ones too): ann 3, bob 2, cid 1, dan 1 -> ann | bob | cid and dan together.
    assert sorted(len(ran[k]) for k in ran) == [1, 2, 3]
    assert any(faces[k] == {triples[2][0], triples[3][0]} for k in faces)
    bad = [p.name for p in (tmp_path / "o").glob("failures*.csv")]
    assert bad == [f"failures.part{ran_part_of_bob(ran, triples)}of3.csv"]
    assert "part 1 of 3: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["transfer", "--pairs", str(manifest), "--out", str(tmp_path / "o"), "--part", "4/3"])
    assert e.value.code == 2 and "expected K/N with 1 <= K <= N" in capsys.readouterr().err


def ran_part_of_bob(ran, triples):
    """The part that got bob's rows (bob's bad row fails there)."""
    return next((k for k, done in ran.items() if any(t[0] == triples[1][0] for t in done)), None)


def test_cli_batch_reports_bad_rows_and_goes_on(batch_run, tmp_path, capsys, monkeypatch):
    out, triples, _ = batch_run
    manifest = tmp_path / "triples.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["face", "shape", "color"])
        w.writerow([str(p) for p in triples[0]])
        w.writerow([str(triples[0][0]), "missing.png", str(triples[0][2])])
    ran = []
    monkeypatch.setattr(bundle, "load",
                        lambda weights=None, dtype="float32", parser_dtype="float32":
                        ran.append((weights, dtype, parser_dtype)) or (None, None))
    no_model_planning(monkeypatch)
    made = lambda t: records.TransferResult(*(s.name for s in t), t[1].name, *[None] * 6,  # noqa: E731
                                             Path(f"o/{t[0].name}_result.png"))
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many",
                        lambda self, good, **k: ran.append(good) or [made(t) for t in good])
    rc = cli.main(["transfer", "--pairs", str(manifest), "--out", str(tmp_path / "o"), "--quiet",
                   "--dtype", "bfloat16", "--parser-dtype", "bfloat16"])
    err = capsys.readouterr().err
    assert rc == 1
    assert ran[0] == (None, "bfloat16", "bfloat16")  # --dtype and --parser-dtype reach the models
    assert "missing.png: no such file" in err and "1 of 2 triple(s) failed" in err
    assert [tuple(source.path for source in t) for t in ran[1]] == [tuple(triples[0])]  # the good row still ran
    with open(tmp_path / "o" / "failures.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["shape"].endswith("missing.png")
    with open(tmp_path / "o" / "results.csv") as f:  # which file came of which row
        rows = list(csv.DictReader(f))
    assert rows == [{"face": str(triples[0][0]), "shape": str(triples[0][1]), "color": str(triples[0][2]),
                     "region": "", "result": f"o/{Path(triples[0][0]).stem}_result.png", "pasted": ""}]


def test_cli_single_bad_input_is_one_line(tmp_path, capsys):
    rc = cli.main(["transfer", "--face", str(tmp_path / "nope.png"), "--shape", "a.png", "--color", "b.png",
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("barbershop-jax: error: ") and "nope.png" in err[0]


def test_cli_manifest_needs_its_columns_and_rows(tmp_path, capsys):
    manifest = tmp_path / "t.csv"
    manifest.write_text("face,shape\na.png,b.png\n")
    rc = cli.main(["transfer", "--pairs", str(manifest), "--out", str(tmp_path / "o")])
    assert rc == 1 and "missing column(s) color" in capsys.readouterr().err
    manifest.write_text("face,shape,color\n")
    rc = cli.main(["transfer", "--pairs", str(manifest), "--out", str(tmp_path / "o")])
    assert rc == 1 and "no triples" in capsys.readouterr().err
    manifest.write_text("face,shape,color\na.png,b.png,c.png\n")  # every row bad: still listed
    rc = cli.main(["transfer", "--pairs", str(manifest), "--out", str(tmp_path / "o")])
    assert rc == 1 and "a.png: no such file" in capsys.readouterr().err
    assert (tmp_path / "o" / "failures.csv").read_text().count("no such file") == 1


def test_the_end_table_lists_a_long_run_in_its_results_file():
    results = [records.TransferResult(f"f{i}", "s", "c", "s", *[None] * 6, Path(f"o/f{i}_s_c.png"))
               for i in range(batch_files.SUMMARY_ROWS + 3)]
    table = batch_files.summary(results, {"embedding": 1.0}, Path("o/results.csv")).splitlines()
    assert table[-1] == "... and 3 more: every result is listed in o/results.csv"
    assert sum("_s_c.png" in line for line in table) == batch_files.SUMMARY_ROWS
    assert sum("_s_c.png" in line for line in batch_files.summary(results, {}).splitlines()) == len(results)


def test_long_runs_go_in_waves_that_keep_only_file_names(monkeypatch):
    """HairTransfer.transfer_files (the batch mode's): transfer_many over `wave` triples at a
    time, its options, edits and regions with them; results keep their names and paths, not
    their arrays (memory stays flat); timings and failures add up."""
    calls = []

    def many(self, triples, *, edits=None, regions=None, **options):
        calls.append((triples, edits, regions, options))
        self.timings, self.failures = {"embedding": 1.0, "blending": 0.5}, [(t, "diverged") for t in triples
                                                                            if t[0] == "bad"]
        self.reuse = cache.Reuse(reused=collections.Counter({"W+": 1}), computed=collections.Counter({"blend": 2}))
        return [None if t[0] == "bad" else records.TransferResult(
            *t, t[1], np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), np.zeros(3), np.zeros(3), None, None,
            Path(f"{t[0]}.png"), np.zeros((8, 8, 3), np.uint8), Path(f"{t[0]}_pasted.png")) for t in triples]
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many", many)
    ht = hair_transfer.HairTransfer(Models(None, None, None, None), compile_cache=False)  # transfer_many is the stub
    triples = [("f0", "s", "c"), ("bad", "s", "c"), ("f2", "s", "c"), ("f3", "s", "c"), ("f4", "s", "c")]
    out = ht.transfer_files(triples, wave=2, edits=list("abcde"), regions=[None, "lips", None, None, "hair"],
                            paste_back=True)
    assert [(c[0], c[1], c[2]) for c in calls] == [(triples[:2], ["a", "b"], [None, "lips"]),
                                                   (triples[2:4], ["c", "d"], [None, None]),
                                                   (triples[4:], ["e"], ["hair"])]
    assert all(c[3] == {"paste_back": True} for c in calls)
    assert out[1] is None and [r.path.name for r in out if r] == ["f0.png", "f2.png", "f3.png", "f4.png"]
    assert all(r.pasted_path.name.endswith("_pasted.png") and r.image is None and r.pasted is None
               and r.structure_f is None for r in out if r)
    assert ht.timings == {"embedding": 3.0, "blending": 1.5} and ht.failures == [(triples[1], "diverged")]
    assert ht.reuse.reused == {"W+": 3} and ht.reuse.computed == {"blend": 6}
    assert hair_transfer.HairTransfer.transfer_files.__kwdefaults__["wave"] == config.TRANSFER_WAVE


def test_a_wave_line_says_how_long_is_left():

    class Lines(logging.Handler):
        lines: list = []

        def emit(self, record):
            self.lines.append(record.getMessage())
    logger, handler, level = logging.getLogger("barbershop_jax"), Lines(), logging.getLogger("barbershop_jax").level
    logger.addHandler(handler)  # (the command line's handler stops propagation to pytest's)
    logger.setLevel(logging.INFO)
    try:
        batching.log_wave(1, 5, 1, 256, 1200, "triples", time.time())
        batching.log_wave(3, 5, 513, 768, 1200, "triples", time.time() - 3600)  # 2 waves in an hour
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.lines == ["wave 1 of 5: triples 1 to 256 of 1200",
                             "wave 3 of 5: triples 513 to 768 of 1200; about 1 h 30 min left"]


def test_options_are_routed_and_unknown_ones_refused():
    embed, tr = config.split_options({"w_steps": 5, "blend_steps": 7, "seed": 3})
    assert embed == {"w_steps": 5, "seed": 3} and tr == {"blend_steps": 7, "seed": 3}
    with pytest.raises(TypeError, match="colour_steps"):
        config.split_options({"colour_steps": 1})


def test_demo_runs_the_whole_transfer(models, tmp_path, monkeypatch, capsys):
    """The README's main command, on the fixture's models (the embedded ones compile longer):
    the bundled photo is aligned, transferred and pasted back."""
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    grid = demo.run_transfer(tmp_path, steps=STEPS, progress=False, batch_size=2)  # compiled by earlier tests
    # photo | face crop | shape | colour | result | mask | pasted, titled, at least 256 px each
    sheet = np.asarray(Image.open(grid))
    assert sheet.shape[1] >= 7 * demo.SHEET_PANEL >= 7 * 256 and sheet.shape[0] > demo.SHEET_PANEL
    assert not (tmp_path / ".resume").exists()  # every checkpoint cleared, no empty folder left
    assert (tmp_path / "photo_shape_color_realistic.png").is_file()
    assert (tmp_path / "aligned" / "photo.png").is_file() and (tmp_path / "aligned" / "photo.crop.json").is_file()
    photo = image_io.load_rgb(demo.example_images()["photo"])
    pasted = image_io.load_rgb(tmp_path / "photo_shape_color_realistic_pasted.png")
    assert pasted.shape == photo.shape
    changed = (pasted != photo).any(-1)
    assert changed[60:160, 180:270].mean() > 0.5  # the face
    assert not changed[250:].any() and not changed[:, 350:].any()  # far from the face's crop square: untouched
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "no real hairstyle" in out
    assert "barbershop-jax transfer --align --paste-back --face PHOTO.jpg" in out
    assert "reused" not in out
    # Again into the same folder: every finished stage is reused, said in a note and in the table.
    again = demo.run_transfer(tmp_path, steps=STEPS, progress=False, batch_size=2)
    np.testing.assert_array_equal(np.asarray(Image.open(again)), sheet)
    out = capsys.readouterr().out
    assert f"note: reused from {tmp_path}/: 3 W+ embeddings, 3 FS, 2 alignments, 1 blend; --fresh" in out
    assert "| alignment | reused |" in out and "| blending | reused |" in out


def test_cli_align_and_paste_back_route_photos_and_report_faceless_ones(models, tmp_path, capsys, monkeypatch):
    """transfer --align --paste-back --pairs: photos are cropped first (OUT/aligned/), a photo
    without landmarks fails its row alone, and the crops reach the transfer with paste-back on."""
    import shutil

    photo = demo.example_images()["photo"]
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(photo, tmp_path / name)
    shutil.copy(landmarks.sidecar_path(photo), tmp_path / "a.landmarks.json")
    (tmp_path / "b.landmarks.json").write_text("[]")  # no face in b
    manifest = tmp_path / "t.csv"
    manifest.write_text("face,shape,color\na.jpg,a.jpg,a.jpg\nb.jpg,a.jpg,a.jpg\n")
    calls = []
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many", lambda self, good, **k: calls.append((good, k)) or [])
    out = tmp_path / "o"
    rc = cli.main(["transfer", "--pairs", str(manifest), "--out", str(out), "--align", "--paste-back", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "b.jpg: no face found" in err and "1 of 2 triple(s) failed" in err
    (good, kwargs), = calls
    assert [tuple(s.path for s in t) for t in good] == [(out / "aligned" / "a.png",) * 3]
    assert kwargs["paste_back"] is True
    assert image_io.load_rgb(out / "aligned" / "a.png").shape == (64, 64, 3)  # the generator's size

    # --paste-back on a face that is no crop: refused before any model is loaded.
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": pytest.fail("models loaded"))
    rc = cli.main(["transfer", "--face", str(tmp_path / "a.jpg"), "--shape", str(tmp_path / "a.jpg"), "--color",
                   str(tmp_path / "a.jpg"), "--out", str(out), "--paste-back"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "a.jpg: no crop transform (a.crop.json)" in err[0]


# ----------------------------------------------------------------------------- whole runs, killed
def _run_until(cmd, pattern_dir: Path, glob: str, sig, timeout=600):
    """Start cmd; when a file matching `glob` appears under `pattern_dir`, send `sig`."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if pattern_dir.exists() and any(pattern_dir.glob(glob)):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _visible_files(root: Path):
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _assert_complete(path: Path):
    """A visible file is whole: it reads as what its name says."""
    if path.suffix == ".png":
        with Image.open(path) as im:
            im.load()
    elif path.suffix in (".npz", ".npy"):
        data = np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            [data[k] for k in data.files]
    elif path.suffix == ".json":
        json.loads(path.read_text())


def test_sigterm_then_sigkill_mid_stage_then_rerun_equals_an_uninterrupted_run(batch_run, models, images,
                                                                               weights_dir, tmp_path):
    """The command line in a subprocess: stopped by SIGTERM in the target mask, killed by
    SIGKILL in the blend, run again: the same results as an uninterrupted run, no finished
    stage redone, nothing half-written ever visible. (After batch_run: its compiled programs
    are in the persistent cache, so the subprocesses compile nothing.)"""
    for name, path in zip(("ann", "bob"), images):
        shutil.copy(path, tmp_path / f"{name}.png")
    (tmp_path / "t.csv").write_text("face,shape,color\nann.png,bob.png,bob.png\nbob.png,ann.png,ann.png\n")
    # Long target-mask and blend loops: each signal lands while its loop still runs (with 2
    # inpainting steps the loop could end before SIGTERM arrived, and the stop came in align 1).
    steps = {**STEPS, "inpaint_steps": 20, "blend_steps": 40}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in steps.items()]

    def command(out):
        return [sys.executable, "-m", "barbershop_jax.cli", "transfer", "--pairs", str(tmp_path / "t.csv"),
                "--weights", str(weights_dir), "--out", str(out), "--batch-size", "2", "--checkpoint-every", "4",
                "--quiet", *flags]

    out = tmp_path / "out"
    resume_dir = out / resume.RESUME_DIR
    # 1. SIGTERM as soon as the target-mask loops have saved a checkpoint: a clean stop.
    rc, _, err = _run_until(command(out), resume_dir / "align", "*/mask/*/step_*.npz", signal.SIGTERM)
    assert rc == 143, err[-2000:]
    assert "interrupted in Target mask" in err and "run the same command again to resume" in err
    # 2. SIGKILL in the middle of the blend: no chance to clean up.
    rc, _, err = _run_until(command(out), resume_dir / "blend", "*/step_*.npz", signal.SIGKILL)
    assert rc == -signal.SIGKILL, err[-2000:]
    assert "Target mask 1/2: resumed at step" in err  # run 2 went on from run 1's checkpoint
    for path in _visible_files(out):
        _assert_complete(path)  # nothing half-written is visible
    finished = {p: p.stat().st_mtime_ns for p in _visible_files(out) if p.parent.name in ("W+", "FS", "Align_realistic")}
    assert len(finished) >= 2 * 4 + 2 * 3  # W+ and FS (npy/npz, png, json) of 2 images, 2 alignments
    results = ["ann_bob_bob_realistic.png", "bob_ann_ann_realistic.png"]
    assert not any((out / name).exists() for name in results)  # killed before any result
    # 3. The same command again: the blend resumes, nothing finished is redone.
    rc, _, err = _run_until(command(out), tmp_path / "never", "*", signal.SIGKILL)
    assert rc == 0, err[-2000:]
    assert "Blend: resumed at step" in err
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert not resume_dir.exists() or not list(resume_dir.rglob("*.npz"))  # checkpoints removed when done

    # The same as a run that was never interrupted (here, in this process: the same programs).
    clean = tmp_path / "clean"
    tiny_transfer(models, clean, **steps).transfer_many(
        [(tmp_path / "ann.png", tmp_path / "bob.png", tmp_path / "bob.png"),
         (tmp_path / "bob.png", tmp_path / "ann.png", tmp_path / "ann.png")])
    for name in results:
        np.testing.assert_array_equal(image_io.load_rgb(out / name), image_io.load_rgb(clean / name))
    for npz in (out / "Blend_realistic").glob("*.npz"):
        with np.load(npz) as a, np.load(clean / "Blend_realistic" / npz.name) as b:
            for k in ("latent_in", "latent_F"):
                np.testing.assert_array_equal(a[k], b[k])


# The command line with one function made slow, to stop it deterministically at a moment
# outside every optimisation loop: argv = marker file, where, then the command's arguments.
SLOW_DRIVER = """
import pathlib, sys, time
from barbershop_jax.pipeline.files import sources
from barbershop_jax.pipeline.store import cache as store

marker, where = pathlib.Path(sys.argv[1]), sys.argv[2]


def slowed(owner, name, seconds, mark=True):
    real = getattr(owner, name)

    def slow(*args, **kwargs):
        if mark:
            with marker.open("a") as f:
                f.write(name + "\\n")
        time.sleep(seconds)
        return real(*args, **kwargs)
    setattr(owner, name, slow)


if where == "reading":  # each input file takes 2 s to read, one at a time
    sources.READ_THREADS = 1
    slowed(sources, "as_source", 2)
else:  # between the W+ and FS loops, while the W+ results are being written
    slowed(store.EmbeddingCache, "put_w_plus", 1, mark=False)
    slowed(store.EmbeddingCache, "get_fs", 600)
from barbershop_jax.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


def _stop_when_marked(cmd, marker: Path, sig, timeout=600):
    """Start cmd; when `marker` appears, send `sig`. (returncode, stderr, seconds from the
    signal to the exit); a process still running 60 s after the signal is killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    # The marker's name written, not only the file made: a signal between the two left it empty.
    while proc.poll() is None and time.time() < deadline and not (marker.exists() and marker.read_text().strip()):
        time.sleep(0.02)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err, time.monotonic() - sent


def test_sigterm_outside_the_loops_stops_within_seconds_then_the_rerun_completes(batch_run, images, weights_dir,
                                                                                 tmp_path):
    """The command line in a subprocess, stopped by SIGTERM outside every loop: (1) while the
    input images are read on the thread pool, (2) between the W+ and FS loops while the W+
    results are being written. Each time: status 143 within seconds, one line saying to run
    the same command again, no traceback, no temporary or half-written file; then the same
    command completes. (After batch_run: the subprocesses compile nothing.)"""
    for name, path in zip(("ann", "bob"), images):
        shutil.copy(path, tmp_path / f"{name}.png")
    (tmp_path / "t.csv").write_text("face,shape,color\nann.png,bob.png,bob.png\nbob.png,ann.png,ann.png\n")
    (tmp_path / "driver.py").write_text(SLOW_DRIVER)
    out = tmp_path / "out"
    args = ["transfer", "--pairs", str(tmp_path / "t.csv"), "--weights", str(weights_dir), "--out", str(out),
            "--batch-size", "2", "--checkpoint-every", "4", "--quiet",
            *(f"--{k.replace('_', '-')}={v}" for k, v in STEPS.items())]

    def check_stopped(where):
        marker = tmp_path / f"{where}.marker"
        rc, err, seconds = _stop_when_marked([sys.executable, str(tmp_path / "driver.py"), str(marker), where, *args],
                                             marker, signal.SIGTERM)
        assert rc == 143 and seconds < 15, (rc, seconds, err[-3000:])
        lines = [line for line in err.splitlines() if line.startswith("barbershop-jax:")]
        assert "Traceback" not in err and len(lines) == 1, err[-3000:]
        assert lines[0] == ("barbershop-jax: interrupted by SIGTERM; finished work is kept; run the same command "
                            "again to resume from there")
        assert not list(out.rglob("*.tmp"))  # no temporary file left (none when out was not made)
        for path in _visible_files(out):
            _assert_complete(path)  # nothing half-written
        return marker.read_text().split()

    assert check_stopped("reading") == ["as_source"]  # the second read was dropped
    assert check_stopped("between loops") == ["get_fs"]
    written = {p.relative_to(out).as_posix() for p in _visible_files(out)}
    assert {"W+/ann.npy", "W+/bob.npy", "W+/ann.json", "W+/bob.json"} <= written  # the writes under way ended whole
    assert not any(name.startswith("FS/") for name in written)
    # 3. The same command, plainly: it completes.
    proc = subprocess.run([sys.executable, "-m", "barbershop_jax.cli", *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("ann_bob_bob_realistic.png", "bob_ann_ann_realistic.png"):
        _assert_complete(out / name)
    assert not list(out.rglob("*.tmp")) and not (out / resume.RESUME_DIR).exists()


def test_target_masks_saved_read_back_and_edited(batch_run, models, tmp_path):
    """--save-target-mask writes indexed PNGs; given back with --target-mask they reproduce the
    computed result exactly; an edited mask, or a moved shape, changes it."""

    out, triples, _ = batch_run
    t = triples[0]  # ann, bob, cid

    def run(name, **kw):
        folder = tmp_path / name
        for sub in ("W+", "FS"):  # the same embeddings: this test is about the target mask
            shutil.copytree(out / sub, folder / sub)
        return tiny_transfer(models, folder).transfer_many([t], **kw)[0], folder

    plain, plain_out = run("plain", save_target_masks=True)
    saved = plain_out / "target_masks" / "ann_bob.png"
    assert (plain_out / "target_masks" / "ann_cid.png").is_file()
    assert json.loads((plain_out / "target_masks" / "legend.json").read_text())["10"]["name"] == "hair"
    np.testing.assert_array_equal(cache.read_label_png(saved, models.parser.labels, 64),
                                  plain.target_labels)

    again, _ = run("again", edits=[records.TargetEdit(saved)])
    np.testing.assert_array_equal(again.target_labels, plain.target_labels)
    np.testing.assert_array_equal(again.image, plain.image)
    np.testing.assert_array_equal(again.latent_in, plain.latent_in)

    hair, bg = models.parser.labels.id("hair"), models.parser.labels.id("background")
    edited_mask = np.where(plain.target_labels == hair, bg, plain.target_labels)  # no hair at all
    assert (edited_mask != plain.target_labels).any()
    edited, _ = run("edited", edits=[records.TargetEdit(edited_mask)])
    np.testing.assert_array_equal(edited.target_labels, edited_mask)
    assert not np.array_equal(edited.structure_f, plain.structure_f)

    moved, _ = run("moved", edits=[records.TargetEdit(shape_transform=(1.0, 0.0, 12.0))])
    assert not np.array_equal(moved.target_labels, plain.target_labels)

    with pytest.raises(ValueError, match="but target masks are 64x64"):
        run("bad", edits=[records.TargetEdit(np.zeros((32, 32), np.int32))])


def test_cli_target_mask_flags_reach_the_transfer(tmp_path, capsys, monkeypatch, models):

    calls = []
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many", lambda self, good, **k: calls.append(k) or [])
    a = image_io.save_png(tmp_path / "a.png", np.zeros((64, 64, 3), np.uint8))
    mask = cache.save_label_png(tmp_path / "m.png", np.zeros((64, 64), np.int32), 16)
    assert cli.main(["transfer", "--face", str(a), "--shape", str(a), "--color", str(a), "--out", str(tmp_path / "o"),
                     "--target-mask", str(mask), "--shape-transform", "scale=1.2,dy=-4", "--save-target-mask",
                     "--quiet"]) == 0
    [edit] = calls[0]["edits"]
    assert str(edit.target) == str(mask) and edit.shape_transform == (1.2, 0.0, -4.0)
    assert calls[0]["save_target_masks"] is True
    image_io.save_png(tmp_path / "b.png", np.ones((64, 64, 3), np.uint8))
    (tmp_path / "t.csv").write_text("face,shape,color,target_mask,shape_transform\na.png,a.png,a.png,m.png,\n"
                                    "b.png,b.png,b.png,,dx=3\n")
    assert cli.main(["transfer", "--pairs", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o2"), "--quiet"]) == 0
    first, second = calls[1]["edits"]
    assert first.target == tmp_path / "m.png" and first.shape_transform is None
    assert second.target is None and second.shape_transform == (1.0, 3.0, 0.0)



def test_cli_manifest_rows_with_a_bad_region_or_target_mask_fail_alone(tmp_path, capsys, monkeypatch, models):
    """A row's region, target mask and shape transform are checked as the transfer takes them
    (with the face parser's labels), before any work: a bad one fails its row, named with its
    number, and the other rows run; two rows editing one (face, shape) pair differently: the
    later one fails (the pair is aligned once)."""
    calls = []
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many", lambda self, good, **k: calls.append(
        ([tuple(s.path.name for s in t) for t in good], k["regions"], k["edits"])) or [])
    no_model_planning(monkeypatch)
    for i, name in enumerate("abc"):
        image_io.save_png(tmp_path / f"{name}.png", np.full((64, 64, 3), 40 * i, np.uint8))
    cache.save_label_png(tmp_path / "m.png", np.zeros((64, 64), np.int32), 16)
    cache.save_label_png(tmp_path / "small.png", np.zeros((32, 32), np.int32), 16)
    bad = {3: ("a.png,b.png,c.png,beard,,", "unknown region name(s) 'beard'"),
           4: ("a.png,b.png,c.png,\" , \",,", "region: no label name given"),
           5: ("a.png,b.png,c.png,,missing.png,", "missing.png: no such target mask"),
           6: ("a.png,b.png,c.png,,c.png,", "c.png: a RGB image, not a label map"),
           7: ("a.png,b.png,c.png,,small.png,", "but target masks are 64x64"),
           9: ("b.png,b.png,a.png,,,dx=5", "b with b: another target-mask edit than the one of row 8")}
    lines = ["face,shape,color,region,target_mask,shape_transform", "a.png,b.png,c.png,,,",
             *(row for row, _ in list(bad.values())[:-1]), "b.png,b.png,c.png,,m.png,dx=3", bad[9][0],
             "a.png,b.png,c.png,brows,,"]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    rc = cli.main(["transfer", "--pairs", str(tmp_path / "t.csv"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    [(ran, regions, edits)] = calls  # the good rows 2, 8 and 10, and only they, ran
    assert ran == [("a.png", "b.png", "c.png"), ("b.png", "b.png", "c.png"), ("a.png", "b.png", "c.png")]
    assert regions == [None, None, "brows"] and edits[1].shape_transform == (1.0, 3.0, 0.0)
    with open(out / "failures.csv") as f:
        failures = list(csv.DictReader(f))
    assert [int(r["row"]) for r in failures] == list(bad)
    for r, (number, (_, says)) in zip(failures, bad.items()):
        assert says in r["error"], (number, r["error"])
        assert f"t.csv row {number}: " in next(x for x in err.splitlines() if says in x)
    assert f"{len(bad)} of {len(bad) + 3} triple(s) failed" in err


# ----------------------------------------------------------------------------- regions, structure
def _with_embeddings(batch_run, folder):
    """A fresh output folder with the batch run's embeddings: the tests below are about the
    transfer stages."""
    for sub in ("W+", "FS"):
        shutil.copytree(batch_run[0] / sub, folder / sub)
    return folder


def test_hair_and_the_shape_as_structure_given_explicitly_are_the_default_run(batch_run, models, monkeypatch):
    """region="hair" and structure = the shape reference change no cache key and no file name:
    the batch run's results are found as they are, and nothing runs again."""
    out, triples, first = batch_run
    calls = []
    for module, name in ((stage_target_mask, "gan_inpaint"), (stage_align, "align"),
                         (stage_blend, "blend")):
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: calls.append(_n))
    again = tiny_transfer(models, out).transfer_many([(*t, t[1]) for t in triples], region="hair")
    assert calls == []
    for a, b in zip(first, again):
        assert (b.shape, b.structure) == (a.shape, a.shape) and b.path == a.path
        for field in ("image", "target_labels", "latent_in", "structure_f"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_a_structure_reference_changes_f_in_the_region_and_not_s(batch_run, models, images, tmp_path):
    """(ann, bob, cid) with dan as the structure reference: the same target mask (bob's) and
    the same blended latents S (the colour reference's side), F differs inside the region and
    not outside it (where F is the face's own)."""
    from barbershop_jax.stages import align as alignment
    from barbershop_jax.ops import masks

    out = _with_embeddings(batch_run, tmp_path)
    path = dict(zip(("ann", "bob", "cid", "dan"), images))
    ht = tiny_transfer(models, out)
    ht.transfer_many([(path["ann"], path["cid"], path["cid"])])  # (ann, cid) aligned alone first, as
    [plain] = ht.transfer_many([(path["ann"], path["bob"], path["cid"])])  # each run below aligns alone
    [structured] = ht.transfer_many([(path["ann"], path["bob"], path["cid"], path["dan"])])
    assert structured.structure == "dan" and structured.path.name == "ann_bob+dan_cid_realistic.png"
    assert (out / "Align_realistic" / "ann_bob+dan.npz").is_file()
    np.testing.assert_array_equal(structured.target_labels, plain.target_labels)
    np.testing.assert_array_equal(structured.latent_in, plain.latent_in)
    cfg = TransferConfig().resolve(64)
    labels = models.parser.labels
    pipeline = ht.pipeline()
    hair = lambda n: masks.region(pipeline.parse([sources.as_source(path[n])])[0][0],  # noqa: E731
                                  cfg.region_ids(labels))
    target = masks.region(plain.target_labels, cfg.region_ids(labels))
    # Where the mixing weights of the target's region and of either reference's region in it are 0, F is
    # A1 (the face aligned to the same target, the same noise) or the face's own F: unchanged.
    weights = [alignment._mask_weights(m, cfg, 32, False, cfg.smooth)[..., 0]
               for m in (target, target * hair("bob"), target * hair("dan"))]
    outside = np.all([np.asarray(w) == 0 for w in weights], axis=0)
    inside = np.asarray(weights[0]) > 0.5
    assert outside.any() and inside.any()
    diff = np.abs(structured.structure_f - plain.structure_f).max(-1)
    scale = np.abs(plain.structure_f).max()
    assert diff[outside].max() < 1e-5 * scale
    assert diff[inside].mean() > 1e-2 * scale


def test_another_region_changes_only_its_labels_and_the_blend_masks_follow_it(batch_run, models, images, tmp_path):
    """A transfer of the class the fixture's parser sees most after hair and background: the
    target mask differs from the face's labels only where the face or the shape reference has
    that class; the blend holds the colour reference's (eroded) region to it and keeps the face's
    (dilated) region out of the face term; the outputs carry the region in their names."""
    from barbershop_jax.ops import masks
    from barbershop_jax.ops import resample

    out = _with_embeddings(batch_run, tmp_path)
    path = dict(zip(("ann", "bob", "cid", "dan"), images))
    ht = tiny_transfer(models, out)
    labels = models.parser.labels
    pipeline = ht.pipeline()
    parsed = {n: pipeline.parse([sources.as_source(path[n])])[0] for n in ("ann", "bob", "cid")}
    counts = np.bincount(np.concatenate([parsed[n][0].ravel() for n in ("ann", "bob")]), minlength=16)
    counts[[labels.id("hair"), labels.id("background"), labels.id("hat")]] = 0
    region = labels.names[int(np.argmax(counts))]
    # A thin region would vanish under 5 erosions at 32 px. The region is data to the compiled
    # stages: the batch run's programs serve it, and only the blend masks (other erosions) compile.
    with count_compilations() as compiled:
        [result] = ht.transfer_many([(path["ann"], path["bob"], path["cid"])], regions=[region], blend_smooth=1)
    assert compiled == ["jit(blend_masks)"], compiled
    assert result.path.name == f"ann_bob_cid_realistic_{region}.png"
    assert (out / f"Align_realistic_{region}" / "ann_bob.npz").is_file() and not (out / "Align_realistic").exists()
    ids = labels.region_ids(region)
    either = np.isin(parsed["ann"][0], ids) | np.isin(parsed["bob"][0], ids)
    assert either.any() and (result.target_labels != parsed["ann"][0]).any()
    np.testing.assert_array_equal(result.target_labels[~either], parsed["ann"][0][~either])
    at_loss_size = lambda labels_q: resample.nearest_resize(masks.region(labels_q, ids)[None], 32)[0]  # noqa: E731
    np.testing.assert_array_equal(result.hair_mask, masks.erode(at_loss_size(parsed["cid"][1]), 1))
    assert result.hair_mask.any()
    assert not result.face_mask[np.asarray(masks.dilate(at_loss_size(parsed["ann"][1]), 1)) > 0].any()


def test_cli_region_and_structure_reach_the_transfer_and_unknown_regions_are_one_line(tmp_path, capsys, monkeypatch,
                                                                                        models):
    calls = []
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    monkeypatch.setattr(hair_transfer.HairTransfer, "transfer_many",
                        lambda self, good, **k: calls.append((good, k, self.options)) or [])
    a, b = (image_io.save_png(tmp_path / f"{n}.png", np.full((64, 64, 3), i, np.uint8)) for i, n in enumerate("ab"))
    assert cli.main(["transfer", "--face", str(a), "--shape", str(a), "--color", str(a), "--structure", str(b),
                     "--region", "lips", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    [(good, kwargs, options)] = calls
    assert [tuple(s.path for s in t) for t in good] == [(a, a, a, b)]
    assert options["region"] == "lips" and kwargs["regions"] == [None]
    (tmp_path / "t.csv").write_text("face,shape,color,structure,region\na.png,a.png,a.png,b.png,\n"
                                    "a.png,a.png,a.png,,brows\n")
    assert cli.main(["transfer", "--pairs", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o2"), "--quiet"]) == 0
    good, kwargs, options = calls[1]
    assert [tuple(s.path for s in t) for t in good] == [(a, a, a, b), (a, a, a)]
    assert kwargs["regions"] == [None, "brows"] and "region" not in options

    monkeypatch.undo()
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    monkeypatch.setattr(run.Pipeline, "run", lambda *a, **k: pytest.fail("ran with an unknown region"))
    capsys.readouterr()
    rc = cli.main(["transfer", "--face", str(a), "--shape", str(a), "--color", str(a), "--region", "hair,beard",
                   "--out", str(tmp_path / "o3"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("barbershop-jax: error: region 'beard,hair': unknown region name(s) 'beard'; valid "
                             "names: background, skin")


def test_other_step_counts_compile_nothing_new(batch_run, models, tmp_path):
    """Step counts, like seeds and chunking, are not part of any compiled program: a transfer
    with every stage's count changed reruns each stage (its cache keys differ) and compiles
    nothing (the loops' chunks, nor the helpers around them: F init, A1, A2, blend masks)."""
    _, triples, _ = batch_run
    other = dict(w_steps=2, fs_steps=3, inpaint_steps=3, align_steps1=2, align_steps2=3, blend_steps=2)
    assert all(other[k] != STEPS[k] for k in other)
    with count_compilations() as compiled:
        [one] = tiny_transfer(models, tmp_path, batch_size=2, **other).transfer_many([triples[0]])
    assert one is not None
    assert compiled == [], compiled


def test_a_new_learning_rate_compiles_nothing_new(batch_run, models, tmp_path):
    """The learning rate is data (stages/optim.py: in the optimiser's state), not part of a
    compiled program: a transfer at another rate reruns every stage (its cache keys differ) and
    compiles nothing."""
    _, triples, first = batch_run
    with count_compilations() as compiled:
        [one] = tiny_transfer(models, tmp_path, batch_size=2, learning_rate=0.02).transfer_many([triples[0]])
    assert compiled == [], compiled
    assert not np.array_equal(one.latent_in, first[0].latent_in)  # the rate reached the optimisers


def test_each_input_is_decoded_once_per_run(batch_run, models, monkeypatch):
    """An input file is decoded once in a run: its hash, the W+ and FS targets, the parse and
    the blend's references all read those pixels (pipeline/files/sources.py, DecodedImages)."""
    out, triples, _ = batch_run
    decoded = record_decodes(monkeypatch)
    pipeline = tiny_transfer(models, out).pipeline()
    pipeline.run(triples)
    inputs = sorted(p.name for p in decoded if p.name in {Path(x).name for t in triples for x in t})
    assert inputs == sorted({Path(x).name for t in triples for x in t}), decoded
    # and the stages that are not cached read them too: embedding afresh into another folder
    pipeline = tiny_transfer(models, out.parent / "decode_once").pipeline()
    decoded.clear()
    pipeline.embed([pipeline.context.decoded.adopt(s) for s in pipeline_sources_of(triples)])
    assert sorted(p.name for p in decoded) == sorted({Path(x).name for t in triples for x in t}), decoded


def test_the_command_line_decodes_each_input_once(batch_run, models, tmp_path, monkeypatch):
    """The command line's path (transfer_job: hair_transfer.check_triples reads and checks
    every file before the models load; then HairTransfer.transfer_files and Pipeline.run)
    decodes each input file once: the pixels the check read serve the plan, the hash and
    every stage. (The batch's output folder, copied, is reused: what it would otherwise
    compute reads the same pixels, as the test above shows.)"""
    out, triples, _ = batch_run
    shutil.copytree(out, tmp_path / "o")
    manifest = tmp_path / "t.csv"
    manifest.write_text("face,shape,color\n" + "".join(",".join(map(str, t)) + "\n" for t in triples))
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    decoded = record_decodes(monkeypatch)
    rc = cli.main(["transfer", "--pairs", str(manifest), "--out", str(tmp_path / "o"), "--batch-size", "2",
                   *[f"--{k.replace('_', '-')}={v}" for k, v in STEPS.items()], "--noise", "random",
                   "--checkpoint-every", "2"])
    assert rc == 0
    inputs = {Path(x) for t in triples for x in t}
    assert sorted(p for p in decoded if p in inputs) == sorted(inputs), decoded


def pipeline_sources_of(triples):
    return sources.as_sources(list(dict.fromkeys(x for t in triples for x in t)), keep_pixels=True)
