"""Amortized guides q(z | x), by name (installed as ``ppl_vae.guides``)."""

from ppl_vae.registry import GUIDES

from .deterministic import DeterministicGuide
from .flows import FLOWS, FlowGuide
from .full_cov import FullCovGuide
from .hierarchical import HierarchicalGuide
from .mean_field import MeanFieldGuide
from .sbn import SBNGuide

__all__ = [
    "FLOWS",
    "GUIDES",
    "DeterministicGuide",
    "FlowGuide",
    "FullCovGuide",
    "HierarchicalGuide",
    "MeanFieldGuide",
    "SBNGuide",
]
