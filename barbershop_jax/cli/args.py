"""The command line's arguments: argparse types that refuse bad numbers in one line, the
parser of every command (each names the function of cli/main.py that runs it), and the one
setting read from the environment (BARBERSHOP_JAX_LOOP: loop_options)."""
from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

from barbershop_jax.config import DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_EVERY, FEATHER, FLOAT32_MAX, LIMITS
from barbershop_jax.config import MAX_BATCH_SIZE, MAX_COUNT, Limit, optimizer_spec, shown
from barbershop_jax.pipeline.faces.crop import MIN_FACE
from barbershop_jax.pipeline.files.image_files import one_line, shown_path

PLUGIN_GROUP = "barbershop_jax.commands"  # entry points: f(subparsers) adds commands


def number(limit: Limit):
    """An argparse type: a number within `limit` (whole or finite), else one clear line naming
    the flag (argparse adds it) and the range; exit status 2 before any work (a negative batch
    size once ran nothing and reported success, a seed of 2**32 drew the noise of seed 0)."""
    def parse(text):
        try:
            value = limit.kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{shown(text)} is not {'an integer' if limit.kind is int else 'a number'}"
                                             ) from None
        if limit.problem(value):
            low = f"above {limit.least}" if limit.above else f"of at least {limit.least}"
            high = limit.most if limit.kind is int else f"{limit.most:g}"
            raise argparse.ArgumentTypeError(f"{shown(text)}: expected a number {low} and at most {high}")
        return value
    parse.__name__ = limit.kind.__name__  # argparse names the type in its messages
    return parse


LOOP_ENV = "BARBERSHOP_JAX_LOOP"


def loop_options() -> dict:
    """BARBERSHOP_JAX_LOOP="CHUNK,rolled" or "CHUNK,unrolled" as the configs' `chunk` and
    `unroll` options of `embed` and `transfer` ({} when unset): the loops' chunking for tuning,
    and for the tests' subprocesses, whose loops compile faster rolled. Read here, at the edge,
    so that the library's programs depend on their configs alone."""
    setting = os.environ.get(LOOP_ENV, "").strip()
    if not setting:
        return {}
    chunk, _, mode = setting.partition(",")
    if not chunk.strip().isdigit() or int(chunk) < 1 or mode.strip() not in ("rolled", "unrolled"):
        raise ValueError(f"{LOOP_ENV}={setting!r}: expected CHUNK,rolled or CHUNK,unrolled (e.g. 4,rolled)")
    return {"chunk": int(chunk), "unroll": mode.strip() == "unrolled"}


def flag(name: str):
    """The argparse type of the setting `name`: its range in config.LIMITS, which the configs
    and the Python API check too."""
    return number(LIMITS[name])


def optimizer_text(text):
    """An argparse type: an optimiser text (config.py, OptimizerSpec), in its one spelling;
    one clear line when it is not one."""
    try:
        return optimizer_spec(text, "optimizer").text()
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


optimizer_text.__name__ = "optimizer"
# Each loop's optimiser flag: (config field, flag help); --optimizer sets all of a command's.
OPTIMIZER_FLAGS = (("w_optimizer", "the W+ loop"), ("fs_optimizer", "the FS loop"),
                   ("inpaint_optimizer", "the target mask's inpainting rounds"),
                   ("align_optimizer", "both alignment steps"), ("blend_optimizer", "the blend"))
OPTIMIZER_HELP = ("an optax optimiser and its arguments, e.g. adam (official), 'lion(b1=0.95, learning_rate=0.001)', "
                  "'sgd(momentum=0.9, schedule=\"cosine\", warmup=0.05)'; results made with another than adam are "
                  "cached apart")


EMBED_OPTIMIZERS = ("w_optimizer", "fs_optimizer")
TRANSFER_OPTIMIZERS = tuple(field for field, _ in OPTIMIZER_FLAGS)


def add_optimizer_flags(p, fields):
    """--optimizer (every loop of the command) and one flag per loop of `fields`."""
    p.add_argument("--optimizer", type=optimizer_text, metavar="OPT",
                   help=f"the optimiser of every loop: {OPTIMIZER_HELP}")
    for field, loop in OPTIMIZER_FLAGS:
        if field in fields:
            p.add_argument("--" + field.replace("_", "-"), type=optimizer_text, metavar="OPT",
                           help=f"the optimiser of {loop} (default: --optimizer, else adam)")


