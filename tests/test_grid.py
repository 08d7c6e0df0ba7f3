"""Grids (transfer --faces --hairstyles, HairTransfer.grid): each image embedded once, each
pair aligned once, the plan told first, the contact sheet written, and every cell equal to
its triple run alone."""
import csv

import numpy as np
import pytest

from barbershop_jax import cli
from barbershop_jax.models import bundle
from barbershop_jax.pipeline import grid as grid_lib
from barbershop_jax.pipeline.files import image_files as image_io
from barbershop_jax.pipeline import plan as plan_lib
from conftest import STEPS, assert_batch_independent, generator_images, record_decodes, tiny_transfer

FACES, HAIRSTYLES = ("ann", "bob", "cid"), ("dan", "eve", "fay")


@pytest.fixture(scope="module")
def six(models, tmp_path_factory):
    paths = generator_images(models, FACES + HAIRSTYLES, 21, tmp_path_factory.mktemp("grid_in"))
    return paths[:len(FACES)], paths[len(FACES):]


@pytest.fixture(scope="module")
def grid_run(models, six, tmp_path_factory):
    faces, hairstyles = six
    out = tmp_path_factory.mktemp("grid_out")
    told = []
    ht = tiny_transfer(models, out)
    return out, ht.grid(faces, hairstyles, log=told.append), told


def test_a_grid_embeds_each_image_once_aligns_each_pair_once(grid_run):
    out, result, told = grid_run
    plan = told[0]
    assert plan.startswith("plan: 3 faces x 3 hairstyles = 9 transfers"), plan
    assert "W+ embedding: 6 images" in plan and "FS embedding: 6 images" in plan, plan
    assert "Alignment: 9 pairs" in plan and "Blend: 9 triples" in plan, plan
    # What was done, on disk: 6 embeddings (not 18), 9 alignments (colour = hairstyle: one each), 9 blends.
    assert len(list((out / "W+").glob("*.npy"))) == 6 and len(list((out / "FS").glob("*.npz"))) == 6
    assert len(list((out / "Align_realistic").glob("*.npz"))) == 9
    assert len(list((out / "Blend_realistic").glob("*.npz"))) == 9
    assert [[r.face for r in row] for row in result.results] == [[f] * 3 for f in FACES]
    assert [[r.shape for r in row] for row in result.results] == [list(HAIRSTYLES)] * 3
    assert all(r.color == r.shape for row in result.results for r in row)
    sheet = image_io.load_rgb(result.sheet_path)
    assert result.sheet_path == out / "grid.png" and np.array_equal(sheet, result.sheet)
    assert sheet.shape[0] >= 4 * 64 and sheet.shape[1] >= 4 * 64  # 3 x 3 cells with their inputs in the margins


def test_a_rerun_plans_nothing_to_do(models, six, grid_run):
    out, _, _ = grid_run
    faces, hairstyles = six
    ht = tiny_transfer(models, out)
    triples, _ = grid_lib.grid_triples(faces, hairstyles)
    plan = ht.plan(triples)
    assert [(s.total, s.todo) for s in plan.stages] == [(6, 0), (6, 0), (9, 0), (9, 0)]
    assert plan.seconds == 0.0 and "6 found in the output folder" in plan.describe()
    fresh = tiny_transfer(models, out, fresh=True).plan(triples)  # --fresh: every entry of the folder is redone
    assert [(s.total, s.todo) for s in fresh.stages] == [(6, 6), (6, 6), (9, 9), (9, 9)]


def test_each_cell_equals_its_triple_run_alone(models, six, grid_run, tmp_path):
    out, result, _ = grid_run
    faces, hairstyles = six
    alone_out = tmp_path / "alone"  # one triple per call, into another folder: nothing of the grid's reused
    for i, face in enumerate(faces):
        for j, hair in enumerate(hairstyles):
            [alone] = tiny_transfer(models, alone_out).transfer_many([(face, hair, hair)])
            cell = result.results[i][j]
            # Each stage's program computes an item independently of the others in its batch and
            # of its place there (the grid embeds bob second, beside ann; alone, first, beside dan;
            # an alignment runs beside its own padded copy): bit for bit where this machine's
            # kernels allow, else to rounding (conftest.batch_position_exact).
            for stage, stem in (("W+", FACES[i]), ("W+", HAIRSTYLES[j]), ("FS", FACES[i]), ("FS", HAIRSTYLES[j]),
                                ("Align_realistic", f"{FACES[i]}_{HAIRSTYLES[j]}"),
                                ("Blend_realistic", f"{FACES[i]}_{HAIRSTYLES[j]}_{HAIRSTYLES[j]}")):
                suffix = ".npy" if stage == "W+" else ".npz"
                a, b = np.load(out / stage / f"{stem}{suffix}"), np.load(alone_out / stage / f"{stem}{suffix}")
                pairs = [(None, a, b)] if suffix == ".npy" else [(k, a[k], b[k]) for k in a.files]
                for k, x, y in pairs:
                    assert_batch_independent(x, y, f"{stage}/{stem} {k or ''} of cell {(i, j)}", steps=max(STEPS.values()))
            assert_batch_independent(image_io.load_rgb(cell.path), alone.image, f"image of cell {(i, j)}")


