"""The `convert` command of `barbershop-jax`: official PyTorch checkpoints to Flax weights
directories. It needs torch, so it lives here, outside the runtime: barbershop_jax's command
line finds it through the `barbershop_jax.commands` entry point (pyproject.toml)."""
from __future__ import annotations

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


def add_commands(sub):
    """`barbershop-jax convert {stylegan2,bisenet,vgg16}` (the entry point barbershop_jax.commands)."""
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
