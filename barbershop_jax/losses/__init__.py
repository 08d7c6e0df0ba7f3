"""Losses of the optimisation stages."""
