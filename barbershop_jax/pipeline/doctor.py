"""`barbershop-jax doctor`: what a run will do on this machine, found without running any
model. report() gathers the facts as a JSON-ready dict: the JAX installation, its backend and
devices with their memory; the weights a run would use and the checkpoints they were converted
from (their config.json and sources.json only: no array is loaded); the cache folders and their
sizes; the predicted time of one transfer and of a 4 x 4 grid from the steps this machine
measured before (plan.py, step_times.py); and the next command to run. It takes about a second
(importing JAX and listing the devices). text() and markdown() say the same facts for the
command line and the web page."""
from __future__ import annotations

import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

import jax

from barbershop_jax.config import DEFAULT_BATCH_SIZE, EmbedConfig, TransferConfig, split_options
from barbershop_jax.models import stylegan2
from barbershop_jax.models import weights_folder
from barbershop_jax.pipeline import demo
from barbershop_jax.pipeline import grid as grid_lib
from barbershop_jax.pipeline import plan as plan_lib
from barbershop_jax.pipeline.runtime import compile_cache
from barbershop_jax.pipeline.store import step_times

# The extras that install JAX for an accelerator (pyproject.toml), by what the system shows.
ACCELERATOR_EXTRAS = {"gpu": "pip install 'barbershop-jax[cuda12]'", "tpu": "pip install 'barbershop-jax[tpu]'"}
PLUGINS = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "libtpu")  # JAX's accelerator packages
GRID_SIDE = 4  # the predicted grid: GRID_SIDE faces x GRID_SIDE hairstyles (each its own colour)
SOURCES_FILE = "sources.json"  # beside the models: the checkpoints `weights download` fetched
DEMO_COMMAND = "barbershop-jax demo --out demo_out/"
TRANSFER_COMMAND = ("barbershop-jax transfer --align --paste-back --face PHOTO.jpg --shape SHAPE.jpg --color COLOR.jpg"
                    "{weights} --out OUT_DIR")
GRID_COMMAND = "barbershop-jax transfer --faces FACES_DIR --hairstyles HAIRSTYLES_DIR{weights} --out OUT_DIR"
NOT_RECORDED = "not recorded"


def report(weights=weights_folder.FIND, *, batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "float32", steps=None,
           steps_name: str = "the step counts given") -> dict:
    """The facts of this machine for a run with `weights` (as weights_folder.resolve takes it:
    FIND, the default folder where it holds converted weights, else the embedded models; None
    or "embedded": the embedded models; else a folder), at `batch_size` and
    computing in `dtype`. steps: the step counts of the predicted runs (EmbedConfig and
    TransferConfig fields; default: the demo's for the embedded models, else the official),
    named `steps_name` in the report.
    Runs no model and loads no weights; the result is JSON-serialisable."""
    backend = jax.default_backend()
    unused = visible_accelerator() if backend == "cpu" else None  # an accelerator JAX does not run on
    warnings = []
    if unused:
        warnings.append(f"a {unused.upper()} is present but JAX runs on the CPU: {ACCELERATOR_EXTRAS[unused]}")
    weights_facts = weights_report(weights)
    warnings += weights_facts.pop("warnings")
    return {"versions": versions(), "backend": backend, "devices": devices(), "host": host(),
            "warnings": warnings, "weights": weights_facts, "caches": caches(),
            "predicted": predictions(weights_facts, batch_size, dtype, steps, steps_name),
            "next": next_commands(weights_facts, unused)}


# ------------------------------------------------------------------ the machine

