"""Flax models: one file per architecture, each with a strict load()."""
