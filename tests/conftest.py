import sys
from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", False)
sys.path.insert(0, str(Path(__file__).parent))


def nhwc(t):
    """A torch NCHW tensor -> numpy NHWC."""
    return t.detach().numpy().transpose(0, 2, 3, 1)


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def torch_generator_64():
    """The PyTorch reference at 64 px, channel multiplier 2, official widths (512 channels)."""
    import torch_stylegan2 as T
    return T.realistic_init_(T.Generator(64, 512, 8, channel_multiplier=2)).eval()


@pytest.fixture(scope="session")
def converted_64(torch_generator_64, tmp_path_factory):
    """torch_generator_64 saved as an official checkpoint and converted by the real command."""
    import torch
    import torch_stylegan2 as T
    from barbershop_jax import cli, load_generator

    root = tmp_path_factory.mktemp("g64")
    torch.save(T.checkpoint(torch_generator_64), root / "g64.pt")
    assert cli.main(["convert", "stylegan2", str(root / "g64.pt"), str(root / "weights"),
                     "--pca-samples", "4096"]) == 0
    return load_generator(root / "weights"), root


@pytest.fixture(autouse=True)
def _rolled_loops(request, monkeypatch):
    """Optimisation loops in tests run as rolled scans: on CPU the production default unrolls
    each chunk (optimize.loop_defaults), which multiplies compile time in tests that run a few
    steps. Tests marked `production_loop` keep the production setting."""
    if "production_loop" not in request.keywords:
        from barbershop_jax import optimize
        monkeypatch.setattr(optimize, "loop_defaults", lambda platform=None: (4, False))


def pytest_configure(config):
    config.addinivalue_line("markers", "production_loop: run optimisation loops with the production defaults")
