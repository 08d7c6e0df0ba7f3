"""The command line (`barbershop-jax`): cli/args.py parses, cli/main.py runs one pipeline call
per command and turns errors into one line and an exit status."""
from barbershop_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
