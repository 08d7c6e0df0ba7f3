"""`barbershop-jax doctor`: the report of this machine (JAX, its devices and memory, the
weights and the checkpoints they came from, the caches, the predicted time, the next command),
found without loading a model: the weights folders here hold only their config.json files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jaxlib
import pytest

from barbershop_jax import cli
from barbershop_jax.pipeline import doctor
from barbershop_jax.pipeline import plan as plan_lib
from barbershop_jax.pipeline.store import step_times

ROOT = Path(__file__).resolve().parents[1]
SHA = {"stylegan2": "a" * 64, "vgg16": "b" * 64}  # bisenet's is not recorded
# Seconds per step of each stage, measured "before" in the step-times file of a test.
PER_STEP = {"W+ embedding": 0.5, "FS embedding": 0.8, "Alignment": 0.75, "Blend": 1.5}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty default weights folder and step-times file: this machine, as new."""
    monkeypatch.setenv("BARBERSHOP_JAX_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("BARBERSHOP_JAX_STEP_TIMES", str(tmp_path / "step_times.json"))
    return tmp_path


def fake_weights(folder: Path, size: int = 1024) -> Path:
    """A converted weights folder as far as the doctor reads one: each model's config.json with
    its "converted" record, and the sources.json that `weights download` writes."""
    for model in ("stylegan2", "bisenet", "vgg16"):
        converted = {"source": f"/checkpoints/{model}.pt"}
        if model in SHA:
            converted["source_sha256"] = SHA[model]
        if model == "vgg16":
            converted["lpips_sha256"] = "c" * 64
        meta = {"model": model, "format": 1, "config": {"size": size} if model == "stylegan2" else {},
                "converted": converted}
        (folder / model).mkdir(parents=True)
        (folder / model / "config.json").write_text(json.dumps(meta))
    sources = {"files": [{"name": "ffhq.pt", "kind": "stylegan2", "url": "http://127.0.0.1/ffhq.pt",
                          "sha256": SHA["stylegan2"], "verified": True, "licence": "CC BY-NC 4.0"}]}
    (folder / "sources.json").write_text(json.dumps(sources))
    return folder


def doctor_output(capsys, *args) -> str:
    assert cli.main(["doctor", *args]) == 0
    return capsys.readouterr().out


def test_a_new_cpu_machine_gets_the_embedded_models_and_the_download_command(home, capsys):
    out = doctor_output(capsys)
    assert f"jax {jax.__version__}, jaxlib {jaxlib.__version__}" in out
    assert "\nbackend: cpu\n" in out
    assert "  device 0: cpu (cpu), the host's memory: " in out and "GiB" in out
    assert f"GiB, {doctor.host()['cores']} cores" in out
    assert "warning" not in out  # this machine shows no GPU
    assert "weights: the embedded tiny models (64 px, fixed random weights: no real hairstyle)" in out
    assert f"no converted weights in {home / 'weights'} (the default folder)" in out
    assert "one transfer (3 images embedded, 2 alignments, 1 blend): not measured yet" in out
    assert "4 x 4 grid (8 images embedded, 16 alignments, 16 blends): not measured yet" in out
    assert "a first run measures them" in out
    assert f"step times: {home / 'step_times.json'}: not there yet" in out
    assert out[out.index("\nnext:\n"):].splitlines()[2:4] == [
        f"  `barbershop-jax weights download`: the official weights, into {home / 'weights'}",
        "  `barbershop-jax demo --out demo_out/`: the whole pipeline now, on the embedded tiny models (random weights: "
        "no real hairstyle)"]
    assert sorted(p.name for p in home.iterdir()) == []  # the doctor makes nothing


def test_a_converted_folder_is_named_with_its_resolution_and_checkpoints(home, capsys):
    folder = fake_weights(home / "weights")
    out = doctor_output(capsys)
    assert f"weights: {folder} (the default folder), StyleGAN2 at 1024 px" in out
    assert f"stylegan2: from /checkpoints/stylegan2.pt, sha256 {SHA['stylegan2']}" in out
    assert "bisenet: from /checkpoints/bisenet.pt, sha256 not recorded" in out
    assert f"vgg16: from /checkpoints/vgg16.pt, sha256 {SHA['vgg16']}; lpips_sha256 {'c' * 64}" in out
    assert f"downloaded ffhq.pt (stylegan2): sha256 {SHA['stylegan2']}, verified, licence CC BY-NC 4.0" in out
    assert f"default weights folder: {folder}: " in out and " in 4 files" in out
    assert "predicted time (1024 px, float32, batch size 4, the official step counts):" in out
    assert "`barbershop-jax transfer --align --paste-back --face PHOTO.jpg" in out and "--weights" not in out
    # Another folder: named on the command line, and in the next command.
    other = fake_weights(home / "other", size=256)
    out = doctor_output(capsys, "--weights", str(other))
    assert f"weights: {other}, StyleGAN2 at 256 px" in out and f"--weights {other} --out OUT_DIR" in out
    # The embedded models chosen although the default folder has weights: it says so.
    out = doctor_output(capsys, "--weights", "embedded")
    assert f"chosen with --weights embedded; the default folder holds converted weights: {folder}" in out


def test_a_folder_without_weights_is_a_warning(home, capsys):
    out = doctor_output(capsys, "--weights", str(home / "none"))
    assert (f"warning: {home / 'none'}: no converted stylegan2, bisenet, vgg16 here (expected "
            f"{home / 'none' / 'stylegan2' / 'config.json'}): a run with these weights fails") in out
    assert "downloads: not recorded (no sources.json)" in out and "`barbershop-jax weights download`" in out


def test_the_predicted_time_comes_from_the_measured_steps(home, capsys):
    context = step_times.context(64, "float32", 4)  # the embedded models at the default batch size
    (home / "step_times.json").write_text(json.dumps({context: {k: [100, 100 * v] for k, v in PER_STEP.items()}}))
    facts = doctor.report()
    one, grid = facts["predicted"]["runs"]
    # The demo's steps: W+ 100, FS 25, alignment 2 x 8 + 14 + 10, blend 40, one batch of up to 4 each.
    assert one["seconds"] == pytest.approx(100 * 0.5 + 25 * 0.8 + 40 * 0.75 + 40 * 1.5)  # 160 s
    # 8 images in 2 batches, 16 alignments and 16 blends in 4 batches each.
    assert grid["seconds"] == pytest.approx(2 * (100 * 0.5 + 25 * 0.8) + 4 * 40 * 0.75 + 4 * 40 * 1.5)  # 500 s
    out = doctor_output(capsys)
    assert "one transfer (3 images embedded, 2 alignments, 1 blend): about 3 min" in out
    assert "4 x 4 grid (8 images embedded, 16 alignments, 16 blends): about 8 min" in out
    assert "not measured yet" not in out and "compilation not counted" in out


def test_a_gpu_that_jax_does_not_use_is_a_warning_and_the_first_command(home, monkeypatch):
    monkeypatch.setattr(doctor, "visible_accelerator", lambda: "gpu")
    facts = doctor.report()
    line = "a GPU is present but JAX runs on the CPU: pip install 'barbershop-jax[cuda12]'"
    assert facts["warnings"] == [line]
    assert facts["next"][0]["command"] == "pip install 'barbershop-jax[cuda12]'"
    assert f"  warning: {line}" in doctor.text(facts) and f"- warning: {line}" in doctor.markdown(facts)


def test_the_work_is_counted_as_a_run_counts_it():
    assert plan_lib.distinct_work([("face", "shape", "colour")]) == {
        "W+ embedding": 3, "FS embedding": 3, "Alignment": 2, "Blend": 1}
    assert plan_lib.distinct_work([("face", "hair", "hair"), ("face", "hair", "hair", "hair")]) == {
        "W+ embedding": 2, "FS embedding": 2, "Alignment": 1, "Blend": 1}


def test_json_from_the_command_line(home):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "barbershop_jax.cli", "doctor", "--json"], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["backend"] == "cpu" and facts["devices"][0]["platform"] == "cpu"
    assert facts["versions"]["jax"] == jax.__version__ and facts["host"]["memory_bytes"] > 0
    assert facts["weights"]["embedded"] and facts["weights"]["resolution"] == 64
    assert [r["seconds"] for r in facts["predicted"]["runs"]] == [None, None]
    assert [c["name"] for c in facts["caches"]] == ["XLA compile cache", "step times", "default weights folder"]
    assert facts["next"][0]["command"] == "barbershop-jax weights download"
