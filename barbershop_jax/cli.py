"""`barbershop-jax` command line: parse arguments, call one library function, report errors
in one line with a non-zero exit."""
from __future__ import annotations

import argparse
import sys


def _demo(args):
    from barbershop_jax import demo
    if args.samples:
        demo.run(args.out, n=args.n, seed=args.seed, weights=args.weights, truncation=args.truncation)
    else:
        demo.run_transfer(args.out, weights=args.weights, seed=args.seed, progress=not args.quiet)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def _image_paths(inputs):
    """Files as given; folders expanded to their images, sorted."""
    from pathlib import Path
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(item)
    if not paths:
        raise ValueError(f"no images in {', '.join(map(str, inputs))}")
    return paths


def _at_least(low, kind=int, above=False):
    """An argparse type: a `kind` number >= low (> low with above=True), else one clear line
    (a negative batch size once ran nothing and reported success)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number {'above' if above else 'of at least'} {low}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


COUNT = _at_least(0)              # step counts, iterations, indices
POSITIVE = _at_least(1)           # batch sizes, sample counts
NON_NEGATIVE = _at_least(0.0, float)  # loss weights, fractions, pixel counts


def _part(text):
    """'K/N' -> (K, N), 1 <= K <= N."""
    try:
        k, n = (int(x) for x in text.split("/"))
        if not 1 <= k <= n:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected K/N with 1 <= K <= N, e.g. 2/4") from None
    return k, n


def _distributed(args):
    """jax.distributed for multi-host runs: explicit flags, or the cluster's environment."""
    if not args.distributed:
        return
    import jax
    kwargs = {k: v for k, v in {"coordinator_address": args.coordinator, "num_processes": args.num_processes,
                                "process_id": args.process_id}.items() if v is not None}
    jax.distributed.initialize(**kwargs)


def _embed(args):
    from barbershop_jax import api
    _distributed(args)
    consts = api.load_models(args.weights, args.dtype)
    overrides = {k: v for k, v in {"w_steps": args.w_steps, "fs_steps": args.fs_steps,
                                   "learning_rate": args.lr, "noise": args.noise, "seed": args.seed,
                                   "l2_lambda": args.l2_lambda, "percept_lambda": args.percept_lambda,
                                   "p_norm_lambda": args.p_norm_lambda, "l_f_lambda": args.l_f_lambda}.items()
                 if v is not None}
    cfg = api.default_embed_config(consts, **overrides)
    failures = []
    done = api.embed_files(_image_paths(args.images), args.out, consts, cfg, batch_size=args.batch_size,
                           fs=not args.no_fs, progress=not args.quiet, import_official=args.import_official,
                           checkpoint_every=args.checkpoint_every or None, failures=failures)
    import jax
    share = f" by process {jax.process_index()} of {jax.process_count()}" if jax.process_count() > 1 else ""
    print(f"{len(done)} image(s) embedded{share} under {args.out} (W+{'' if args.no_fs else ' and FS'})")
    if failures:
        from barbershop_jax import transfer
        path = transfer.write_failures(args.out, [((name,), reason) for name, reason in failures], columns=("image",))
        for _, reason in failures:
            print(f"barbershop-jax: error: {reason}", file=sys.stderr)
        print(f"{len(failures)} image(s) failed; see {path}", file=sys.stderr)
        return 1


TRANSFER_STEPS = (("w_steps", "W+ embedding steps (official: 1100)"), ("fs_steps", "FS embedding steps (official: 250)"),
                  ("inpaint_steps", "steps of each GAN-inpainting round of the target mask (official: 80)"),
                  ("align_steps1", "alignment step 1 (official: 140)"), ("align_steps2", "alignment step 2 (official: 100)"),
                  ("blend_steps", "blending steps (official: 400)"))


