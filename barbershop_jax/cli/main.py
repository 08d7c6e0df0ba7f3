"""`barbershop-jax` command line: parse arguments, call one library function, report errors
in one line with a non-zero exit. The arguments are cli/args.py; the work is the pipeline's."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from barbershop_jax.cli import args as args_lib
from barbershop_jax.pipeline.files.image_files import one_line


def demo(args):
    from barbershop_jax.pipeline import demo as demo_lib
    if args.samples:
        demo_lib.run(args.out, n=args.n, seed=args.seed, weights=args.weights, truncation=args.truncation)
    else:
        demo_lib.run_transfer(args.out, weights=args.weights, seed=args.seed, progress=not args.quiet,
                              fresh=args.fresh)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def _image_paths(inputs):
    """Files as given; folders expanded to their images, sorted."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    if not paths:
        raise ValueError(f"no images in {', '.join(map(str, inputs))}")
    return paths


def _distributed(args):
    """jax.distributed for multi-host runs: explicit flags, or the cluster's environment."""
    if not args.distributed:
        return
    import jax
    kwargs = {k: v for k, v in {"coordinator_address": args.coordinator, "num_processes": args.num_processes,
                                "process_id": args.process_id}.items() if v is not None}
    jax.distributed.initialize(**kwargs)


EMBED_FLAGS = {"w_steps": "w_steps", "fs_steps": "fs_steps", "lr": "learning_rate", "noise": "noise", "seed": "seed",
               "l2_lambda": "l2_lambda", "percept_lambda": "percept_lambda", "p_norm_lambda": "p_norm_lambda",
               "l_f_lambda": "l_f_lambda"}  # flag -> EmbedConfig field


def embed(args):
    import jax

    from barbershop_jax.config import EmbedConfig
    from barbershop_jax.models import bundle
    from barbershop_jax.pipeline.store import batch_files
    from barbershop_jax.pipeline.store.layout import Layout
    from barbershop_jax.pipeline import embed as embed_lib
    from barbershop_jax.pipeline.store import cache as store
    _distributed(args)
    models = bundle.load(args.weights, args.dtype, parser=False)
    flags = {field: getattr(args, flag) for flag, field in EMBED_FLAGS.items() if getattr(args, flag) is not None}
    overrides = {**args_lib.loop_options(), **flags, **args_lib.optimizer_options(args, args_lib.EMBED_OPTIMIZERS)}
    cfg = EmbedConfig.for_size(models.generator.config.size, **overrides)
    failures, reuse = [], store.Reuse(fresh=args.fresh)
    done = embed_lib.embed_files(_image_paths(args.images), args.out, models, cfg, batch_size=args.batch_size,
                                 fs=not args.no_fs, progress=not args.quiet, import_official=args.import_official,
                                 checkpoint_every=args.checkpoint_every or None, failures=failures, reuse=reuse,
                                 exif=not args.no_exif)
    share = f" by process {jax.process_index()} of {jax.process_count()}" if jax.process_count() > 1 else ""
    print(f"{len(done)} image(s) embedded{share} under {args.out} (W+{'' if args.no_fs else ' and FS'})")
    if reuse.note(args.out):
        print(f"barbershop-jax: note: {reuse.note(args.out)}", file=sys.stderr)
    if failures:
        path = batch_files.write_failures(Layout(args.out).failures_csv(),
                                          [((name,), reason) for name, reason in failures], columns=("image",))
        for _, reason in failures:
            print(f"barbershop-jax: error: {one_line(str(reason))}", file=sys.stderr)
        print(f"{len(failures)} image(s) failed; see {path}", file=sys.stderr)
        return 1


JOB_FLAGS = ("face", "shape", "color", "structure", "pairs", "part", "target_mask", "shape_transform", "weights",
             "batch_size", "dtype", "parser_dtype", "landmarks", "dlib_model", "face_index", "min_face",
             "paste_back", "feather", "no_resize", "save_target_mask", "fresh")


