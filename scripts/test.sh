#!/usr/bin/env bash
# The test command (README, .ci/run): make .venv if missing, install the package with its
# test, web and docs extras, build the docs, run the suite. torch 2.14.1 + torchvision 0.29.1
# come from this machine's disk (docs/contributing.md, "Tests"); the lpips package is the
# reference for the LPIPS parity tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test,web,docs]"
# The web page's browser test drives Debian's chromium with its driver: installed here where
# missing and apt-get can install (as root); otherwise that one test is skipped, saying why.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
            >/dev/null || echo "scripts/test.sh: could not install chromium (the browser test will be skipped)" >&2
    else
        echo "scripts/test.sh: no chromium/chromedriver and no apt-get as root (the browser test will be skipped)" >&2
    fi
fi
# The layers' import contracts (pyproject.toml, [tool.importlinter]): a stage that imports the
# pipeline, or the runtime importing torch, fails here before any test runs.
.venv/bin/lint-imports --no-cache
# The documentation site, strict: a broken link or anchor, a page missing from the nav or an API
# name that no longer resolves fails here (mkdocs.yml; the command-line page is generated).
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
# Two workers, one test file each at a time (module fixtures run once): XLA compiles on one
# core, so 2 workers on 2 cores took 642 s against 814-918 s for one. TEST_WORKERS=0: serial.
# --no-loadscope-reorder: the files in the order tests/conftest.py gives them, the longest first,
# so that the two workers end together. --durations: every run names its slowest tests, so that
# a slower suite shows where.
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=12 "$@"