def _read_triples(csv_path):
    """(triples of paths, edits, regions): CSV columns face, shape, color, and optionally
    structure (a fourth reference: the triple gets it as a fourth path), region (label names,
    e.g. "brows,eyes"; None per row where empty), target_mask and shape_transform (one
    TargetEdit or None per row); relative paths are resolved against the CSV file's folder."""
    import csv
    from pathlib import Path

    csv_path = Path(csv_path)
    try:
        # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark, which would otherwise
        # become part of the first column's name.
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [(name or "").strip().lower() for name in reader.fieldnames or ()]
            missing = {"face", "shape", "color"} - set(reader.fieldnames)
            if missing:
                raise ValueError(f"{csv_path}: missing column(s) {', '.join(sorted(missing))} "
                                 "(the header must name face, shape, color)")
            # Rows of empty cells (",,," lines a spreadsheet leaves at the end) are not triples.
            rows = [row for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    except OSError as e:
        raise ValueError(f"{csv_path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{csv_path}: not UTF-8 text ({e.reason}); save it as CSV UTF-8") from None
    resolve = lambda v: (csv_path.parent / v.strip()) if not Path(v.strip()).is_absolute() else Path(v.strip())  # noqa: E731
    given = lambda row, k: (row.get(k) or "").strip()  # noqa: E731 (optional columns: empty or absent)
    triples = [tuple(resolve(row[k] or "") for k in ("face", "shape", "color"))
               + ((resolve(given(row, "structure")),) if given(row, "structure") else ()) for row in rows]
    # Optional columns: target_mask (an indexed PNG) and shape_transform ("scale=..,dx=..,dy=..").
    edits = [_edit(resolve(given(row, "target_mask")) if given(row, "target_mask") else None,
                   row.get("shape_transform") or None) for row in rows]
    regions = [given(row, "region") or None for row in rows]
    return triples, edits, regions


def _edit(target_mask, shape_transform):
    """A transfer.TargetEdit from the command line's values, or None."""
    if target_mask is None and not shape_transform:
        return None
    from barbershop_jax import target_mask as tm
    from barbershop_jax.transfer import TargetEdit
    return TargetEdit(target_mask, tm.parse_shape_transform(shape_transform) if shape_transform else None)


def _aligner(args, size):
    from barbershop_jax import face_crop
    from barbershop_jax.landmarks import Landmarks
    return face_crop.Aligner(size=size, landmarks=Landmarks(args.landmarks, args.dlib_model),
                             face_index=args.face_index, min_face=args.min_face)


def _align_faces(args):
    from pathlib import Path

    from tqdm import tqdm

    from barbershop_jax import face_crop, transfer
    from barbershop_jax.image_io import ImageError
    from barbershop_jax.landmarks import LandmarkError, LandmarkModelError

    aligner = _aligner(args, args.size)
    photos = _image_paths(args.photos)
    crops, failures = [], []
    for photo in tqdm(photos, desc="align faces", unit="photo", disable=args.quiet or len(photos) < 2):
        try:
            crops += aligner.align(photo, args.out)
        except LandmarkModelError:
            raise
        except (face_crop.FaceCropError, LandmarkError, ImageError) as e:
            failures.append(((photo,), str(e)))
            print(f"barbershop-jax: error: {e}", file=sys.stderr)
    print(f"{len(crops)} face crop(s) of {args.size} px from {len(photos) - len(failures)} photo(s) in {args.out} "
          "(each with its transform, {name}.crop.json)")
    if failures:
        path = transfer.write_failures(Path(args.out), failures, columns=("photo",))
        print(f"{len(failures)} of {len(photos)} photo(s) failed; see {path}", file=sys.stderr)
        return 1
    return 0


def _generator_size(weights) -> int:
    """The generator's output size, from its config.json (no arrays read)."""
    if weights is None:
        from barbershop_jax.models import stylegan2
        return stylegan2.tiny_config().size
    from barbershop_jax import checkpoint
    return int(checkpoint.read_config(checkpoint.model_dir(weights, "stylegan2"), "stylegan2")["config"]["size"])


def _transfer(args):
    from barbershop_jax import transfer
    from barbershop_jax.image_io import ImageError

    if args.pairs:
        if args.face or args.shape or args.color or args.structure:
            raise ValueError("give either --pairs or --face/--shape/--color/--structure, not both")
        if args.target_mask or args.shape_transform:
            raise ValueError("with --pairs, give target masks and shape transforms as the CSV's target_mask and "
                             "shape_transform columns")
        triples, edits, regions = _read_triples(args.pairs)
    elif args.face and args.shape and args.color:
        triples = [(args.face, args.shape, args.color) + ((args.structure,) if args.structure else ())]
        edits, regions = [_edit(args.target_mask, args.shape_transform)], [None]
    else:
        raise ValueError("give --face, --shape and --color (or --pairs triples.csv)")
    # --region: every triple's region (with --pairs: of the rows whose region column is empty).
    options = {k: getattr(args, k) for k in ("sign", "smooth", "seed", "noise", "region",
                                             *(n for n, _ in TRANSFER_STEPS)) if getattr(args, k) is not None}
    if not triples:
        raise ValueError(f"{args.pairs}: no triples (one row per transfer after the header)")
    row_key = lambda i: (*map(str, triples[i]), regions[i] or "")  # noqa: E731
    first_row = {}
    for i in range(len(triples)):
        first_row.setdefault(row_key(i), i)
    for i in range(len(triples)):
        if first_row[row_key(i)] != i:  # rows count from 2: the header is row 1
            print(f"barbershop-jax: note: {args.pairs}: row {i + 2} repeats row {first_row[row_key(i)] + 2}; "
                  "it is done once", file=sys.stderr)
    keep = [first_row[row_key(i)] == i for i in range(len(triples))]
    triples, edits, regions = ([x for x, k in zip(column, keep) if k] for column in (triples, edits, regions))
    failures_csv = "failures.csv"
    if args.part:  # before --align and the models: this host's rows only
        k, n = args.part
        parts = transfer.parts_by_face([str(t[0]) for t in triples], n)
        mine = [p == k - 1 for p in parts]
        print(f"barbershop-jax: part {k} of {n}: {sum(mine)} of {len(triples)} triple(s) (the rows of "
              f"{len({str(t[0]) for t, m in zip(triples, mine) if m})} face(s))", file=sys.stderr)
        triples, edits, regions = ([x for x, m in zip(column, mine) if m] for column in (triples, edits, regions))
        failures_csv = f"failures.part{k}of{n}.csv"
        if not triples:
            return 0
    n_triples = len(triples)
    if args.paste_back and not args.align:
        from barbershop_jax import face_crop
        for t in triples:  # before loading any model
            face_crop.read_transform(t[0])
    def hair_transfer():  # loads the models
        return transfer.HairTransfer(args.weights, args.out, batch_size=args.batch_size, progress=not args.quiet,
                                     checkpoint_every=args.checkpoint_every or None, dtype=args.dtype,
                                     parser_dtype=args.parser_dtype, **options)

    ht, align_failures = None, []
    if args.align:  # the crops are cut at the generator's size: load the models first
        from pathlib import Path
        ht = hair_transfer()
        originals = triples
        triples, align_failures = transfer.align_inputs(
            triples, Path(args.out) / "aligned", _aligner(args, ht.models.generator.config.size),
            roles=(0,) if args.align == "face" else None)
        failed = {tuple(map(str, t)) for t, _ in align_failures}
        ok = [tuple(map(str, t)) not in failed for t in originals]
        edits, regions = ([x for x, k in zip(column, ok) if k] for column in (edits, regions))
    size = _generator_size(args.weights) if args.no_resize else None
    good, failures = transfer.check_triples(triples, size, progress=not args.quiet)  # before loading any model
    bad = {tuple(map(str, t)) for t, _ in failures}
    ok = [tuple(map(str, t)) not in bad for t in triples]
    edits, regions = ([x for x, k in zip(column, ok) if k] for column in (edits, regions))
    failures = align_failures + failures
    if not good:
        if args.pairs:
            transfer.write_failures(args.out, failures, name=failures_csv)
        raise ImageError("; ".join(f"{msg}" for _, msg in failures[:3]))
    ht = ht or hair_transfer()
    results = ht.transfer_files(good, paste_back=args.paste_back, feather=args.feather, edits=edits, regions=regions,
                                save_target_masks=args.save_target_mask)
    failures += ht.failures  # optimisations that diverged: those triples only
    listed = None
    done = [(t, region, r) for t, region, r in zip(good, regions, results) if r is not None]
    if args.pairs and done:  # which file came of which row, for the scripts that run many
        listed = transfer.write_results(args.out, done, name=failures_csv.replace("failures", "results"))
    results = [r for r in results if r is not None]
    print(transfer.summary(results, ht.timings, listed))
    if args.paste_back:
        for r in results:
            print(f"{r.face}: pasted into its photo: {r.pasted_path}")
    if failures:
        path = transfer.write_failures(args.out, failures, name=failures_csv)
        print(f"{len(failures)} of {n_triples} triple(s) failed; see {path}", file=sys.stderr)
        for _, msg in failures:
            print(f"barbershop-jax: error: {msg}", file=sys.stderr)
        return 1
    return 0


def _evaluate_embedding(args):
    from pathlib import Path

    from barbershop_jax import api, cache, evaluate, image_io
    if not Path(args.embeddings).is_dir():
        raise ValueError(f"{args.embeddings}: no such embeddings folder (the --out of barbershop-jax embed)")
    paths = _image_paths(args.images)
    vgg = api.load_vgg(args.weights)  # LPIPS only: no generator, no PCA statistics
    report = evaluate.evaluate(paths, args.embeddings, vgg)
    for item in report["unreadable"]:
        print(f"barbershop-jax: error: {item['reason']}", file=sys.stderr)
    if not report["images"]:  # nothing to report: say so instead of writing an empty table
        if report["missing"]:
            print(f"barbershop-jax: error: {args.embeddings}: no embeddings of the {len(report['missing'])} "
                  f"image(s) given (embed them first: barbershop-jax embed IMAGES --out {args.embeddings})",
                  file=sys.stderr)
        return 1
    table = evaluate.markdown(report)
    print(table)
    if report["missing"]:
        print(f"no embeddings for {len(report['missing'])} image(s): {', '.join(report['missing'][:5])}")
    out = Path(args.out or Path(args.embeddings) / "evaluation.json")
    cache.save_json(out, report)
    image_io.atomic_write(out.with_suffix(".md"), lambda f: f.write((table + "\n").encode()))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 1 if report["unreadable"] else 0


def _convert_stylegan2(args):
    from convert import stylegan2
    stylegan2.run(args.src, args.dst, size=args.size, channel_multiplier=args.channel_multiplier,
                  pca_samples=args.pca_samples, pca_file=args.pca, n_mean_latent=args.n_mean_latent,
                  seed=args.seed, overwrite=args.overwrite)


def _convert_bisenet(args):
    from convert import bisenet
    bisenet.run(args.src, args.dst, overwrite=args.overwrite)


def _convert_vgg16(args):
    from convert import vgg16
    vgg16.run(args.src, args.dst, lpips_weights=args.lpips_weights, overwrite=args.overwrite)


def _add_convert(sub):
    convert = sub.add_parser("convert", help="convert official PyTorch weights (needs torch)")
    models = convert.add_subparsers(dest="model", required=True)

    p = models.add_parser("stylegan2", help="rosinality StyleGAN2 checkpoint (ffhq.pt) -> DST_DIR/stylegan2")
    p.add_argument("src", help="the .pt checkpoint ({'g_ema', 'latent_avg'} or a training checkpoint)")
    p.add_argument("dst", help="weights directory; the generator goes to DST/stylegan2/")
    p.add_argument("--size", type=POSITIVE, help="output size (default: read from the shapes)")
    p.add_argument("--channel-multiplier", type=POSITIVE, help="default: read from the shapes")
    pca = p.add_mutually_exclusive_group()
    pca.add_argument("--pca-samples", type=COUNT, default=1_000_000,
                     help="samples for the p-norm PCA statistics (official: 1e6; 0 skips)")
    pca.add_argument("--pca", help="import an existing ffhq_PCA.npz instead of computing it")
    p.add_argument("--n-mean-latent", type=POSITIVE, default=4096,
                   help="samples for latent_avg when the checkpoint has none (rosinality: 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST/stylegan2")
    p.set_defaults(func=_convert_stylegan2)

    p = models.add_parser("bisenet", help="BiSeNet face parser (seg.pth, 79999_iter.pth) -> DST_DIR/bisenet")
    p.add_argument("src", help="the .pth state_dict (16 classes: Barbershop seg.pth; 19: 79999_iter.pth)")
    p.add_argument("dst", help="weights directory; the parser goes to DST/bisenet/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST/bisenet")
    p.set_defaults(func=_convert_bisenet)

    p = models.add_parser("vgg16", help="torchvision VGG16 + LPIPS v0.1 linear layers -> DST_DIR/vgg16")
    p.add_argument("src", help="torchvision vgg16 state_dict (e.g. vgg16-397923af.pth); classifier skipped")
    p.add_argument("dst", help="weights directory; the network goes to DST/vgg16/")
    p.add_argument("--lpips-weights", metavar="PATH",
                   help="LPIPS linear layers (default: weights/v0.1/vgg.pth of the installed lpips package)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST/vgg16")
    p.set_defaults(func=_convert_vgg16)


def _add_checkpoint_flag(p):
    from barbershop_jax.resume import DEFAULT_EVERY
    p.add_argument("--checkpoint-every", type=COUNT, default=DEFAULT_EVERY, metavar="STEPS",
                   help=f"save each optimisation loop's state every STEPS steps under OUT/.resume/, so that an "
                        f"interrupted run resumes mid-stage (default {DEFAULT_EVERY}; 0: off)")


def _add_dtype_flag(p):
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="compute dtype of the generator's and VGG16's convolutions: bfloat16 is faster on GPUs and "
                        "TPUs, with a small measured loss of quality (README); results are cached apart "
                        "(default float32, as the official code)")


