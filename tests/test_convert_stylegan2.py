"""`barbershop-jax convert stylegan2`: round trips, layouts it accepts, errors it gives."""
import argparse
import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_stylegan2 as T
from conftest import rel_err
from barbershop_jax import cli
from barbershop_jax import load_generator
from barbershop_jax.losses import p_norm
from barbershop_jax.models import pca as pca_lib
from barbershop_jax.models import stylegan2
from convert import stylegan2 as conv


def _convert(src, dst, *extra):
    return cli.main(["convert", "stylegan2", str(src), str(dst), "--pca-samples", "0", *extra])


def _small_generator(seed=0, size=32):
    return T.realistic_init_(T.Generator(size, 64, 2, channel_multiplier=2, channel_max=64), seed=seed).eval()


def test_round_trip_1024_official_shapes(tmp_path):
    """The full FFHQ architecture (1024 px, channel multiplier 2) converts through the real
    command with every shape of SPEC.md section 2; computing on it is left to the benchmark."""
    torch.manual_seed(0)
    g = T.Generator(1024, 512, 8, channel_multiplier=2)
    sd = g.state_dict()
    assert len(sd) == 171
    for key, shape in {"style.8.weight": (512, 512), "input.input": (1, 512, 4, 4),
                       "conv1.conv.weight": (1, 512, 512, 3, 3), "convs.8.conv.weight": (1, 256, 512, 3, 3),
                       "convs.15.activate.bias": (32,), "to_rgbs.7.conv.weight": (1, 3, 32, 1, 1),
                       "to_rgbs.3.upsample.kernel": (4, 4), "noises.noise_16": (1, 1, 1024, 1024)}.items():
        assert tuple(sd[key].shape) == shape
    torch.save(T.checkpoint(g, n_avg=64), tmp_path / "ffhq.pt")
    assert _convert(tmp_path / "ffhq.pt", tmp_path / "w") == 0
    model = load_generator(tmp_path / "w")
    assert model.config == stylegan2.GeneratorConfig()
    np.testing.assert_array_equal(model.params["convs_8"]["conv"]["kernel"],
                                  sd["convs.8.conv.weight"][0].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.params["mapping"]["dense_7"]["kernel"], sd["style.8.weight"].numpy().T)
    np.testing.assert_array_equal(model.noise_const[16][0, :, :, 0], sd["noises.noise_16"][0, 0].numpy())
    np.testing.assert_array_equal(model.params["to_rgbs_7"]["bias"], sd["to_rgbs.7.bias"].numpy().reshape(3))
    assert model.config.n_latent == 18


def test_training_checkpoint_without_latent_avg(tmp_path):
    """g, d, g_ema, optimiser states and an argparse `args`: latent_avg is computed."""
    g = _small_generator()
    ckpt = {"g": g.state_dict(), "d": {"w": torch.zeros(3)}, "g_ema": g.state_dict(),
            "g_optim": {"state": {}, "param_groups": []}, "args": argparse.Namespace(size=32, lr=0.002)}
    torch.save(ckpt, tmp_path / "train.pt")
    assert _convert(tmp_path / "train.pt", tmp_path / "w", "--n-mean-latent", "512") == 0
    model = load_generator(tmp_path / "w")
    z = jax.random.normal(jax.random.PRNGKey(0), (512, 64))
    np.testing.assert_allclose(model.latent_avg, model.map(z).mean(0), rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / "w" / "stylegan2" / "config.json").read_text())
    assert "computed from 512" in meta["converted"]["latent_avg"]


def test_bare_state_dict_and_flags(tmp_path):
    g = _small_generator(size=16)
    torch.save(g.state_dict(), tmp_path / "sd.pt")
    assert _convert(tmp_path / "sd.pt", tmp_path / "w") == 0
    assert load_generator(tmp_path / "w" / "stylegan2").config.size == 16
    # A --size that contradicts the shapes is refused with the shapes named.
    assert _convert(tmp_path / "sd.pt", tmp_path / "w2", "--size", "32") == 1
    assert not (tmp_path / "w2").exists()


def test_channel_multiplier_inferred(tmp_path):
    g = T.Generator(128, 64, 2, channel_multiplier=1, channel_max=512)  # 64 px: 256, 128 px: 128
    torch.save(T.checkpoint(g, n_avg=16), tmp_path / "g.pt")
    model, _ = conv.convert(tmp_path / "g.pt")
    assert (model.config.channel_multiplier, model.config.channel_max) == (1, 512)


def test_pca_stats_computed_and_imported(tmp_path):
    g = _small_generator()
    torch.save(T.checkpoint(g, n_avg=16), tmp_path / "g.pt")
    assert cli.main(["convert", "stylegan2", str(tmp_path / "g.pt"), str(tmp_path / "w"),
                     "--pca-samples", "3000"]) == 0
    model = load_generator(tmp_path / "w")
    stats = stylegan2.load_pca(tmp_path / "w")
    # Independent check: PCA by SVD of the same samples (the official recipe: leaky ReLU 5).
    x = np.asarray(jax.nn.leaky_relu(model.map(jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(1), 0),
                                                                  (3000, 64))), 5.0), np.float64)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    np.testing.assert_allclose(stats["X_mean"], mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["X_stdev"], s / np.sqrt(len(x) - 1), rtol=1e-3)
    np.testing.assert_allclose(np.abs(stats["X_comp"][:8] @ vt[:8].T), np.eye(8), atol=1e-3)
    # The official p-norm formula in torch gives the same value.
    w = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(0))
    comp, xm, sd = (torch.from_numpy(stats[k]) for k in ("X_comp", "X_mean", "X_stdev"))
    ref = ((torch.nn.LeakyReLU(5)(w) - xm).bmm(comp.T.unsqueeze(0).repeat(2, 1, 1)) / sd).pow(2).mean()
    assert abs(float(p_norm.p_norm_loss(jnp.asarray(w.numpy()), stats)) - float(ref)) <= 1e-5 * float(ref)
    # Import the same statistics as an official ffhq_PCA.npz.
    np.savez(tmp_path / "ffhq_PCA.npz", **stats)
    assert cli.main(["convert", "stylegan2", str(tmp_path / "g.pt"), str(tmp_path / "w2"),
                     "--pca", str(tmp_path / "ffhq_PCA.npz")]) == 0
    for k in pca_lib.PCA_KEYS:
        np.testing.assert_array_equal(stylegan2.load_pca(tmp_path / "w2")[k], stats[k])


