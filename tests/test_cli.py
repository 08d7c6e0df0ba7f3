"""The command line as a user runs it."""
import subprocess
import sys

import numpy as np
from PIL import Image

from barbershop_jax import cli


def test_demo_samples_writes_a_grid(tmp_path, capsys):
    assert cli.main(["demo", "--samples", "--out", str(tmp_path), "--n", "4", "--seed", "1"]) == 0
    image = np.asarray(Image.open(tmp_path / "samples.png"))
    assert image.shape == (128, 128, 3)
    assert image.std() > 10  # not blank
    assert "embedded random-weight generator" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]  # no temporary left


def test_the_loop_setting_is_read_by_the_command_line(monkeypatch):
    """BARBERSHOP_JAX_LOOP is read at the edge, as the configs' chunk and unroll options (the
    library's loops read their configs only)."""
    import pytest
    from barbershop_jax.cli import args as cli_args
    monkeypatch.setenv("BARBERSHOP_JAX_LOOP", "6,unrolled")
    assert cli_args.loop_options() == {"chunk": 6, "unroll": True}
    monkeypatch.setenv("BARBERSHOP_JAX_LOOP", "4,rolled")
    assert cli_args.loop_options() == {"chunk": 4, "unroll": False}
    monkeypatch.delenv("BARBERSHOP_JAX_LOOP")
    assert cli_args.loop_options() == {}
    for bad in ("0,rolled", "4,sideways", "four,rolled", "4"):
        monkeypatch.setenv("BARBERSHOP_JAX_LOOP", bad)
        with pytest.raises(ValueError, match="expected CHUNK,rolled or CHUNK,unrolled"):
            cli_args.loop_options()


def test_demo_samples_are_reproducible(tmp_path):
    for name in ("a", "b"):
        assert cli.main(["demo", "--samples", "--out", str(tmp_path / name), "--n", "2", "--seed", "5"]) == 0
    a, b = (np.asarray(Image.open(tmp_path / n / "samples.png")) for n in ("a", "b"))
    np.testing.assert_array_equal(a, b)


def test_console_script_runs(tmp_path):
    exe = [sys.executable, "-m", "barbershop_jax.cli"]
    done = subprocess.run(exe + ["demo", "--samples", "--out", str(tmp_path), "--n", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(exe + ["demo", "--weights", str(tmp_path / "none")], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [f"barbershop-jax: error: {tmp_path / 'none'}: weights directory does not exist"]


def test_runtime_never_imports_torch():
    code = ("import sys; import barbershop_jax, barbershop_jax.cli, barbershop_jax.pipeline.demo, "
            "barbershop_jax.losses.p_norm, barbershop_jax.models.stylegan2; "
            "barbershop_jax.pipeline.demo.run(sys.argv[1], n=1); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code, "/tmp/bj-notorch"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_convert_without_torch_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from barbershop_jax import cli; "
            "sys.exit(cli.main(['convert', 'stylegan2', 'x.pt', sys.argv[1]]))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "pip install 'barbershop-jax[convert]'" in done.stderr


def _parsers():
    from barbershop_jax.cli import args as args_lib
    parser = cli.build_parser()
    return parser, args_lib.subcommands(parser)


def test_every_command_says_what_it_does_and_every_option_has_help():
    parser, commands = _parsers()
    names = {c.prog for c in commands}
    assert {"barbershop-jax demo", "barbershop-jax transfer", "barbershop-jax embed",
            "barbershop-jax convert stylegan2"} <= names  # the walk reaches the nested commands
    missing = [c.prog for c in commands if not (c.description or "").strip()]
    missing += [f"{p.prog} {a.option_strings or a.dest}" for p in (parser, *commands) for a in p._actions
                if "-h" not in a.option_strings and not (a.help or "").strip()]
    assert missing == []


def test_global_options_work_before_and_after_the_command(tmp_path, monkeypatch):
    """`--no-compile-cache` before or after the command (after it once gave "unrecognized
    arguments"); given in neither place, the cache is on."""
    from barbershop_jax.pipeline.runtime import compile_cache
    parser, _ = _parsers()
    for argv, off in ((["demo"], False), (["--no-compile-cache", "demo"], True), (["demo", "--no-compile-cache"], True),
                      (["embed", "x.png", "--out", "o", "--no-compile-cache"], True),
                      (["convert", "bisenet", "a.pth", "d", "--no-compile-cache"], True)):
        assert parser.parse_args(argv).no_compile_cache is off, argv
    enabled = []
    monkeypatch.setattr(compile_cache, "enable", lambda *a, **k: enabled.append(1))
    for where in ("before", "after"):
        flag = ["--no-compile-cache"]
        argv = ["demo", "--samples", "--n", "1", "--out", str(tmp_path / where)]
        assert cli.main(flag + argv if where == "before" else argv + flag) == 0
    assert enabled == []
    assert cli.main(["demo", "--samples", "--n", "1", "--out", str(tmp_path / "on")]) == 0
    assert enabled == [1]


def test_demo_and_transfer_help_say_what_they_do(capsys):
    import pytest
    for command, words in (("demo", "bundled example images"), ("transfer", "hair shape of --shape")):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert words in out and "--fresh" in out and "--no-compile-cache" in out
