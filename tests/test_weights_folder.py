"""Which weights a run uses: --weights, else the default folder where it holds converted
weights, else the embedded models; and the one line that says so."""
import importlib
import json

from barbershop_jax.models import weights_folder


def fake_weights(folder, size=64):
    """A folder that holds_weights() accepts: the three config.json files (no arrays)."""
    for model in weights_folder.MODELS:
        (folder / model).mkdir(parents=True)
        config = {"size": size} if model == "stylegan2" else {}
        (folder / model / "config.json").write_text(json.dumps({"model": model, "format": 1, "config": config}))
    return folder


def test_default_folder_from_the_environment_else_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(weights_folder.ENV, str(tmp_path / "w"))
    assert weights_folder.default_folder() == tmp_path / "w"
    monkeypatch.delenv(weights_folder.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert weights_folder.default_folder() == tmp_path / "cache" / "barbershop-jax" / "weights"


def test_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv(weights_folder.ENV, str(tmp_path / "w"))
    assert weights_folder.resolve(weights_folder.FIND) is None  # no folder: the embedded models
    (tmp_path / "w" / "stylegan2").mkdir(parents=True)
    assert weights_folder.resolve(weights_folder.FIND) is None  # an incomplete folder is not used
    fake_weights(tmp_path / "v")
    monkeypatch.setenv(weights_folder.ENV, str(tmp_path / "v"))
    assert weights_folder.resolve(weights_folder.FIND) == tmp_path / "v"
    assert weights_folder.resolve("embedded") is None and weights_folder.resolve(None) is None
    assert weights_folder.resolve(str(tmp_path / "x")) == tmp_path / "x"  # named: used, and read strictly
    assert weights_folder.describe(tmp_path / "v") == f"weights: {tmp_path / 'v'} (the default folder), StyleGAN2 at 64 px"
    line = weights_folder.describe(None)
    assert "embedded tiny models" in line and "barbershop-jax weights download" in line


def test_a_command_names_its_weights_in_one_line(monkeypatch, tmp_path, capsys):
    """Without --weights a command uses the default folder where it holds weights, and says so
    before any work; `--weights embedded` keeps the tiny models."""
    cli = importlib.import_module("barbershop_jax.cli.main")  # the module (the package exports its main())
    used = []
    monkeypatch.setattr(cli, "embed", lambda args: used.append(args.weights))
    fake_weights(tmp_path / "w")
    monkeypatch.setenv(weights_folder.ENV, str(tmp_path / "w"))
    assert cli.main(["--no-compile-cache", "embed", "x.png", "--out", str(tmp_path / "out")]) == 0
    assert used == [tmp_path / "w"]
    out = capsys.readouterr().out
    assert f"barbershop-jax: weights: {tmp_path / 'w'} (the default folder), StyleGAN2 at 64 px" in out
    assert cli.main(["--no-compile-cache", "embed", "x.png", "--weights", "embedded", "--out", str(tmp_path / "o")]) == 0
    assert used[-1] is None and "embedded tiny models" in capsys.readouterr().out


def test_hair_transfer_uses_the_default_folder(monkeypatch, tmp_path):
    from barbershop_jax.models import bundle
    from barbershop_jax.pipeline import hair_transfer

    loaded = []
    monkeypatch.setattr(bundle, "load", lambda weights, *a, **k: loaded.append(weights))
    fake_weights(tmp_path / "w")
    monkeypatch.setenv(weights_folder.ENV, str(tmp_path / "w"))
    for given, expected in ((weights_folder.FIND, tmp_path / "w"), (None, None), ("embedded", None)):
        args = () if given is weights_folder.FIND else (given,)
        hair_transfer.HairTransfer(*args, out_dir=tmp_path / "out", compile_cache=False)
        assert loaded[-1] == expected
