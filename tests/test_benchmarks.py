"""The benchmark suite's building blocks stay in step with the stages they time: each stage's
problem is built from the stages' own types and lowers to a program with a FLOP count, and
each PyTorch reference step runs. (The suite itself is run by hand: benchmarks/README.md.)"""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import suite  # noqa: E402
import torch_reference  # noqa: E402
from barbershop_jax.config import EmbedConfig, TransferConfig  # noqa: E402

SIZE, CHANNELS = 64, 16  # the smallest size with every stage (FS and blend start at block 4)


@pytest.fixture(scope="module")
def small_models():
    return suite.build_models(SIZE, channel_max=CHANNELS)


@pytest.mark.parametrize("stage", suite.STAGES)
def test_each_stage_problem_lowers_with_a_flop_count(small_models, stage):
    embed_cfg = EmbedConfig(lpips_size=SIZE // 2, chunk=2)
    cfg = TransferConfig(chunk=2).resolve(SIZE)
    flops = suite._flops_per_step(*suite.stage_problem(stage, small_models, 1, embed_cfg, cfg))
    assert flops > 1e6


@pytest.fixture(scope="module")
def nets():
    pytest.importorskip("torch")
    return torch_reference.Nets(SIZE, "cpu", channel_max=CHANNELS)


@pytest.mark.parametrize("stage", suite.STAGES)
def test_each_pytorch_reference_step_runs(nets, stage):
    result = torch_reference.time_step(nets, stage, 2, steps=1, reps=1)
    assert result["ms_per_step"] > 0 and result["image_steps_per_s"] > 0


def test_the_transfer_prediction_adds_the_official_steps():
    rows = [{"stage": s, "batch": 2, "jax": {"ms_per_step": 10.0}} for s in suite.STAGES]
    per_image = 10.0 / 2 / 1e3
    assert suite.predict_transfer(rows, 2) == pytest.approx(per_image * sum(suite.official_steps().values()))
    assert suite.predict_transfer(rows[:-1], 2) is None  # a stage missing: no prediction
    assert list(suite.official_steps().values()) == [3300, 750, 600, 200, 400]


def test_the_profile_of_a_stage_names_its_operations(small_models):
    """profile_step.py on CPU: the trace is read back, its events are matched to the compiled
    program's HLO instructions, and the kinds' shares add up."""
    import profile_step
    embed_cfg = EmbedConfig(lpips_size=SIZE // 2, chunk=2)
    cfg = TransferConfig(chunk=2).resolve(SIZE)
    row = profile_step.profile_stage("FS", small_models, 1, chunk=2, unroll=False, reps=1, embed_cfg=embed_cfg,
                                     cfg=cfg, top=10)
    assert row["where"].startswith("host") and row["steps_traced"] == 2
    assert 0 < row["busy_ms_per_step"] <= row["summed_ms_per_step"] + 1e-9
    assert row["busy_ms_per_step"] <= row["wall_ms_per_step"] * 1.05
    assert sum(k["share"] for k in row["kinds"].values()) == pytest.approx(1.0)
    assert "convolution" in row["kinds"] and len(row["ops"]) == 10
    assert sum(o["shape"] is not None for o in row["ops"]) >= 8  # found in the HLO text


def test_busy_time_counts_overlaps_once():
    import profile_step
    events = [("a", "k", 10.0, 0.0), ("b", "k", 5.0, 5.0), ("c", "k", 4.0, 20.0), ("d", "k", 1.0, 21.0)]
    assert profile_step.busy_ns(events) == 14.0


@pytest.mark.parametrize("model, flags, name", [
    ("AMD EPYC 7B13", {"avx", "avx2", "fma"}, "avx2-epyc-2core"),
    ("AMD EPYC", {"avx2", "avx512f", "avx512_vnni"}, "avx512-epyc-2core"),
    ("AMD EPYC", {"avx2", "avx512f", "avx512_vnni", "avx_vnni"}, "avx512-vnni-epyc-2core"),
    ("Intel(R) Xeon(R) Platinum 8481C", {"avx2", "avx512f", "avx_vnni"}, "avx512-vnni-xeon-2core"),
])
def test_result_files_name_the_kind_of_cpu(monkeypatch, model, flags, name):
    """Machines whose XLA:CPU bits differ get different names: AVX2, AVX-512, and AVX-512 with
    AVX-VNNI (6 of the recorded transfer's 37 arrays differed between the last two)."""
    import result_names
    monkeypatch.setattr(result_names, "_cpuinfo", lambda: (model, flags))
    monkeypatch.setattr(result_names.os, "cpu_count", lambda: 2)
    assert result_names.cpu_name() == name


def test_grid_prediction_counts_each_image_once_and_each_cell_once():
    rows = [{"stage": s, "batch": 2, "jax": {"ms_per_step": 10.0}} for s in suite.STAGES]
    steps = suite._grid_steps(0.01)
    per_image = (steps["W+"] + steps["FS"]) * 10.0 / 1e3
    per_cell = (2 * steps["inpaint"] + steps["align1"] + steps["align2"] + steps["blend"]) * 10.0 / 1e3
    # 3 faces x 2 hairstyles at batch 2: 5 images in 3 batches, 6 cells in 3 batches.
    assert suite.predict_grid(rows, 3, 2, 2, 0.01) == pytest.approx(3 * per_image + 3 * per_cell)
    assert suite.predict_grid(rows[:-1], 3, 2, 2, 0.01) is None


def test_the_convergence_benchmark_reports_each_run_against_the_official(tmp_path):
    import importlib.util
    import json

    import convergence
    convergence.main(["--stages", "W+", "--steps", "W+=8", "--optimizers", "adam", "adam(stop=1.0, window=1)",
                      "--dtypes", "float32", "--batches", "1", "--images", "2", "--out", str(tmp_path)])
    [path] = tmp_path.glob("convergence_64px_*.json")
    official, stopped = json.loads(path.read_text())["stages"]["W+"]
    assert official["run"] == {"optimizer": "adam", "dtype": "float32", "batch": 1}
    assert official["steps"][-1] == 8 and official["reached_step"] <= 8 and official["steps_taken"] == [8, 8]
    assert stopped["steps_taken"] == [2, 2]  # a rule any step meets: each problem stops after its second step
    assert stopped["seconds"][-1] < official["seconds"][-1]
    for curve in (official, stopped):
        assert len(curve["loss"]) == len(curve["steps"]) == len(curve["seconds"])
        assert all(np.isfinite(list(curve["reconstruction"].values())))
    table = path.with_suffix(".md").read_text()
    assert "| W+ | `adam(stop=1.0, window=1)` | float32 | 1 |" in table
    assert path.with_suffix(".png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