def transfer(args):
    from barbershop_jax.pipeline import transfer_job
    # --region: every triple's region (with --pairs: of the rows whose region column is empty).
    flags = {k: getattr(args, k) for k in ("sign", "smooth", "seed", "noise", "region",
                                           *(n for n, _ in args_lib.TRANSFER_STEPS)) if getattr(args, k) is not None}
    options = {**args_lib.loop_options(), **flags, **args_lib.optimizer_options(args, args_lib.TRANSFER_OPTIMIZERS)}
    grid = {k: [str(p) for p in _image_paths(getattr(args, k))] if getattr(args, k) else None
            for k in ("faces", "hairstyles", "colors")}  # folders expanded to their images
    job = transfer_job.TransferJob(args.out, progress=not args.quiet, checkpoint_every=args.checkpoint_every or None,
                                   options=options, crop=args.align, exif=not args.no_exif, **grid,
                                   **{k: getattr(args, k) for k in JOB_FLAGS})
    report = transfer_job.run(job, on_plan=lambda plan: print(plan, file=sys.stderr))
    _print_transfer_report(report)
    return report.exit_code


def _print_transfer_report(report):
    """The job's report after its run (its notes and plan were told as it went): the contact
    sheet, the table of results, what was reused, the pasted photos, then each failed row."""
    from barbershop_jax.pipeline import grid as grid_lib
    if report.sheet_path is not None:
        print(grid_lib.wrote_line(report.sheet_path, report.sheet_title))
    if report.summary:
        print(report.summary)
    if report.reuse_note:
        print(f"barbershop-jax: note: {report.reuse_note}", file=sys.stderr)
    for face, path in report.pasted:
        print(f"{face}: pasted into its photo: {path}")
    if report.failures:
        print(f"{len(report.failures)} of {report.triples} triple(s) failed; see {report.failures_csv}",
              file=sys.stderr)
        for where, reason in report.failures:
            print(f"barbershop-jax: error: {where}{reason}", file=sys.stderr)


def crop_faces(args):
    from barbershop_jax.pipeline.store import batch_files
    from barbershop_jax.pipeline.store.layout import Layout
    from barbershop_jax.pipeline.faces import crop as face_crop
    cropper = face_crop.FaceCropper.from_options(args.size, args.landmarks, args.dlib_model, args.face_index,
                                                 args.min_face, exif=not args.no_exif)
    photos = _image_paths(args.photos)
    crops, failures = face_crop.crop_photos(cropper, photos, args.out, progress=not args.quiet)
    for _, reason in failures:
        print(f"barbershop-jax: error: {reason}", file=sys.stderr)
    print(f"{len(crops)} face crop(s) of {args.size} px from {len(photos) - len(failures)} photo(s) in {args.out} "
          "(each with its transform, {name}.crop.json)")
    if failures:
        path = batch_files.write_failures(Layout(args.out).failures_csv(), failures, columns=("photo",))
        print(f"{len(failures)} of {len(photos)} photo(s) failed; see {path}", file=sys.stderr)
        return 1
    return 0


def evaluate_embedding(args):
    from barbershop_jax.models import bundle
    from barbershop_jax.pipeline import evaluate
    if not Path(args.embeddings).is_dir():
        raise ValueError(f"{args.embeddings}: no such embeddings folder (the --out of barbershop-jax embed)")
    paths = _image_paths(args.images)
    vgg = bundle.load_vgg(args.weights)  # LPIPS only: no generator, no PCA statistics
    report = evaluate.evaluate(paths, args.embeddings, vgg)
    for item in report["unreadable"]:
        print(f"barbershop-jax: error: {one_line(str(item['reason']))}", file=sys.stderr)
    if not report["images"]:  # nothing to report: say so instead of writing an empty table
        if report["missing"]:
            print(f"barbershop-jax: error: {args.embeddings}: no embeddings of the {len(report['missing'])} "
                  f"image(s) given (embed them first: barbershop-jax embed IMAGES --out {args.embeddings})",
                  file=sys.stderr)
        return 1
    out = evaluate.write_report(report, args.out or Path(args.embeddings) / "evaluation.json")
    print(evaluate.markdown(report))
    if report["missing"]:
        print(f"no embeddings for {len(report['missing'])} image(s): {', '.join(report['missing'][:5])}")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 1 if report["unreadable"] else 0


WEB_EXTRA = "serve needs the web extra: pip install 'barbershop-jax[web]'"


def serve(args):
    from barbershop_jax import web  # first: it turns Gradio's analytics off before gradio is imported
    try:
        from gradio import Blocks  # noqa: F401 (not bare `import gradio`: an uninstalled gradio leaves a
    except ImportError:            # folder behind, which imports as an empty namespace package)
        print(WEB_EXTRA, file=sys.stderr)
        return 2
    from barbershop_jax.web import jobs
    if args.out:
        _check_out_folder(args.out)
    limits = jobs.Limits(max_steps=args.max_steps, max_batch=args.max_batch, max_upload_mb=args.max_upload_mb)
    web.serve(args.weights, args.host, args.port, args.out, batch_size=args.batch_size,
              compile_cache=not args.no_compile_cache, limits=limits,
              compile_ahead=False if args.no_compile_ahead else None)
    return 0