def optimizer_options(args, fields) -> dict:
    """The config fields of the optimiser flags given: a loop's own flag, else --optimizer."""
    chosen = {f: getattr(args, f, None) or args.optimizer for f in fields}
    return {f: text for f, text in chosen.items() if text is not None}


COUNT = number(Limit(int, 0, MAX_COUNT))              # other counts and indices
POSITIVE = number(Limit(int, 1, MAX_COUNT))           # other sizes
NON_NEGATIVE = number(Limit(float, 0.0, FLOAT32_MAX))  # other finite amounts
PORT = number(Limit(int, 1, 65535))
SAMPLES = number(Limit(int, 1, MAX_BATCH_SIZE))       # demo --samples: rendered as one batch
TRUNCATION = number(Limit(float, 0.0, 1.0))           # psi: 0 the average face, 1 none
UPLOAD_MB = number(Limit(float, 0.0, 1024.0 * 1024.0, above=True))  # serve --max-upload-mb: up to a TiB


def _part(text):
    """'K/N' -> (K, N), 1 <= K <= N <= MAX_COUNT."""
    try:
        k, n = (int(x) for x in text.split("/"))
        if not 1 <= k <= n <= MAX_COUNT:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)}: expected K/N with 1 <= K <= N, e.g. 2/4") from None
    return k, n


TRANSFER_STEPS = (("w_steps", "W+ embedding steps (official: 1100)"), ("fs_steps", "FS embedding steps (official: 250)"),
                  ("inpaint_steps", "steps of each GAN-inpainting round of the target mask (official: 80)"),
                  ("align_steps1", "alignment step 1 (official: 140)"), ("align_steps2", "alignment step 2 (official: 100)"),
                  ("blend_steps", "blending steps (official: 400)"))


def _add_checkpoint_flag(p):
    p.add_argument("--checkpoint-every", type=flag("checkpoint_every"), default=DEFAULT_CHECKPOINT_EVERY, metavar="STEPS",
                   help=f"save each optimisation loop's state every STEPS steps under OUT/.resume/, so that an "
                        f"interrupted run resumes mid-stage (default {DEFAULT_CHECKPOINT_EVERY}; 0: off)")


def _add_dtype_flag(p):
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype of the generator's and VGG16's convolutions: bfloat16 is faster on GPUs and "
                        "TPUs, with a small measured loss of quality (docs/speed.md); results are cached apart "
                        "(default float32, as the official code)")


def _add_landmark_flags(p):
    p.add_argument("--landmarks", metavar="JSON", help="landmarks as JSON: {photo name: 68 or 5 [x, y] points, or a "
                                                      "list of faces} (default: {stem}.landmarks.json beside each "
                                                      "photo, else dlib)")
    p.add_argument("--dlib-model", metavar="DAT", help="dlib's shape_predictor_68_face_landmarks.dat (default: "
                                                      "$BARBERSHOP_DLIB_MODEL, else the one installed by "
                                                      "barbershop-jax[landmarks])")
    p.add_argument("--face-index", type=flag("face_index"), help="which face of a photo with several (default: all for "
                                                  "align-faces; an error for transfer --align)")
    p.add_argument("--min-face", type=flag("min_face"), default=MIN_FACE,
                   help=f"refuse faces whose crop square is smaller than this many photo pixels (default {MIN_FACE})")


def _add_fresh_flag(p):
    p.add_argument("--fresh", action="store_true",
                   help="redo the finished stages (embeddings, alignments, blends) an earlier run left in --out "
                        "instead of reusing them (default: reuse them, and say so)")


