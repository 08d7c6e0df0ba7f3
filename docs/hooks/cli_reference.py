"""The command-line reference, generated from the argparse parser at every docs build.

An MkDocs hook (mkdocs.yml, `hooks:`): a page that holds the marker line
`<!-- cli-reference -->` gets, in its place, every command of `barbershop-jax` (the `convert`
plug-in's too, when installed) with its description, usage and options, read from the same
parser the command line runs. Adding or changing a flag changes the docs with no hand edit;
tests/test_docs.py checks that every option of every command is there.

argparse has no public way to list a parser's options, so this reads `_actions` (as
sphinx-argparse does); it is docs tooling, outside the package.
"""
from __future__ import annotations

import argparse
import re

MARKER = "<!-- cli-reference -->"
USAGE_WIDTH = 80


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs hook: the marker replaced by the generated reference."""
    if MARKER not in markdown:
        return markdown
    from barbershop_jax.cli import build_parser
    return markdown.replace(MARKER, reference(build_parser()))


def reference(parser: argparse.ArgumentParser) -> str:
    """Markdown for `parser` and every command under it, nested ones included, in the
    parser's own order: a heading, the description, the usage and a table of options each."""
    from barbershop_jax.cli.args import subcommands

    return "\n".join(_command(p) for p in [parser, *subcommands(parser)])


def _command(parser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    usage = formatter.format_help().strip()
    depth = parser.prog.count(" ")
    lines = [f"{'#' * min(depth + 1, 4)} `{parser.prog}`", ""]
    if parser.description:
        lines += [_text(parser.description), ""]
    lines += ["```", usage, "```", ""]
    rows = [_row(parser, a) for a in parser._actions if _shown(a)]
    if rows:
        lines += ["| option | default | what it does |", "| --- | --- | --- |", *rows, ""]
    return "\n".join(lines)


def _shown(action) -> bool:
    return action.help is not argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)


def _row(parser, action) -> str:
    if isinstance(action, argparse._SubParsersAction):
        name = "COMMAND: " + ", ".join(dict.fromkeys(action.choices))
    else:
        metavar = _metavar(action)
        names = action.option_strings or [metavar]
        name = ", ".join(f"{n} {metavar}" if action.option_strings and metavar else n for n in names)
    return f"| `{name}` | {_default(action)} | {_text(_help(parser, action))} |"


def _metavar(action) -> str:
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        metavar = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    elif action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        metavar = action.dest.upper() if action.option_strings else action.dest
    many = {"*": f"[{metavar} ...]", "+": f"{metavar} [{metavar} ...]", "?": f"[{metavar}]"}
    return many.get(action.nargs, metavar)


def _default(action) -> str:
    value = action.default
    if value is None or value is argparse.SUPPRESS or value is False or action.nargs == 0 or value == []:
        return ""
    return f"`{value}`"


def _help(parser, action) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own expansion: %(default)s, %(prog)s, ...
        values = {**vars(action), "prog": parser.prog}
        text = text % {k: getattr(v, "__name__", v) for k, v in values.items()}
    return text


def _text(text: str) -> str:
    """Plain help text as one Markdown table cell: what lies between backticks stays code, the
    rest has Markdown's special characters escaped, so that `$BARBERSHOP_JAX_WEIGHTS` or
    `[0, 1]` print as written."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    escaped = [p if p.startswith("`") else re.sub(r"([\\*_\[\]<>#])", r"\\\1", p) for p in parts]
    return "".join(escaped).replace("|", "&#124;")