def doctor(args):
    import json

    from barbershop_jax.models import weights_folder
    from barbershop_jax.pipeline import doctor as doctor_lib
    report = doctor_lib.report(weights_folder.FIND if args.weights is None else args.weights)
    print(json.dumps(report, indent=1) if args.json else doctor_lib.text(report))
    return 0


def _log_to_stderr():
    """The library's INFO and above (resumed loops, skipped images) as one line each."""
    import logging

    class ToStderr(logging.Handler):  # the current sys.stderr at each message, not the one at setup
        def emit(self, record):
            print(self.format(record), file=sys.stderr)

    logger = logging.getLogger("barbershop_jax")
    if not logger.handlers:
        handler = ToStderr()
        handler.setFormatter(logging.Formatter("barbershop-jax: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _is_out_of_memory(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def build_parser():
    return args_lib.build_parser(sys.modules[__name__])


def main(argv=None) -> int:
    # File names that are not UTF-8 (kept by Python as surrogates) are printed escaped, as
    # stderr does, instead of failing the print after the work is done.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    return _run(args)


OUT_FOLDER_COMMANDS = ("demo", "transfer", "align-faces", "embed")  # their --out is a folder
WEIGHTS_COMMANDS = ("demo", "transfer", "embed", "evaluate-embedding", "serve")  # they load models
# Commands that run until stopped: SIGINT stops them at once (a stop request would be left set
# and refuse every later job of the server).
SERVER_COMMANDS = ("serve",)


def _check_out_folder(out):
    """--out must be a folder, or creatable as one, and writable: found before any work (a file
    there once failed the run at its first checkpoint, after the first loop had run)."""
    import os
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor) or p == Path("."))
    if not existing.is_dir():
        where = "" if existing == out else f"{existing} is "
        raise ValueError(f"{out}: {where}a file, not a folder (--out names the output folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: cannot write in {existing} (permission denied)")


def _resolve_weights(args):
    """The weights a command that loads models uses (--weights, else the default folder where
    it holds converted weights, else the embedded models), said in one line before any work."""
    from barbershop_jax.models import weights_folder
    if args.command in WEIGHTS_COMMANDS:
        args.weights = weights_folder.resolve(weights_folder.FIND if args.weights is None else args.weights)
        print(f"barbershop-jax: {weights_folder.describe(args.weights)}")  # stdout: stderr carries the errors


def _run(args) -> int:
    from barbershop_jax.pipeline.runtime import compile_cache
    from barbershop_jax.pipeline.store import resume
    try:
        if args.command in OUT_FOLDER_COMMANDS:
            _check_out_folder(args.out)
        _resolve_weights(args)
        if not args.no_compile_cache:
            compile_cache.enable()
        if args.command in SERVER_COMMANDS:
            rc = args.func(args)
        else:
            # SIGINT/SIGTERM: a loop finishes its chunk, saves and stops; anything else stops at once.
            with resume.handle_signals():
                rc = args.func(args)
    except (resume.Interrupted, resume.Stopped) as e:
        saved = getattr(e, "saved", True)  # Stopped: outside the loops, no loop has steps to lose
        how = ("run the same command again to resume from there" if saved else
               "checkpointing was off (--checkpoint-every 0): finished stages are kept, the interrupted one restarts")
        print(f"barbershop-jax: {e}; {how}", file=sys.stderr)
        return 143 if e.signum == signal.SIGTERM else 130
    except ModuleNotFoundError as e:
        if e.name == "torch":
            print("barbershop-jax: error: conversion needs PyTorch: pip install 'barbershop-jax[convert]'",
                  file=sys.stderr)
            return 2
        raise
    except (ValueError, OSError) as e:  # ConversionError is a ValueError
        print(f"barbershop-jax: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("barbershop-jax: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if _is_out_of_memory(e):
            size = getattr(args, "batch_size", None)
            hint = (f"try --batch-size {max(size // 2, 1)}" if size and size > 1 else
                    "the model does not fit this device at batch size 1")
            print(f"barbershop-jax: error: out of device memory at batch size {size}: {hint} "
                  "(finished work is kept; the same command resumes)", file=sys.stderr)
            return 1
        raise
    return rc or 0


