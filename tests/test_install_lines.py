"""The README's install lines for GPUs and TPUs are the ones tested: each names an extra of
pyproject.toml that is JAX's own extra, and pip resolves it (a dry run against the package
index, skipped where the index cannot be reached)."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
INSTALL_LINE = re.compile(r"pip install -e '\.\[([a-z0-9]+)\]'")
ACCELERATOR_EXTRAS = ("cuda12", "tpu")  # the two; cuda13 rides along where the README shows it
# pip's words for an index it cannot reach, or a download the connection broke off (a 366 MB
# CUDA wheel, fetched for its metadata, was cut off at 288 MB on 2026-12-08): a network fault,
# which says nothing of whether the line resolves.
NETWORK_ERRORS = ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution",
                  "Max retries exceeded", "ConnectTimeoutError", "incomplete-download")


def readme_extras() -> list[str]:
    return INSTALL_LINE.findall((ROOT / "README.md").read_text())


def test_the_readme_shows_gpu_and_tpu_lines_of_jax_extras():
    import importlib.metadata

    extras = readme_extras()
    assert set(ACCELERATOR_EXTRAS) <= set(extras), extras
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    jax_extras = importlib.metadata.metadata("jax").get_all("Provides-Extra")
    for extra in extras:
        if extra in ACCELERATOR_EXTRAS or extra.startswith("cuda"):
            assert ours[extra] == [f"jax[{extra}]"], (extra, ours.get(extra))
            assert extra in jax_extras, f"the installed jax has no {extra!r} extra"


@pytest.mark.parametrize("extra", ACCELERATOR_EXTRAS)
def test_the_readme_install_line_resolves(extra, tmp_path):
    assert extra in readme_extras()
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
           "--report", str(tmp_path / "report.json"), "-e", f".[{extra}]"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    fault = next((e for e in NETWORK_ERRORS if e in done.stderr), None)
    if done.returncode != 0 and fault:
        pytest.skip(f"a network fault, not the line ({fault}): {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-2000:]
    import json
    names = {item["metadata"]["name"] for item in json.loads((tmp_path / "report.json").read_text())["install"]}
    plugin = {"cuda12": "jax-cuda12-plugin", "tpu": "libtpu"}[extra]
    # pip lists what it would install: the plugin where missing (never here: no GPU or TPU
    # packages on this CPU machine), so it must be in the report.
    assert plugin in names, sorted(names)
