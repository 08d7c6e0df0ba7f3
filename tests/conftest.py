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