def versions() -> dict:
    """This package's, Python's, JAX's and jaxlib's versions, and JAX's accelerator plugins
    where installed."""
    import jaxlib
    found = {"barbershop-jax": _installed("barbershop-jax") or "not installed (run from a checkout)",
             "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__}
    return {**found, **{name: v for name in PLUGINS if (v := _installed(name))}}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def host() -> dict:
    """The host's memory in bytes (None where the system does not say) and the cores this
    process may use."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"memory_bytes": memory, "cores": cores}


def devices() -> list:
    """Each device JAX runs on: platform, kind, id and memory (an accelerator's own, from its
    memory_stats' bytes_limit where it reports one; a CPU's is the host's)."""
    found = []
    for device in jax.devices():
        entry = {"id": device.id, "platform": device.platform, "kind": device.device_kind}
        if device.platform == "cpu":
            entry.update(memory_bytes=host()["memory_bytes"], memory_of="host")
        else:
            try:
                stats = device.memory_stats() or {}
            except Exception:  # noqa: BLE001 (a backend without memory statistics: not known)
                stats = {}
            entry.update(memory_bytes=stats.get("bytes_limit"), memory_of="device")
        found.append(entry)
    return found


def visible_accelerator() -> str | None:
    """"gpu" where the system shows an NVIDIA GPU (its device file, or nvidia-smi on PATH),
    "tpu" where it shows a TPU (/dev/accel*), else None: whether JAX uses it or not."""
    if Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi"):
        return "gpu"
    if any(Path("/dev").glob("accel[0-9]*")):
        return "tpu"
    return None


# ------------------------------------------------------------------ the weights

def weights_report(weights) -> dict:
    """The weights a run with `weights` uses: their folder (None: the embedded tiny models),
    whether it is the default folder, the generator's size, and each model's checkpoint (its
    config.json's "converted" record) and the downloads of sources.json. "warnings": what
    would stop a run."""
    folder, default = weights_folder.resolve(weights), weights_folder.default_folder()
    facts = {"folder": None if folder is None else str(folder), "default_folder": str(default),
             "default_holds_weights": weights_folder.holds_weights(default), "warnings": []}
    if folder is None:
        return {**facts, "embedded": True, "chosen": weights is not weights_folder.FIND,
                "resolution": stylegan2.tiny_config().size, "get": weights_folder.GET_WEIGHTS}
    missing = weights_folder.missing_models(folder)
    if missing:
        facts["warnings"].append(f"{folder}: no converted {', '.join(missing)} here (expected "
                                 f"{folder / missing[0] / 'config.json'}): a run with these weights fails")
    return {**facts, "embedded": False, "is_default": folder == default, "missing": missing,
            "resolution": weights_folder.resolution(folder),
            "models": {m: checkpoint(folder / m / "config.json") for m in weights_folder.MODELS if m not in missing},
            "sources": downloads(folder / SOURCES_FILE)}


def checkpoint(config_file: Path) -> dict:
    """What a model's config.json records of the checkpoint it was converted from: its
    "source" and every "...sha256" (the LPIPS weights' too, for VGG16), None where not recorded."""
    try:
        converted = json.loads(config_file.read_text()).get("converted")
    except (OSError, ValueError, AttributeError) as e:
        return {"source": None, "source_sha256": None, "problem": f"{config_file}: unreadable ({e})"}
    converted = converted if isinstance(converted, dict) else {}
    sums = {k: str(v) for k, v in converted.items() if k.endswith("sha256") and k != "source_sha256"}
    source, digest = converted.get("source"), converted.get("source_sha256")
    return {"source": None if source is None else str(source), "source_sha256": None if digest is None else str(digest),
            **sums}


def downloads(file: Path) -> dict | None:
    """The checkpoints `weights download` fetched into the folder (its sources.json: name,
    kind, url, sha256, verified, licence of each), None where there is no such file."""
    if not file.is_file():
        return None
    try:
        files = json.loads(file.read_text())["files"]
        if not isinstance(files, list):
            raise TypeError("files is not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"file": str(file), "files": [], "problem": f"{file}: unreadable ({e})"}
    keys = ("name", "kind", "url", "sha256", "verified", "licence")
    return {"file": str(file), "files": [{k: f.get(k) for k in keys} for f in files if isinstance(f, dict)]}


# ------------------------------------------------------------------ the caches

def caches() -> list:
    """The folders runs keep between them, each with its path (None: turned off), whether
    it exists, and its size in bytes and files."""
    found = []
    for name, path in (("XLA compile cache", compile_cache.cache_dir()), ("step times", step_times.path()),
                       ("default weights folder", weights_folder.default_folder())):
        size, files = disk_use(path) if path is not None else (0, 0)
        found.append({"name": name, "path": None if path is None else str(path),
                      "exists": path is not None and Path(path).exists(), "bytes": size, "files": files})
    return found


def disk_use(path) -> tuple[int, int]:
    """(bytes, files) under `path`, or of the file itself; (0, 0) where it does not exist.
    Links are counted, not followed; what cannot be read is left out."""
    total, files, folders = 0, 0, [Path(path)]
    if Path(path).is_file():
        return Path(path).stat().st_size, 1
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                else:
                    total, files = total + entry.stat(follow_symlinks=False).st_size, files + 1
            except OSError:
                pass
    return total, files


# ------------------------------------------------------------------ the predicted time

def predictions(weights_facts: dict, batch_size: int, dtype: str, steps=None,
                steps_name: str = "the step counts given") -> dict:
    """The predicted time of one transfer (face, shape, colour) and of a GRID_SIDE x GRID_SIDE
    grid, counted as a run counts its work (plan.distinct_work) and timed from the steps
    measured here before at this size, dtype and batch size (plan.predict); compilation not
    counted. A run whose stages were never measured here has seconds None."""
    size = weights_facts["resolution"]
    if size is None:
        return {"problem": "the generator's size is not recorded in its config.json", "runs": []}
    if step_times.path() is None:
        return {"problem": f"the step times are off (${step_times.ENV}=off): nothing is measured or predicted",
                "runs": []}
    source = (steps_name if steps is not None else "the demo's step counts" if weights_facts["embedded"] else
              "the official step counts")
    counts = dict(steps if steps is not None else demo.DEMO_STEPS if weights_facts["embedded"] else {})
    embed_overrides, transfer_overrides = split_options(counts)
    stage_steps = plan_lib.stage_steps(EmbedConfig.for_size(size, **embed_overrides),
                                       TransferConfig(**transfer_overrides))
    faces = [f"face {i + 1}" for i in range(GRID_SIDE)]
    runs = {"one transfer": [("face", "shape", "colour")],
            f"{GRID_SIDE} x {GRID_SIDE} grid": grid_lib.grid_triples(faces, [f"hairstyle {i + 1}" for i in
                                                                            range(GRID_SIDE)])[0]}
    return {"context": step_times.context(size, dtype, batch_size), "size": size, "dtype": dtype,
            "batch_size": batch_size, "step_counts": source, "steps": stage_steps,
            "runs": [predicted_run(name, triples, stage_steps, size, dtype, batch_size)
                     for name, triples in runs.items()]}


def predicted_run(name: str, triples, stage_steps: dict, size: int, dtype: str, batch_size: int) -> dict:
    work = plan_lib.distinct_work(triples)
    plan = plan_lib.predict({stage: (n, n) for stage, n in work.items()}, stage_steps, size, dtype, batch_size,
                            transfers=len(triples), title=name)
    return {"run": name, "transfers": len(triples), "seconds": plan.seconds,
            "unmeasured": [s.stage for s in plan.stages if s.seconds is None],
            "stages": [{"stage": s.stage, "items": s.total, "batches": s.batches, "steps": s.steps,
                        "seconds_per_step": s.seconds_per_step, "seconds": s.seconds} for s in plan.stages]}


# ------------------------------------------------------------------ the next command

def next_commands(weights_facts: dict, unused_accelerator: str | None) -> list:
    """[{"command", "why"}]: what to run next, first things first."""
    found = []
    if unused_accelerator:
        found.append({"command": ACCELERATOR_EXTRAS[unused_accelerator],
                      "why": f"JAX for the {unused_accelerator.upper()} (this JAX runs on the CPU)"})
    default = weights_facts["default_folder"]
    if weights_facts["embedded"] and weights_facts["default_holds_weights"]:
        found += [{"command": TRANSFER_COMMAND.format(weights=""), "why": f"a transfer with the weights in {default}"}]
    elif weights_facts["embedded"] or weights_facts["missing"]:
        found += [{"command": weights_folder.GET_WEIGHTS, "why": f"the official weights, into {default}"},
                  {"command": DEMO_COMMAND, "why": "the whole pipeline now, on the embedded tiny models (random "
                                                   "weights: no real hairstyle)"}]
    else:
        flag = "" if weights_facts["is_default"] else f" --weights {weights_facts['folder']}"
        found += [{"command": TRANSFER_COMMAND.format(weights=flag), "why": "one transfer (ordinary photos)"},
                  {"command": GRID_COMMAND.format(weights=flag), "why": "every face with every hairstyle"}]
    return found


# ------------------------------------------------------------------ saying it

def sections(facts: dict) -> list:
    """The report as (heading, lines) pairs, which text() and markdown() lay out."""
    v = facts["versions"]
    plugins = "".join(f", {name} {v[name]}" for name in PLUGINS if name in v)
    head = (f"barbershop-jax {v['barbershop-jax']} on Python {v['python']}: jax {v['jax']}, jaxlib {v['jaxlib']}"
            + plugins)
    found = [(head, [f"warning: {w}" for w in facts["warnings"]]),
             (f"backend: {facts['backend']}", [_device_line(d, facts["host"]) for d in facts["devices"]]),
             _weights_section(facts["weights"]),
             ("cache folders:", [_cache_line(c) for c in facts["caches"]]),
             _prediction_section(facts["predicted"]),
             ("next:", [f"`{c['command']}`: {c['why']}" for c in facts["next"]])]
    return found


def _device_line(device: dict, host_facts: dict) -> str:
    line = f"device {device['id']}: {device['platform']} ({device['kind']})"
    memory = device["memory_bytes"]
    if device["memory_of"] == "host":
        return line + f", the host's memory: {_bytes(memory) if memory else 'not known'}, {host_facts['cores']} cores"
    return line + f", memory: {_bytes(memory) if memory else 'not reported'}"


def _weights_section(w: dict) -> tuple:
    if w["embedded"]:
        heading = (f"weights: the embedded tiny models ({w['resolution']} px, fixed random weights: no real "
                   "hairstyle)")
        why = ("chosen with --weights embedded; the default folder holds converted weights: "
               f"{w['default_folder']}" if w["chosen"] and w["default_holds_weights"] else
               f"no converted weights in {w['default_folder']} (the default folder): get the official ones with "
               f"`{w['get']}`")
        return heading, [why]
    where = " (the default folder)" if w["is_default"] else ""
    size = f", StyleGAN2 at {w['resolution']} px" if w["resolution"] else ", generator size not recorded"
    lines = [f"{name}: from {c['source'] or NOT_RECORDED}, sha256 {c['source_sha256'] or NOT_RECORDED}"
             + "".join(f"; {k} {v}" for k, v in c.items() if k.endswith("sha256") and k != "source_sha256")
             + (f" ({c['problem']})" if c.get("problem") else "") for name, c in w["models"].items()]
    lines += [f"{m}: missing" for m in w["missing"]]
    sources = w["sources"]
    if sources is None:
        lines.append(f"downloads: {NOT_RECORDED} (no {SOURCES_FILE})")
    else:
        lines += [f"downloaded {f['name']} ({f['kind']}): sha256 {f['sha256'] or NOT_RECORDED}, "
                  f"{'verified' if f['verified'] else 'not verified'}, licence {f['licence'] or NOT_RECORDED}"
                  for f in sources["files"]] + ([sources["problem"]] if sources.get("problem") else [])
    return f"weights: {w['folder']}{where}{size}", lines


def _cache_line(cache: dict) -> str:
    if cache["path"] is None:
        return f"{cache['name']}: off"
    if not cache["exists"]:
        return f"{cache['name']}: {cache['path']}: not there yet"
    files = f" in {cache['files']} files" if Path(cache["path"]).is_dir() else ""
    return f"{cache['name']}: {cache['path']}: {_bytes(cache['bytes'])}{files}"


def _prediction_section(p: dict) -> tuple:
    if p.get("problem"):
        return "predicted time: not known", [p["problem"]]
    heading = f"predicted time ({p['size']} px, {p['dtype']}, batch size {p['batch_size']}, {p['step_counts']}):"
    lines = []
    for run in p["runs"]:
        items = {s["stage"]: s["items"] for s in run["stages"]}
        work = (f"{run['run']} ({_count(items['W+ embedding'], 'image')} embedded, "
                f"{_count(items['Alignment'], 'alignment')}, {_count(items['Blend'], 'blend')})")
        if run["seconds"] is None:
            lines.append(f"{work}: not measured yet (the steps of {', '.join(run['unmeasured'])}): a first run "
                         "measures them")
        else:
            lines.append(f"{work}: about {plan_lib.duration(run['seconds'])}")
    if any(run["seconds"] is not None for run in p["runs"]):
        lines.append("from the steps measured on this machine before; compilation not counted")
    return heading, lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


def text(facts: dict) -> str:
    """The report for a terminal: each heading, its lines indented under it."""
    return "\n".join(f"{heading}" + "".join(f"\n  {line}" for line in lines) for heading, lines in sections(facts))


def markdown(facts: dict) -> str:
    """The report as Markdown (the web page's "This machine"): each heading in bold, its lines
    as a list."""
    return "\n\n".join(f"**{heading}**" + "".join(f"\n- {line}" for line in lines)
                       for heading, lines in sections(facts))