def _add_landmark_flags(p):
    p.add_argument("--landmarks", metavar="JSON", help="landmarks as JSON: {photo name: 68 or 5 [x, y] points, or a "
                                                      "list of faces} (default: {stem}.landmarks.json beside each "
                                                      "photo, else dlib)")
    p.add_argument("--dlib-model", metavar="DAT", help="dlib's shape_predictor_68_face_landmarks.dat (default: "
                                                      "$BARBERSHOP_DLIB_MODEL)")
    p.add_argument("--face-index", type=COUNT, help="which face of a photo with several (default: all for "
                                                  "align-faces; an error for transfer --align)")
    p.add_argument("--min-face", type=NON_NEGATIVE, default=64, help="refuse faces whose crop square is smaller than "
                                                              "this many photo pixels (default 64)")


def _add_exif_flag(p):
    p.add_argument("--no-exif", action="store_true",
                   help="read images as stored, ignoring their EXIF orientation (as the official does)")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error here (argparse prints the whole usage
    block first, which buries the line that says what is wrong); exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="barbershop-jax", description=__doc__.splitlines()[0])
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not use XLA's persistent compilation cache (default: on, in ~/.cache/barbershop-jax/xla "
                             "or $BARBERSHOP_JAX_COMPILE_CACHE)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole transfer on the bundled example images, with the embedded tiny "
                                       "random-weight models (or --weights)")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--weights", help="a converted weights directory instead of the embedded default")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--samples", action="store_true", help="instead: render a grid of generator samples")
    demo.add_argument("--n", type=POSITIVE, default=16, help="with --samples: number of samples")
    demo.add_argument("--truncation", type=float, default=1.0, help="with --samples: truncation psi")
    demo.set_defaults(func=_demo)

    tr = sub.add_parser("transfer", help="hairstyle transfer: the face of --face with the hair shape of --shape "
                                         "and the hair colour of --color (or any --region)")
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
    tr.add_argument("--part", metavar="K/N", type=_part,
                    help="batch mode on N hosts with no coordinator (a job array): do part K of N of the rows, "
                         "the rows of one face together; failures go to OUT/failures.partKofN.csv")
    tr.add_argument("--weights", help="converted weights directory (default: the embedded tiny random models)")
    tr.add_argument("--out", required=True, help="output folder (official layout; embeddings and alignments "
                                                 "found there are reused)")
    tr.add_argument("--sign", choices=["realistic", "fidelity"], help="target-mask inpainting (default: realistic)")
    tr.add_argument("--smooth", type=COUNT, help="dilation/erosion of the F-mixing masks (default: 5)")
    tr.add_argument("--seed", type=int, help="seed of the generator noise (default 0)")
    tr.add_argument("--noise", choices=["random", "const", "none"], help="generator noise (official: random)")
    tr.add_argument("--batch-size", type=POSITIVE, default=4, help="images, pairs or triples optimised together (default 4)")
    for name, text in TRANSFER_STEPS:
        tr.add_argument("--" + name.replace("_", "-"), type=COUNT, help=text)
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
    tr.add_argument("--feather", type=NON_NEGATIVE, default=0.025,
                    help="paste-back: soft edge of the mask, as a fraction of the image side (default 0.025)")
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
    tr.set_defaults(func=_transfer)

    al = sub.add_parser("align-faces", help="FFHQ-aligned crops of the faces in ordinary photos (the official "
                                            "align_face.py), each with its transform for paste-back")
    al.add_argument("photos", nargs="+", help="photo files or folders of photos")
    al.add_argument("--out", required=True, help="output folder: {stem}.png (or {stem}_{i}.png for several faces) "
                                                 "and {stem}.crop.json")
    al.add_argument("--size", type=POSITIVE, default=1024, help="crop size (official: 1024)")
    _add_landmark_flags(al)
    _add_exif_flag(al)
    al.add_argument("--quiet", action="store_true", help="no progress bar")
    al.set_defaults(func=_align_faces)

    embed = sub.add_parser("embed", help="embed images in W+ and FS (cached: nothing is embedded twice)")
    embed.add_argument("images", nargs="+", help="image files or folders of images")
    embed.add_argument("--out", required=True, help="output folder: W+/{name}.npy, FS/{name}.npz (official layout)")
    embed.add_argument("--weights", help="converted weights directory (default: the embedded tiny models)")
    embed.add_argument("--batch-size", type=POSITIVE, default=4, help="images optimised together (default 4)")
    embed.add_argument("--w-steps", type=COUNT, help="W+ steps (official: 1100)")
    embed.add_argument("--fs-steps", type=COUNT, help="FS steps (official: 250)")
    embed.add_argument("--lr", type=_at_least(0.0, float, above=True), help="Adam learning rate (official: 0.01)")
    embed.add_argument("--noise", choices=["random", "const", "none"], help="generator noise (official: random)")
    embed.add_argument("--seed", type=int, help="seed of the per-image noise (default 0)")
    embed.add_argument("--l2-lambda", type=NON_NEGATIVE, help="weight of the full-size MSE (official: 1.0)")
    embed.add_argument("--percept-lambda", type=NON_NEGATIVE, help="weight of LPIPS at 256 px (official: 1.0)")
    embed.add_argument("--p-norm-lambda", type=NON_NEGATIVE, help="weight of the p-norm regulariser (official: 0.001)")
    embed.add_argument("--l-f-lambda", type=NON_NEGATIVE, help="weight of the F regulariser (official: declared, unused: 0)")
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
    embed.set_defaults(func=_embed)

    ev = sub.add_parser("evaluate-embedding", help="PSNR, SSIM and LPIPS of the embeddings of images")
    ev.add_argument("images", nargs="+", help="the embedded images (files or folders)")
    ev.add_argument("--embeddings", required=True, help="the folder `embed --out` wrote")
    ev.add_argument("--weights", help="converted weights (for LPIPS; default: the embedded models)")
    ev.add_argument("--out", help="report path (default: EMBEDDINGS/evaluation.json, plus .md)")
    ev.set_defaults(func=_evaluate_embedding)

    _add_convert(sub)
    return parser


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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    from barbershop_jax import image_io
    honour_exif = image_io.HONOUR_EXIF
    image_io.HONOUR_EXIF = honour_exif and not getattr(args, "no_exif", False)
    try:
        return _run(args)
    finally:
        image_io.HONOUR_EXIF = honour_exif


