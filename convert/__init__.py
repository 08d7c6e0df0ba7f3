"""PyTorch -> Flax converters for the official checkpoints. Needs torch (the `convert` extra);
the runtime package `barbershop_jax` never imports this."""
