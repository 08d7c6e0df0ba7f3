"""The README and the documentation site (docs/, mkdocs.yml) say what the code does: the
command-line reference is generated from the parser (a new flag appears with no hand edit),
every command example parses with the real parser (and the cheap ones run), every Python
example compiles and names attributes that exist, every relative link and anchor from the
README resolves, and the README stays short. The site itself is built in strict mode by
scripts/test.sh (`mkdocs build --strict`: broken links, anchors and API names fail it)."""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from barbershop_jax.cli import build_parser, main
from barbershop_jax.cli.args import subcommands

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 150
CODE_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _hook():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs/hooks/cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(path: Path, languages: tuple[str, ...]) -> list[str]:
    return [body for lang, body in CODE_BLOCK.findall(path.read_text()) if lang in languages]


def _commands(path: Path) -> list[list[str]]:
    """Every `barbershop-jax ...` line of the file's shell blocks, continuation lines joined,
    comments dropped, as argv (without the program)."""
    found = []
    for body in _blocks(path, ("", "sh", "bash", "console")):
        for line in body.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                if re.match(r"\s*(\S*/)?barbershop-jax(\s|$)", part):  # not the blocks of output
                    found.append(shlex.split(part, comments=True)[1:])
    return found


def _slug(heading: str) -> str:
    """A heading's anchor, as MkDocs' toc and GitHub make it (the same for our headings)."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[\s]+", "-", text)


def test_the_cli_reference_lists_every_command_and_option():
    parser = build_parser()
    text = _hook().reference(parser)
    for command in [parser, *subcommands(parser)]:
        assert f"`{command.prog}`" in text, command.prog
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text or f", {option}" in text, (command.prog, option)


def test_a_new_flag_changes_the_reference_with_no_hand_edit():
    parser = build_parser()
    hook = _hook()
    before = hook.reference(parser)
    transfer = next(c for c in subcommands(parser) if c.prog == "barbershop-jax transfer")
    transfer.add_argument("--made-up-flag", type=int, default=7, help="a flag no one wrote docs for")
    after = hook.reference(parser)
    assert "--made-up-flag" not in before
    assert "| `--made-up-flag MADE_UP_FLAG` | `7` | a flag no one wrote docs for |" in after


def test_the_cli_page_is_generated_by_the_docs_build():
    page = (ROOT / "docs/cli.md").read_text()
    hook = _hook()
    assert hook.MARKER in page and "| option |" not in page  # no hand-written table to fall behind
    assert "docs/hooks/cli_reference.py" in (ROOT / "mkdocs.yml").read_text()
    assert "--made-up" not in hook.on_page_markdown("no marker here", None, None, None)


def test_help_text_keeps_its_code_and_escapes_the_rest():
    cell = _hook()._text("default `a_b|c`; $SOME_VAR, [0, 1] <x> | y")
    assert cell == r"default `a_b&#124;c`; $SOME\_VAR, \[0, 1\] \<x\> &#124; y"


@pytest.mark.parametrize("path", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_every_command_example_parses(path):
    parser = build_parser()
    for argv in _commands(path):
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            pytest.fail(f"{path.name}: `barbershop-jax {shlex.join(argv)}` does not parse (exit {e.code})")


def test_the_command_examples_are_found():
    """The extraction above sees the examples it should (else the parse test could pass on none)."""
    readme = _commands(ROOT / "README.md")
    assert ["demo", "--out", "demo_out"] in readme and ["doctor"] in readme
    assert sum(len(_commands(p)) for p in PAGES) >= 20


def test_the_cheap_command_examples_run(capsys):
    examples = {tuple(argv) for path in [ROOT / "README.md", *PAGES] for argv in _commands(path)}
    cheap = sorted(argv for argv in examples if argv in {("doctor",), ("doctor", "--json")})
    assert cheap
    for argv in cheap:
        assert main(list(argv)) == 0, argv
    assert "backend:" in capsys.readouterr().out


def _python_examples():
    for path in [ROOT / "README.md", *PAGES]:
        for i, body in enumerate(_blocks(path, ("python",))):
            yield pytest.param(body, id=f"{path.name}-{i}")


@pytest.mark.parametrize("body", list(_python_examples()))
def test_every_python_example_compiles_and_names_what_exists(body):
    import barbershop_jax as bj
    from barbershop_jax.pipeline.hair_transfer import HairTransfer
    from barbershop_jax.pipeline.store.records import TransferResult

    compile(body, "<example>", "exec")
    fields = {f.name for f in dataclasses.fields(TransferResult)}
    owners = {"bj": lambda name: hasattr(bj, name), "ht": lambda name: hasattr(HairTransfer, name),
              "g": lambda name: hasattr(bj.StyleGAN2, name), "result": lambda name: name in fields}
    for owner, name in re.findall(r"\b(bj|ht|g|result)\.(\w+)", body):
        assert owners[owner](name), f"{owner}.{name}"


def test_the_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)


@pytest.mark.parametrize("path", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_relative_links_resolve(path):
    """MkDocs checks the site's links itself; this covers the README (read on GitHub) too."""
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: {target}"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", re.sub(CODE_BLOCK, "", linked.read_text()), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{path.name}: {target}"