OUT_FOLDER_COMMANDS = ("demo", "transfer", "align-faces", "embed")  # their --out is a folder


def _check_out_folder(out):
    """--out must be a folder, or creatable as one, and writable: found before any work (a file
    there once failed the run at its first checkpoint, after the first loop had run)."""
    import os
    from pathlib import Path
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor) or p == Path("."))
    if not existing.is_dir():
        where = "" if existing == out else f"{existing} is "
        raise ValueError(f"{out}: {where}a file, not a folder (--out names the output folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: cannot write in {existing} (permission denied)")


def _run(args) -> int:
    from barbershop_jax import resume
    try:
        if args.command in OUT_FOLDER_COMMANDS:
            _check_out_folder(args.out)
        if not args.no_compile_cache:
            from barbershop_jax import compile_cache
            compile_cache.enable()
        with resume.handle_signals():  # SIGINT/SIGTERM: finish the chunk, save, stop
            rc = args.func(args)
    except resume.Interrupted as e:
        how = ("run the same command again to resume from there" if e.saved else
               "checkpointing was off (--checkpoint-every 0): finished stages are kept, the interrupted one restarts")
        print(f"barbershop-jax: {e}; {how}", file=sys.stderr)
        return 143 if e.signum == 15 else 130
    except ModuleNotFoundError as e:
        if e.name == "torch":
            print("barbershop-jax: error: conversion needs PyTorch: pip install 'barbershop-jax[convert]'",
                  file=sys.stderr)
            return 2
        raise
    except (ValueError, OSError) as e:  # ConversionError is a ValueError
        print(f"barbershop-jax: error: {e}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
