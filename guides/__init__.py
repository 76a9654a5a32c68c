"""Amortized guides q(z | x), by name (installed as ``ppl_vae.guides``)."""

from .mean_field import MeanFieldGuide

GUIDES = {"mean_field": MeanFieldGuide}

__all__ = ["GUIDES", "MeanFieldGuide"]
