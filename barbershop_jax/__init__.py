"""barbershop-jax: Barbershop hairstyle transfer (Zhu et al. 2021) in JAX/Flax.

The runtime never imports torch; converters for the official PyTorch checkpoints live in the
separate `convert` package (`barbershop-jax convert ...`).
"""
from barbershop_jax.models.stylegan2 import GeneratorConfig, StyleGAN2
from barbershop_jax.models.stylegan2 import load as load_generator

__all__ = ["GeneratorConfig", "HairTransfer", "StyleGAN2", "TargetEdit", "TransferConfig", "load_generator"]
__version__ = "0.1.0"


def __getattr__(name):
    # The transfer pipeline (optax, OpenCV) is imported when first used, not with the package.
    if name in ("HairTransfer", "TargetEdit"):
        from barbershop_jax import transfer
        return getattr(transfer, name)
    if name == "TransferConfig":
        from barbershop_jax.transfer_config import TransferConfig
        return TransferConfig
    raise AttributeError(f"module 'barbershop_jax' has no attribute {name!r}")
