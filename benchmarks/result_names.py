"""Names of the files in benchmarks/results/: what ran, when, and on what.

    {benchmark}_{config}_{date}_{machine}.json (.md, .png beside it)
    suite_64px_2026-12-03_avx512-epyc-2core.json, suite_1024px-b1_2026-11-27_h100.json

config: the size and any variant, joined by '-'; date: the day of the run (UTC); machine: an
accelerator's model (h100), or a CPU's widest vector extension that XLA uses (with "-vnni" where
it has AVX-VNNI as well), its family and its core count (avx2-epyc-2core,
avx512-vnni-epyc-2core), since those decide XLA:CPU's speed and bits: two AVX-512 EPYCs, one
with AVX-VNNI, gave different bits for the tests' recorded transfer (2026-12-08).
BENCH_MACHINE=name overrides the machine's name (a machine the rules below name badly)."""
from __future__ import annotations

import json
import os
import platform
import re
from datetime import datetime, timezone
from pathlib import Path

MACHINE_ENV = "BENCH_MACHINE"
CPU_FAMILIES = ("epyc", "ryzen", "threadripper", "xeon", "core", "graviton", "neoverse")


def _cpuinfo() -> tuple[str, set]:
    """(model name, flags) of the first processor in /proc/cpuinfo; ('', set()) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
    return (model.group(1) if model else ""), set(flags.group(1).split() if flags else ())


def cpu_name() -> str:
    """avx512-epyc-2core: vector extension, family, cores (each part only where known)."""
    model, flags = _cpuinfo()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine().lower()
    if "avx_vnni" in flags:
        isa += "-vnni"
    words = re.findall(r"[a-z]+", model.lower())  # "Intel(R) Xeon(R) ..." -> intel, r, xeon, r, ...
    family = next((f for f in CPU_FAMILIES if f in words), "")
    return "-".join(p for p in (isa, family, f"{os.cpu_count()}core") if p)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine(device=None) -> str:
    """The machine's name in result files: BENCH_MACHINE, else the accelerator's model
    ('NVIDIA H100 80GB HBM3' -> h100), else cpu_name()."""
    if os.environ.get(MACHINE_ENV):
        return _slug(os.environ[MACHINE_ENV])
    if device is None:
        import jax
        device = jax.devices()[0]
    if device.platform == "cpu":
        return cpu_name()
    model = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", device.device_kind)
    return model.group(1).lower() if model else _slug(device.device_kind)


def stem(benchmark: str, config: str, device=None, date: str | None = None) -> str:
    """The file name without its extension: {benchmark}_{config}_{date}_{machine}."""
    date = date or datetime.now(timezone.utc).date().isoformat()
    return f"{benchmark}_{config}_{date}_{machine(device)}"


def write(out, stem: str, result: dict, table: str) -> Path:
    """`result` as {out}/{stem}.json and its markdown `table` as {stem}.md, the folder made if
    missing. The JSON file's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(table)
    return out / f"{stem}.json"
