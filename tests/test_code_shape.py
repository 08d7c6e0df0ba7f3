"""The shape the code keeps, checked on its syntax trees: functions short enough to read
(at most 60 lines, 8 parameters), no print below the command line and the web page (the
library returns reports; cli/ and web/ show them), no call into another module's private
names, and no development history (numbered sessions) in the project's own words."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "barbershop_jax"
MAX_LINES, MAX_PARAMS = 60, 8
# Allowed to be longer or wider, each for its reason:
LONG_OK = {
    ("cli/args.py", "build_parser"),   # argparse's layout: one add_argument per flag
    ("web/app.py", "build"),           # Gradio's layout: one component per line
}
WIDE_OK = {
    ("models/conv.py", "conv_general_dilated"),  # keeps lax.conv_general_dilated's own signature
    ("web/app.py", "transfer_job"),    # Gradio event handlers: one parameter per input component
    ("web/app.py", "grid_job"),
}
PRINT_OK = ("cli/", "web/")
PRIVATE_OK = {"_replace", "_asdict", "_fields", "_make"}  # namedtuple's public API


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _params(node) -> int:
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def test_functions_are_short_and_narrow():
    long, wide = [], []
    for rel, tree in _modules():
        for f in _functions(tree):
            lines = f.end_lineno - f.lineno + 1
            if lines > MAX_LINES and (rel, f.name) not in LONG_OK:
                long.append(f"{rel}:{f.lineno} {f.name}: {lines} lines")
            if _params(f) > MAX_PARAMS and (rel, f.name) not in WIDE_OK:
                wide.append(f"{rel}:{f.lineno} {f.name}: {_params(f)} parameters")
    assert not long and not wide, "\n".join(long + wide)


def test_no_print_below_the_command_line_and_the_web_page():
    found = [f"{rel}:{node.lineno}" for rel, tree in _modules() if not rel.startswith(PRINT_OK)
             for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert not found, found


def test_no_call_into_another_modules_private_names():
    found = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id not in ("self", "cls") and node.attr not in PRIVATE_OK:
                    found.append(f"{rel}:{node.lineno} {owner.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("barbershop_jax"):
                found += [f"{rel}:{node.lineno} from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("where", ["README.md", "docs", "benchmarks", "barbershop_jax", "tests"])
def test_no_session_numbers(where):
    pattern = re.compile(r"session ?[0-9]|sessions [0-9]", re.IGNORECASE)
    root = ROOT / where
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and p.suffix in
                                           (".py", ".md", ".json", ".txt", ".csv", ".toml", ".pyi")]
    found = [f"{p.relative_to(ROOT)}:{i}" for p in files
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not found, found
