"""`barbershop-jax` command line: parse arguments, call one library function, report errors
in one line with a non-zero exit."""
from __future__ import annotations

import argparse
import sys


def _demo(args):
    from barbershop_jax import demo
    demo.run(args.out, n=args.n, seed=args.seed, weights=args.weights, truncation=args.truncation)


def _convert_stylegan2(args):
    from convert import stylegan2
    stylegan2.run(args.src, args.dst, size=args.size, channel_multiplier=args.channel_multiplier,
                  pca_samples=args.pca_samples, pca_file=args.pca, n_mean_latent=args.n_mean_latent,
                  seed=args.seed, overwrite=args.overwrite)


def _add_convert(sub):
    convert = sub.add_parser("convert", help="convert official PyTorch weights (needs torch)")
    models = convert.add_subparsers(dest="model", required=True)

    p = models.add_parser("stylegan2", help="rosinality StyleGAN2 checkpoint (ffhq.pt) -> DST_DIR/stylegan2")
    p.add_argument("src", help="the .pt checkpoint ({'g_ema', 'latent_avg'} or a training checkpoint)")
    p.add_argument("dst", help="weights directory; the generator goes to DST/stylegan2/")
    p.add_argument("--size", type=int, help="output size (default: read from the shapes)")
    p.add_argument("--channel-multiplier", type=int, help="default: read from the shapes")
    pca = p.add_mutually_exclusive_group()
    pca.add_argument("--pca-samples", type=int, default=1_000_000,
                     help="samples for the p-norm PCA statistics (official: 1e6; 0 skips)")
    pca.add_argument("--pca", help="import an existing ffhq_PCA.npz instead of computing it")
    p.add_argument("--n-mean-latent", type=int, default=4096,
                   help="samples for latent_avg when the checkpoint has none (rosinality: 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST/stylegan2")
    p.set_defaults(func=_convert_stylegan2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barbershop-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="render samples from the embedded tiny generator (or --weights)")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--n", type=int, default=16, help="number of samples")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--truncation", type=float, default=1.0)
    demo.add_argument("--weights", help="a converted weights directory instead of the embedded default")
    demo.set_defaults(func=_demo)

    _add_convert(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