def _add_exif_flag(p):
    p.add_argument("--no-exif", action="store_true",
                   help="read images as stored, ignoring their EXIF orientation (as the official does)")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error here (argparse prints the whole usage
    block first, which buries the line that says what is wrong); exit status 2. A file whose
    name starts with '-' reads as an option, and argparse's message ("expected one argument",
    "the following arguments are required") would not name it: the line names it."""

    commands = None  # the action add_subparsers returned: its choices are the commands' parsers

    def add_subparsers(self, **kwargs):
        # Kept, because argparse has no public way to list a parser's subparsers; the parsers
        # it adds (plugins' nested ones too) are of this class, so they keep theirs as well.
        self.commands = super().add_subparsers(**kwargs)
        return self.commands

    def parse_known_args(self, args=None, namespace=None):
        self.given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message):
        dashed = [a for a in getattr(self, "given", ()) if a.startswith("-") and len(a) > 1 and os.path.lexists(a)]
        if dashed:
            message += (f" ({shown_path(dashed[0])} is a file whose name starts with '-', which reads as an option: "
                        f"write ./{shown_path(dashed[0])})")
        self.exit(2, one_line(f"{self.prog}: error: {message} (see {self.prog} --help)") + "\n")


# Every command that loads models takes --weights; without it, the default weights folder
# where it holds converted weights (models/weights_folder.py), else the embedded tiny models.
WEIGHTS_HELP = ("converted weights folder (default: $BARBERSHOP_JAX_WEIGHTS or the user's cache folder where "
                "`barbershop-jax weights download` put them, else the embedded tiny random-weight models; "
                "`embedded`: the tiny models)")


def build_parser(commands) -> argparse.ArgumentParser:
    """commands: the module whose functions run the commands (cli/main.py)."""
    parser = _Parser(prog="barbershop-jax", description="barbershop-jax: Barbershop hairstyle transfer in JAX")
    _add_global_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True,
                                help="what to do (barbershop-jax COMMAND --help says more)")

    demo = sub.add_parser("demo", help="the whole transfer on the bundled example images, with the embedded tiny "
                                       "random-weight models (or --weights)",
                          description="The whole way on the bundled example images: an ordinary photo is cut to an "
                                      "FFHQ-aligned face crop, given the hair shape of one reference and the hair "
                                      "colour of another, and the result is pasted back into the photo. Writes the "
                                      "results in the official layout under --out and OUT/demo_grid.png, every "
                                      "step titled. Without --weights it uses the embedded tiny models with fixed "
                                      "RANDOM weights and reduced step counts: it runs on a CPU in minutes and "
                                      "gives no real hairstyle. Finished stages found in --out are reused (a note "
                                      "says which; --fresh redoes them). --samples: a grid of generator samples "
                                      "instead.")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--weights", help=WEIGHTS_HELP)
    demo.add_argument("--seed", type=flag("seed"), default=0, help="seed of the generator noise (with --samples: of the "
                                                          "samples) (default 0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fresh_flag(demo)
    demo.add_argument("--samples", action="store_true", help="instead: render a grid of generator samples")
    demo.add_argument("--n", type=SAMPLES, default=16, help="with --samples: number of samples")
    demo.add_argument("--truncation", type=TRUNCATION, default=1.0,
                      help="with --samples: truncation psi, 0 (the average face) to 1 (none)")
    demo.set_defaults(func=commands.demo)

    tr = sub.add_parser("transfer", help="hairstyle transfer: the face of --face with the hair shape of --shape "
                                         "and the hair colour of --color (or any --region)",
                        description="Hairstyle transfer (Barbershop): the face of --face with the hair shape of "
                                    "--shape and the hair colour of --color, or another --region (lips, brows, "
                                    "...); one triple, a CSV of many with --pairs, or a grid of every --faces image with every "
                                    "--hairstyles image (contact sheet OUT/grid.png). A batch prints its plan (the "
                                    "embeddings, alignments and blends to do, and the predicted time) first. The "
                                    "images must be "
                                    "FFHQ-aligned crops, or ordinary photos with --align. Results go to --out in "
                                    "the official layout; embeddings, alignments and blends found there are reused "
                                    "(a note says which; --fresh redoes them), and an interrupted run resumes.")
    tr.add_argument("--face", help="identity image (official im1)")
    tr.add_argument("--shape", help="shape reference (im2): the region's outline in the target mask")
    tr.add_argument("--color", help="appearance reference (im3): the region's fine detail and colour")
    tr.add_argument("--structure", metavar="IMG", help="structure reference: the region's coarse structure (its "
                                                       "aligned F) (default: the shape reference, as the official)")
    tr.add_argument("--region", metavar="NAMES", help="the transferred region: parser label names, comma-separated, "
                                                      "e.g. hair (default), lips, brows,eyes")
    tr.add_argument("--pairs", metavar="CSV", help="batch mode: a CSV with columns face, shape, color, and optionally "
                                                  "structure, region, target_mask, shape_transform (paths relative "
                                                  "to the CSV's folder)")
    tr.add_argument("--faces", nargs="+", metavar="IMG", help="grid mode: face images or folders of them; every "
                                                             "face gets every --hairstyles (faces as rows of "
                                                             "OUT/grid.png)")
    tr.add_argument("--hairstyles", nargs="+", metavar="IMG", help="grid mode: hairstyle references (shape and "
                                                                  "colour) or folders of them (the columns)")
    tr.add_argument("--colors", nargs="+", metavar="IMG", help="grid mode: colour references, one per hairstyle or "
                                                              "one for all (default: each hairstyle's own)")
    tr.add_argument("--part", metavar="K/N", type=_part,
                    help="batch mode on N hosts with no coordinator (a job array): do part K of N of the rows, "
                         "the rows of one face together; failures go to OUT/failures.partKofN.csv")
    tr.add_argument("--weights", help=WEIGHTS_HELP)
    tr.add_argument("--out", required=True, help="output folder (official layout; embeddings and alignments "
                                                 "found there are reused)")
    tr.add_argument("--sign", choices=["realistic", "fidelity"], help="target-mask inpainting (default: realistic)")
    tr.add_argument("--smooth", type=flag("smooth"), help="dilation/erosion of the F-mixing masks (default: 5)")
    tr.add_argument("--seed", type=flag("seed"), help="seed of the generator noise (default 0)")
    tr.add_argument("--noise", choices=["random", "const", "none"], help="generator noise (official: random)")
    tr.add_argument("--batch-size", type=flag("batch_size"), default=DEFAULT_BATCH_SIZE,
                    help=f"images, pairs or triples optimised together (default {DEFAULT_BATCH_SIZE})")
    for name, text in TRANSFER_STEPS:
        tr.add_argument("--" + name.replace("_", "-"), type=flag(name), help=text)
    add_optimizer_flags(tr, TRANSFER_OPTIMIZERS)
    tr.add_argument("--save-target-mask", action="store_true",
                    help="also write each target mask as OUT/target_masks/{face}_{ref}.png (target_masks_{region}/ "
                         "for a region other than hair): an indexed PNG whose values are class ids (legend.json "
                         "beside it), to edit and give back with --target-mask")
    tr.add_argument("--target-mask", metavar="PNG", help="use this target mask for (face, shape) instead of "
                                                         "computing it (an indexed or grey PNG of class ids)")
    tr.add_argument("--shape-transform", metavar="scale=S,dx=X,dy=Y",
                    help="scale the shape reference's region (hair by default) about its centre and move it by "
                         "(dx, dy) pixels of the target mask before the merge")
    tr.add_argument("--align", nargs="?", const="all", choices=["all", "face"],
                    help="the inputs are ordinary photos: cut their FFHQ crops first, into OUT/aligned/ (all three, "
                         "or only the face with --align face)")
    tr.add_argument("--paste-back", action="store_true",
                    help="also paste each result into the face's photo (OUT/..._pasted.png); the face must come from "
                         "--align or align-faces")
    tr.add_argument("--feather", type=flag("feather"), default=FEATHER,
                    help=f"paste-back: soft edge of the mask, as a fraction of the image side (default {FEATHER})")
    _add_landmark_flags(tr)
    _add_exif_flag(tr)
    tr.add_argument("--no-resize", action="store_true",
                    help="refuse images that are not the generator's size (default: resize them, with a warning)")
    _add_checkpoint_flag(tr)
    _add_dtype_flag(tr)
    tr.add_argument("--parser-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype of the face parser (the segmentation and alignment losses, and the labels "
                         "the target masks come from); cached apart (default float32, as the official code)")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fresh_flag(tr)
    tr.set_defaults(func=commands.transfer)

    al = sub.add_parser("align-faces", help="FFHQ-aligned crops of the faces in ordinary photos (the official "
                                            "align_face.py), each with its transform for paste-back",
                        description="Cut the FFHQ-aligned crop of each face in ordinary photos, as the official "
                                    "align_face.py does, from 68 or 5 landmarks (a JSON beside each photo, "
                                    "--landmarks, or dlib). Each crop gets its transform ({stem}.crop.json), which "
                                    "transfer --paste-back uses to put the result back into the photo.")
    al.add_argument("photos", nargs="+", help="photo files or folders of photos")
    al.add_argument("--out", required=True, help="output folder: {stem}.png (or {stem}_{i}.png for several faces) "
                                                 "and {stem}.crop.json")
    al.add_argument("--size", type=flag("size"), default=1024, help="crop size (official: 1024)")
    _add_landmark_flags(al)
    _add_exif_flag(al)
    al.add_argument("--quiet", action="store_true", help="no progress bar")
    al.set_defaults(func=commands.crop_faces)

    embed = sub.add_parser("embed", help="embed images in W+ and FS (cached: nothing is embedded twice)",
                           description="Embed FFHQ-aligned images in StyleGAN2's W+ space and then in FS space, "
                                       "as the official main.py's first steps, writing the official layout "
                                       "(OUT/W+/{name}.npy, OUT/FS/{name}.npz). Embeddings found in --out are "
                                       "reused (a note says how many; --fresh redoes them).")
    embed.add_argument("images", nargs="+", help="image files or folders of images")
    embed.add_argument("--out", required=True, help="output folder: W+/{name}.npy, FS/{name}.npz (official layout)")
    embed.add_argument("--weights", help=WEIGHTS_HELP)
    embed.add_argument("--batch-size", type=flag("batch_size"), default=DEFAULT_BATCH_SIZE,
                       help=f"images optimised together (default {DEFAULT_BATCH_SIZE})")
    embed.add_argument("--w-steps", type=flag("w_steps"), help="W+ steps (official: 1100)")
    embed.add_argument("--fs-steps", type=flag("fs_steps"), help="FS steps (official: 250)")
    embed.add_argument("--lr", type=flag("learning_rate"), help="Adam learning rate (official: 0.01)")
    add_optimizer_flags(embed, EMBED_OPTIMIZERS)
    embed.add_argument("--noise", choices=["random", "const", "none"], help="generator noise (official: random)")
    embed.add_argument("--seed", type=flag("seed"), help="seed of the per-image noise (default 0)")
    embed.add_argument("--l2-lambda", type=flag("l2_lambda"), help="weight of the full-size MSE (official: 1.0)")
    embed.add_argument("--percept-lambda", type=flag("percept_lambda"), help="weight of LPIPS at 256 px (official: 1.0)")
    embed.add_argument("--p-norm-lambda", type=flag("p_norm_lambda"), help="weight of the p-norm regulariser (official: 0.001)")
    embed.add_argument("--l-f-lambda", type=flag("l_f_lambda"), help="weight of the F regulariser (official: declared, unused: 0)")
    embed.add_argument("--import-official", metavar="DIR",
                       help="adopt the official code's W+/{name}.npy and FS/{name}.npz from DIR instead of computing them")
    embed.add_argument("--no-fs", action="store_true", help="stop after W+")
    embed.add_argument("--distributed", action="store_true",
                       help="multi-host: jax.distributed.initialize(); process k embeds every N-th image")
    embed.add_argument("--coordinator", help="with --distributed: HOST:PORT of process 0 (default: from the cluster)")
    embed.add_argument("--num-processes", type=POSITIVE, help="with --distributed: number of processes")
    embed.add_argument("--process-id", type=COUNT, help="with --distributed: this process's index")
    _add_checkpoint_flag(embed)
    _add_dtype_flag(embed)
    _add_exif_flag(embed)
    embed.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_fresh_flag(embed)
    embed.set_defaults(func=commands.embed)

    ev = sub.add_parser("evaluate-embedding", help="PSNR, SSIM and LPIPS of the embeddings of images",
                        description="How well the embeddings reproduce their images: PSNR, SSIM and LPIPS of "
                                    "each W+ and FS render (the PNGs `embed` wrote) against its image, as a JSON "
                                    "report and a Markdown table.")
    ev.add_argument("images", nargs="+", help="the embedded images (files or folders)")
    ev.add_argument("--embeddings", required=True, help="the folder `embed --out` wrote")
    ev.add_argument("--weights", help=WEIGHTS_HELP + " (only its VGG16, for LPIPS)")
    ev.add_argument("--out", help="report path (default: EMBEDDINGS/evaluation.json, plus .md)")
    ev.set_defaults(func=commands.evaluate_embedding)

    web = sub.add_parser("serve", help="a web page over the pipeline (needs the web extra: "
                                       "pip install 'barbershop-jax[web]')",
                         description="A Gradio page over the same pipeline, one job at a time (jobs from several "
                                     "tabs queue): a transfer tab (face photo, shape, colour, optional structure "
                                     "reference and region, the official options, progress per stage) and a grid tab "
                                     "(several faces x several hairstyles as a contact sheet). Binds to this machine "
                                     "only unless --host says otherwise. Needs pip install 'barbershop-jax[web]'.")
    web.add_argument("--weights", help=WEIGHTS_HELP + " (the embedded models with a banner saying so)")
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    web.add_argument("--port", type=PORT, default=7860, help="port (default 7860)")
    web.add_argument("--out", help="the server's folder: uploads, crops, results and the embedding cache, kept "
                                   "(default: a temporary folder removed when the server stops)")
    web.add_argument("--batch-size", type=flag("batch_size"), default=DEFAULT_BATCH_SIZE,
                     help=f"images, pairs or triples optimised together (default {DEFAULT_BATCH_SIZE})")
    web.add_argument("--no-compile-ahead", action="store_true",
                     help="do not compile the stages' programs at start-up (default: compile those of a transfer "
                          "with the page's default settings before the first request, with a progress bar; "
                          "requests queue behind it and then compile nothing)")
    _add_limit_flags(web)
    web.set_defaults(func=commands.serve)

    doc = sub.add_parser("doctor", help="what a run will do on this machine: JAX and its devices, the weights, the "
                                        "caches, the predicted time, the next command",
                         description="Report this machine without running any model: the JAX and jaxlib versions, "
                                     "the backend and each device with its memory (and a warning where a GPU is "
                                     "present but JAX runs on the CPU), the weights a run would use and the sha256 "
                                     "of the checkpoints they came from, the cache folders and their sizes, the "
                                     "predicted time of one transfer and of a 4 x 4 grid from the steps measured "
                                     "here before, and the next command to run.")
    doc.add_argument("--weights", help="the weights to report on: a converted weights directory, or 'embedded' "
                                       "(default: those a run uses, the default folder's or the embedded models)")
    doc.add_argument("--json", action="store_true", help="the report as JSON")
    # The doctor compiles nothing: no compilation cache folder is made for it.
    doc.set_defaults(func=commands.doctor, no_compile_cache=True)

    # Commands of other installed packages: `convert` (PyTorch checkpoints -> Flax) lives in the
    # convert package, which this runtime never imports; it registers itself as an entry point.
    for plugin in metadata.entry_points(group=PLUGIN_GROUP):
        plugin.load()(sub)
    # The global options after the command too (`demo --no-compile-cache`): every command takes
    # them with no default of its own (SUPPRESS), so that a value given before the command stays.
    for command in subcommands(parser):
        _add_global_flags(command, default=argparse.SUPPRESS)
    return parser


def _add_limit_flags(web):
    """serve's limits on one request: the server runs one job at a time, so one request may not
    hold it for long while every other job queues. Checked before any work, one line each."""
    from barbershop_jax.web import jobs  # the web layer's defaults (this imports no gradio)
    web.add_argument("--max-steps", type=POSITIVE, default=jobs.MAX_STEPS, metavar="N",
                     help=f"the most steps a request may ask of each stage (default {jobs.MAX_STEPS}: above the "
                          "largest official count, W+ 1100, so that every official setting and somewhat longer runs "
                          "fit, while one job stays within a few times an official one; the page's default counts "
                          "are lowered to it)")
    web.add_argument("--max-batch", type=POSITIVE, default=jobs.MAX_BATCH, metavar="N",
                     help=f"the most transfers one grid job may ask for, faces x hairstyles (default {jobs.MAX_BATCH}: "
                          "a 4x4 contact sheet, about 16 official transfers' time)")
    web.add_argument("--max-upload-mb", type=UPLOAD_MB, default=jobs.MAX_UPLOAD_MB,
                     metavar="MIB", help=f"the largest file an upload may be, in MiB (default {jobs.MAX_UPLOAD_MB}: a "
                                         "full-resolution camera photo fits; Gradio refuses a larger one as it "
                                         "arrives)")


def _add_global_flags(p, default):
    p.add_argument("--no-compile-cache", action="store_true", default=default,
                   help="do not use XLA's persistent compilation cache (default: on, in ~/.cache/barbershop-jax/xla "
                        "or $BARBERSHOP_JAX_COMPILE_CACHE); before or after the command")


def subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command's parser under `parser`, nested ones (convert stylegan2) too."""
    found = []
    if getattr(parser, "commands", None) is not None:
        for command in dict.fromkeys(parser.commands.choices.values()):  # aliases name one parser twice
            found += [command, *subcommands(command)]
    return found
