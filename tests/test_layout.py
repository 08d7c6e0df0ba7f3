"""The house rules that a reader relies on, checked on the source: every module short enough to
read at once, no private JAX API (it breaks on upgrades), and the import contracts of
pyproject.toml kept (import-linter; .ci/run runs `lint-imports` too)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("barbershop_jax", "convert", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py"))
MAX_LINES = 450


def test_no_module_is_longer_than_450_lines():
    """The library's and the converters' modules (the scripts of tests/ and benchmarks/ are not held to it)."""
    long = {str(p.relative_to(ROOT)): n for p in SOURCES if p.relative_to(ROOT).parts[0] in ("barbershop_jax", "convert")
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_nothing_imports_private_jax():
    private = re.compile(r"^\s*(from\s+jax\._src|import\s+jax\._src)|jax\._src\.", re.M)
    this = Path(__file__).resolve()
    assert [str(p.relative_to(ROOT)) for p in SOURCES if p != this and private.search(p.read_text())] == []


def test_the_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout
