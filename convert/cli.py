"""The `convert` and `weights download` commands of `barbershop-jax`: official PyTorch
checkpoints to Flax weights directories, by hand or fetched and converted in one go. They need
torch, so they live here, outside the runtime: barbershop_jax's command line finds them through
the `barbershop_jax.commands` entry point (pyproject.toml)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from barbershop_jax.cli.args import number
from barbershop_jax.config import MAX_SEED, Limit

# The converter's own numbers (the runtime's are config.LIMITS): sizes the generator supports,
# sample counts that finish (the PCA is chunked; latent_avg's samples are mapped at once), and a
# seed whose PCA seed (seed + 1) is a 32-bit seed too.
SIZE = number(Limit(int, 8, 1024))
CHANNEL_MULTIPLIER = number(Limit(int, 1, 64))
PCA_SAMPLES = number(Limit(int, 0, 100_000_000))
MEAN_LATENT_SAMPLES = number(Limit(int, 1, 1_000_000))
SEED = number(Limit(int, 0, MAX_SEED - 1))
RETRIES = number(Limit(int, 0, 100))
NEEDS = {"torch": "converts the checkpoints with PyTorch", "gdown": "fetches the checkpoints with gdown"}


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


def _weights_download(args):
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:  # said before anything is downloaded
        print(f"barbershop-jax: error: weights download {NEEDS[missing[0]]}: pip install 'barbershop-jax[convert]'",
              file=sys.stderr)
        return 2
    from barbershop_jax.models import weights_folder
    from convert import install
    default = weights_folder.default_folder()
    folder = Path(args.dir).expanduser() if args.dir else default
    settings = install.Settings(pca_samples=args.pca_samples, keep_downloads=args.keep_downloads,
                                overwrite=args.overwrite, retries=args.retries, quiet=args.quiet)
    install.run(folder, args.manifest, args.from_folder, settings)
    if folder.resolve() == default.expanduser().resolve():
        print(f"weights: {folder} (the default folder): every command now uses them without --weights")
    else:
        print(f"weights: {folder}: pass --weights {folder} to the commands, or set {weights_folder.ENV}={folder} "
              "to make it the default folder")
    return 0


def add_commands(sub):
    """`barbershop-jax convert {stylegan2,bisenet,vgg16}` and `barbershop-jax weights download`
    (the entry point barbershop_jax.commands)."""
    _add_weights_command(sub)
    convert = sub.add_parser("convert", help="convert official PyTorch weights (needs torch)",
                             description="Convert the official PyTorch checkpoints to Flax weights directories "
                                         "(needs torch: pip install 'barbershop-jax[convert]'). Give the three "
                                         "one DST to get the weights directory that --weights takes.")
    models = convert.add_subparsers(dest="model", required=True, help="which checkpoint to convert")

    p = models.add_parser("stylegan2", help="rosinality StyleGAN2 checkpoint (ffhq.pt) -> DST_DIR/stylegan2",
                          description="The rosinality StyleGAN2 checkpoint (ffhq.pt) to DST/stylegan2/, with the "
                                      "p-norm PCA statistics the W+ embedding needs.")
    p.add_argument("src", help="the .pt checkpoint ({'g_ema', 'latent_avg'} or a training checkpoint)")
    p.add_argument("dst", help="weights directory; the generator goes to DST/stylegan2/")
    p.add_argument("--size", type=SIZE, help="output size (default: read from the shapes)")
    p.add_argument("--channel-multiplier", type=CHANNEL_MULTIPLIER, help="the generator's channel multiplier (default: read "
                                                               "from the shapes)")
    pca = p.add_mutually_exclusive_group()
    pca.add_argument("--pca-samples", type=PCA_SAMPLES, default=1_000_000,
                     help="samples for the p-norm PCA statistics (official: 1e6; 0 skips)")
    pca.add_argument("--pca", help="import an existing ffhq_PCA.npz instead of computing it")
    p.add_argument("--n-mean-latent", type=MEAN_LATENT_SAMPLES, default=4096,
                   help="samples for latent_avg when the checkpoint has none (rosinality: 4096)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the PCA and latent_avg samples (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST/stylegan2")
    p.set_defaults(func=_convert_stylegan2)

    p = models.add_parser("bisenet", help="BiSeNet face parser (seg.pth, 79999_iter.pth) -> DST_DIR/bisenet",
                          description="The BiSeNet face parser (Barbershop's 16-class seg.pth, or the 19-class "
                                      "79999_iter.pth) to DST/bisenet/.")
    p.add_argument("src", help="the .pth state_dict (16 classes: Barbershop seg.pth; 19: 79999_iter.pth)")
    p.add_argument("dst", help="weights directory; the parser goes to DST/bisenet/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST/bisenet")
    p.set_defaults(func=_convert_bisenet)

    p = models.add_parser("vgg16", help="torchvision VGG16 + LPIPS v0.1 linear layers -> DST_DIR/vgg16",
                          description="torchvision's VGG16 and the LPIPS v0.1 linear layers to DST/vgg16/ (the "
                                      "perceptual and style losses).")
    p.add_argument("src", help="torchvision vgg16 state_dict (e.g. vgg16-397923af.pth); classifier skipped")
    p.add_argument("dst", help="weights directory; the network goes to DST/vgg16/")
    p.add_argument("--lpips-weights", metavar="PATH",
                   help="LPIPS linear layers (default: weights/v0.1/vgg.pth of the installed lpips package)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST/vgg16")
    p.set_defaults(func=_convert_vgg16)


def _add_weights_command(sub):
    weights = sub.add_parser("weights", help="get the official weights: download and convert them (needs torch)",
                             description="The official weights: `weights download` fetches the official "
                                         "checkpoints and converts them into the weights folder that every command "
                                         "uses when no --weights is given.")
    actions = weights.add_subparsers(dest="action", required=True, help="what to do")
    p = actions.add_parser("download", help="download the official checkpoints, verify and convert them",
                           description="Download the official checkpoints listed in the manifest (StyleGAN2 FFHQ, "
                                       "the BiSeNet face parser, VGG16 and the LPIPS layers; each URL in turn, "
                                       "official first, mirrors after), verify them, convert them and put them "
                                       "in DIR, with each file's source, sha256 and licence in DIR/sources.json. "
                                       "An interrupted download resumes when run again. Needs torch: pip install "
                                       "'barbershop-jax[convert]'.")
    p.add_argument("--dir", help="the weights folder (default: $BARBERSHOP_JAX_WEIGHTS, else weights/ in the user's "
                                 "cache folder: where every command looks when no --weights is given)")
    p.add_argument("--manifest", metavar="FILE", help='the files to fetch, as JSON {"files": [{"name", "kind", '
                                                      '"urls", "sha256", "licence"}, ...]} (default: the packaged '
                                                      "convert/manifest.json)")
    p.add_argument("--from", dest="from_folder", metavar="FOLDER",
                   help="use the checkpoints found in FOLDER (searched recursively by name: the official code's "
                        "pretrained_models/, a torch hub cache ~/.cache/torch/hub/checkpoints/) instead of "
                        "downloading them; they are verified and read in place; those not found are downloaded")
    p.add_argument("--pca-samples", type=PCA_SAMPLES, default=1_000_000,
                   help="samples of the generator's p-norm PCA statistics (default 1000000, the official count)")
    p.add_argument("--keep-downloads", action="store_true",
                   help="keep the downloaded checkpoints in DIR/.downloads/ (default: removed once converted)")
    p.add_argument("--overwrite", action="store_true",
                   help="download and convert again the models DIR holds already (default: only those missing)")
    p.add_argument("--retries", type=RETRIES, default=3,
                   help="retries of a failed connection or transfer, per URL, each resuming (default 3)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_weights_download)
