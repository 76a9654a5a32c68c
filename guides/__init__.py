"""Amortized guides q(z | x), by name (installed as ``ppl_vae.guides``)."""

from functools import partial

from .deterministic import DeterministicGuide
from .flows import FLOWS, FlowGuide
from .full_cov import FullCovGuide
from .hierarchical import HierarchicalGuide
from .mean_field import MeanFieldGuide

GUIDES = {
    "mean_field": MeanFieldGuide,
    "full_cov": FullCovGuide,
    "hierarchical": HierarchicalGuide,
    "deterministic": DeterministicGuide,
    **{flow: partial(FlowGuide, flow=flow) for flow in FLOWS},
    "hierarchical_iaf": partial(HierarchicalGuide, flow="iaf"),
}

__all__ = ["FLOWS", "GUIDES", "DeterministicGuide", "FlowGuide", "FullCovGuide", "HierarchicalGuide", "MeanFieldGuide"]