# ------------------------------------------------------------------ errors
def _error(capsys, src, dst):
    assert _convert(src, dst) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("barbershop-jax: error: ")
    assert not dst.exists()
    return err


def test_truncated_file(tmp_path, capsys):
    torch.save(T.checkpoint(_small_generator(), n_avg=16), tmp_path / "g.pt")
    data = (tmp_path / "g.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _error(capsys, tmp_path / "cut.pt", tmp_path / "w")


def test_other_architecture(tmp_path, capsys):
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64),
                   "fc.weight": torch.zeros(10, 512)}
    torch.save(resnet_like, tmp_path / "resnet.pth")
    assert "not a rosinality StyleGAN2 generator checkpoint" in _error(capsys, tmp_path / "resnet.pth", tmp_path / "w")


def test_renamed_key_is_named(tmp_path, capsys):
    ckpt = T.checkpoint(_small_generator(), n_avg=16)
    ckpt["g_ema"]["convs.1.noise.strength"] = ckpt["g_ema"].pop("convs.1.noise.weight")
    torch.save(ckpt, tmp_path / "g.pt")
    err = _error(capsys, tmp_path / "g.pt", tmp_path / "w")
    assert "missing convs.1.noise.weight" in err and "unexpected convs.1.noise.strength" in err


def test_misshaped_key_is_named(tmp_path, capsys):
    ckpt = T.checkpoint(_small_generator(), n_avg=16)
    ckpt["g_ema"]["convs.2.activate.bias"] = torch.zeros(7)
    torch.save(ckpt, tmp_path / "g.pt")
    assert "convs.2.activate.bias has shape (7,), expected (64,)" in _error(capsys, tmp_path / "g.pt", tmp_path / "w")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = T.checkpoint(_small_generator(), n_avg=16)
    ckpt["extra"] = _Exploit(marker)
    torch.save(ckpt, tmp_path / "evil.pt")
    assert "refused" in _error(capsys, tmp_path / "evil.pt", tmp_path / "w")
    assert not marker.exists()
    # A raw pickle file (no torch zip container) is refused too.
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    _error(capsys, tmp_path / "evil.pkl", tmp_path / "w")
    assert not marker.exists()


def test_missing_and_empty_files(tmp_path, capsys):
    assert "no such file" in _error(capsys, tmp_path / "nope.pt", tmp_path / "w")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty file" in _error(capsys, tmp_path / "empty.pt", tmp_path / "w")


def test_existing_destination_needs_overwrite(tmp_path, capsys):
    torch.save(T.checkpoint(_small_generator(), n_avg=16), tmp_path / "g.pt")
    assert _convert(tmp_path / "g.pt", tmp_path / "w") == 0
    before = sorted(p.name for p in (tmp_path / "w" / "stylegan2").iterdir())
    assert _convert(tmp_path / "g.pt", tmp_path / "w") == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _convert(tmp_path / "g.pt", tmp_path / "w", "--overwrite") == 0
    assert sorted(p.name for p in (tmp_path / "w" / "stylegan2").iterdir()) == before
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["stylegan2"]  # no temporary left


# ------------------------------------------------------------------ strict load
def test_load_errors_name_the_problem(tmp_path):
    torch.save(T.checkpoint(_small_generator(), n_avg=16), tmp_path / "g.pt")
    assert _convert(tmp_path / "g.pt", tmp_path / "w") == 0
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generator(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no stylegan2 weights"):
        load_generator(tmp_path)
    cfg = tmp_path / "w" / "stylegan2" / "config.json"
    meta = json.loads(cfg.read_text())
    meta["config"]["size"] = 64  # config no longer matches the arrays
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing .*convs_6.*"):
        load_generator(tmp_path / "w")
    meta["model"] = "bisenet"
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="holds a 'bisenet' model"):
        load_generator(tmp_path / "w")


def test_load_detects_damaged_arrays(tmp_path):
    torch.save(T.checkpoint(_small_generator(), n_avg=16), tmp_path / "g.pt")
    assert _convert(tmp_path / "g.pt", tmp_path / "w") == 0
    arrays = tmp_path / "w" / "stylegan2" / "arrays"
    for f in arrays.rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        load_generator(tmp_path / "w")


def test_converted_small_generator_renders_like_torch(tmp_path):
    g = _small_generator(seed=3)
    torch.save(T.checkpoint(g, n_avg=16), tmp_path / "g.pt")
    assert _convert(tmp_path / "g.pt", tmp_path / "w") == 0
    model = load_generator(tmp_path / "w")
    w = torch.randn(2, g.n_latent, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, ref = g(w, g.const_noise())
    assert rel_err(model.render(jnp.asarray(w.numpy()), noise="const"), ref.numpy().transpose(0, 2, 3, 1)) <= 1e-4