def test_colours_pair_with_hairstyles_or_serve_all():
    triples, cells = grid_lib.grid_triples(["f1", "f2"], ["h1", "h2"], ["c"])
    assert triples == [("f1", "h1", "c"), ("f1", "h2", "c"), ("f2", "h1", "c"), ("f2", "h2", "c")]
    assert cells == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert grid_lib.grid_triples(["f"], ["h1", "h2"], ["c1", "c2"])[0] == [("f", "h1", "c1"), ("f", "h2", "c2")]
    with pytest.raises(ValueError, match="3 colour references for 2 hairstyles"):
        grid_lib.grid_triples(["f"], ["h1", "h2"], ["c1", "c2", "c3"])
    with pytest.raises(ValueError, match="at least one face"):
        grid_lib.grid_triples([], ["h"])


def test_the_title_is_one_wording_for_the_api_the_cli_and_the_page():
    assert grid_lib.title(3, 3) == "3 faces x 3 hairstyles"
    assert grid_lib.title(1, 2) == "1 face x 2 hairstyles"
    assert grid_lib.title(2, 1) == "2 faces x 1 hairstyle"


def test_the_plan_predicts_from_measured_steps(models, six, tmp_path, monkeypatch):
    faces, hairstyles = six
    ht = tiny_transfer(models, tmp_path / "o")
    triples, _ = grid_lib.grid_triples(faces[:2], hairstyles[:1])
    monkeypatch.setattr(plan_lib.step_times, "read", lambda: {})
    assert ht.plan(triples).seconds is None and "not known yet" in ht.plan(triples).describe()
    ctx = plan_lib.step_times.context(models.generator.config.size, "float32", 2)
    per_step = {"W+ embedding": 0.5, "FS embedding": 0.25, "Alignment": 1.0, "Blend": 2.0}
    monkeypatch.setattr(plan_lib.step_times, "read", lambda: {ctx: {k: [4, 4 * v] for k, v in per_step.items()}})
    plan = ht.plan(triples)
    s = ht.pipeline().context.cfg
    steps = {"W+ embedding": 3, "FS embedding": 2, "Alignment": 2 * s.inpaint_steps + s.align_steps1 + s.align_steps2,
             "Blend": s.blend_steps}
    # 3 images (2 faces, 1 hairstyle) in 2 batches of 2; 2 pairs, 2 triples: 1 batch each.
    expected = 2 * 3 * 0.5 + 2 * 2 * 0.25 + 1 * steps["Alignment"] * 1.0 + 1 * steps["Blend"] * 2.0
    assert plan.seconds == pytest.approx(expected) and "predicted time: about" in plan.describe()


def test_cli_grid_writes_results_csv_and_sheet(models, six, grid_run, tmp_path, capsys, monkeypatch):
    out, result, _ = grid_run
    faces, hairstyles = six
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    rc = cli.main(["transfer", "--faces", str(faces[0].parent / "ann.png"), str(faces[1]), str(faces[2]),
                   "--hairstyles", *map(str, hairstyles), "--out", str(out), "--batch-size", "2",
                   *[f"--{k.replace('_', '-')}={v}" for k, v in STEPS.items()], "--noise", "random",
                   "--checkpoint-every", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "plan: 3 faces x 3 hairstyles = 9 transfers" in captured.err
    assert "Blend: 9 triples (9 found in the output folder" in captured.err  # the API's run is reused
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["face"], r["shape"], r["color"]) for r in rows] == [
        (str(f), str(h), str(h)) for f in faces for h in hairstyles]
    assert (out / "grid.png").is_file() and "wrote" in captured.out


def _sheet_from_files(cells, faces, hairstyles):
    """The contact sheet drawn from the result files ({(row, column): path}), as grids drew it
    before they kept their cells in memory."""
    return grid_lib.sheet(faces, hairstyles, None, cells, title=grid_lib.title(len(faces), len(hairstyles)),
                          notes=(grid_lib.RANDOM_WEIGHTS_NOTE,))


def test_a_grid_decodes_each_input_once_and_reads_no_result_back(models, six, tmp_path, monkeypatch):  # noqa: F811
    """HairTransfer.grid decodes each file once (its hash, the stages and its margin panel
    read those pixels) and draws its cells from the results' images as their waves end, not
    from their files: the same sheet as one drawn from the files."""
    faces, hairstyles = six[0][:2], six[1][:1]
    decoded = record_decodes(monkeypatch)
    result = tiny_transfer(models, tmp_path).grid(faces, hairstyles, log=lambda text: None)
    assert sorted(decoded) == sorted(faces + hairstyles), decoded
    cells = {(i, j): r.path for i, row in enumerate(result.results) for j, r in enumerate(row)}
    assert np.array_equal(result.sheet, _sheet_from_files(cells, faces, hairstyles))


def test_the_cli_grid_decodes_each_input_once_and_reads_no_result_back(models, six, tmp_path, capsys,  # noqa: F811
                                                                        monkeypatch):
    faces, hairstyles = six[0][:2], six[1][:1]
    monkeypatch.setattr(bundle, "load", lambda weights=None, dtype="float32", parser_dtype="float32": models)
    decoded = record_decodes(monkeypatch)
    out = tmp_path / "o"
    rc = cli.main(["transfer", "--faces", *map(str, faces), "--hairstyles", *map(str, hairstyles), "--out", str(out),
                   "--batch-size", "2", *[f"--{k.replace('_', '-')}={v}" for k, v in STEPS.items()], "--noise",
                   "random", "--checkpoint-every", "2", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(decoded) == sorted(faces + hairstyles), decoded
    with open(out / "results.csv") as f:
        paths = [r["result"] for r in csv.DictReader(f)]
    cells = {(i, 0): path for i, path in enumerate(paths)}  # faces as rows, one hairstyle
    assert np.array_equal(image_io.load_rgb(out / "grid.png"), _sheet_from_files(cells, faces, hairstyles))
