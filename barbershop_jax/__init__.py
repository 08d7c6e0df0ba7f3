"""barbershop-jax: Barbershop hairstyle transfer (Zhu et al. 2021) in JAX/Flax.

The runtime never imports torch; converters for the official PyTorch checkpoints live in the
separate `convert` package (`barbershop-jax convert ...`).
"""
from barbershop_jax.models.stylegan2 import GeneratorConfig, StyleGAN2
from barbershop_jax.models.stylegan2 import load as load_generator

__all__ = ["GeneratorConfig", "StyleGAN2", "load_generator"]
__version__ = "0.1.0"
