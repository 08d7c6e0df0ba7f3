"""barbershop-jax: Barbershop hairstyle transfer (Zhu et al. 2021) in JAX/Flax.

The layers, each importing only those below it (enforced by import-linter, pyproject.toml):
cli -> pipeline -> stages -> config -> losses -> models -> ops. The runtime never imports
torch; converters for the official PyTorch checkpoints live in the separate `convert` package
(`barbershop-jax convert ...`).
"""
from barbershop_jax.models.stylegan2 import GeneratorConfig, StyleGAN2
from barbershop_jax.models.stylegan2 import load as load_generator

__all__ = ["EmbedConfig", "GeneratorConfig", "HairTransfer", "RunSettings", "StyleGAN2", "TargetEdit",
           "TransferConfig", "load_generator"]
__version__ = "0.1.0"


def __getattr__(name):
    # The transfer pipeline (optax, OpenCV) is imported when first used, not with the package.
    if name == "HairTransfer":
        from barbershop_jax.pipeline.hair_transfer import HairTransfer
        return HairTransfer
    if name == "RunSettings":
        from barbershop_jax.pipeline.runtime.settings import RunSettings
        return RunSettings
    if name == "TargetEdit":
        from barbershop_jax.pipeline.store.records import TargetEdit
        return TargetEdit
    if name in ("TransferConfig", "EmbedConfig"):
        from barbershop_jax import config
        return getattr(config, name)
    raise AttributeError(f"module 'barbershop_jax' has no attribute {name!r}")
