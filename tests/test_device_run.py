"""benchmarks/device_run.sh, the script a GPU session runs within its few minutes of device
time, run here on the CPU at toy sizes: every part runs to its end and writes its results,
so that no device minute is spent on a script that fails."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Toy sizes: a 64 px generator of 16 channels, a few steps, batch 1 and 2, the W+ stage alone
# where the script times steps (the cold start, the whole transfer and the grid run every stage),
# and loops of one step per chunk, the quickest to compile (what the script runs is the same).
DRY_RUN = {"SIZE": "64", "SCALE": "0.003", "BATCH": "1", "SCALING": "2", "GRID": "1x2", "BUDGET": "3000",
           "EXTRA": "--channel-max 16 --reps 1 --stages W+ --chunk 1",
           "COLD_EXTRA": "--channel-max 16 --loop 1,unrolled"}


def test_the_device_script_runs_every_part_on_a_cpu(tmp_path):
    out = tmp_path / "out"
    # Parts 2-5 use the suite's compile cache, kept from run to run (conftest.py): a run after a
    # change compiles only what the change altered. The cold start still compiles into a new,
    # empty folder of its own, as on the device.
    env = {**os.environ, **DRY_RUN, "OUT": str(out), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "CACHE": os.environ["BARBERSHOP_JAX_COMPILE_CACHE"]}
    for name in ("BARBERSHOP_JAX_LOOP", "BARBERSHOP_JAX_COMPILE_AHEAD"):  # the production settings, as on the device
        env.pop(name, None)
    run = subprocess.run(["bash", "benchmarks/device_run.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "no nvidia-smi: a dry run" in run.stdout
    [cold] = out.glob("cold-start_transfer-64px-x0.003-loop1-unrolled_*.json")
    phases = json.loads(cold.read_text())["runs"]
    assert [p["phase"] for p in phases] == ["cold", "warm"] and phases[0]["programs_compiled"] > 10
    suites = {p.name.split("_")[1]: json.loads(p.read_text()) for p in out.glob("suite_*.json")}
    assert set(suites) == {"64px", "64px-scaling", "64px-bfloat16-parser-bfloat16"}, sorted(suites)
    main = suites["64px"]
    assert [r["batch"] for r in main["rows"] if "jax" in r] == [1]
    assert main["transfers"][0]["triples_done"] == 1
    assert [(g["faces"], g["hairstyles"], g["triples_done"]) for g in main["grids"]] == [(1, 2, 2)]
    assert [r["batch"] for r in suites["64px-scaling"]["rows"] if "jax" in r] == [2]
    assert list(out.glob("profile_*.json")), sorted(p.name for p in out.iterdir())
    assert not (out / "failed_parts").exists()
