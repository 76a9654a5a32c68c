"""The registry's built-in objectives (:data:`ppl_vae.registry.OBJECTIVES`), one factory each:
the spec's parameters are the factory's keyword arguments (``k`` particles, ``alpha``, ...)."""

from __future__ import annotations

import pyro.infer

from .elbo import STL
from .importance import IWAE, DReG, RenyiBound
from .pyro_elbos import AnalyticKLELBO, JitTraceELBO, particles_as_needed, pyro_elbo_options
from .score_function import RWS, VIMCO, TraceGraphELBO


def elbo(k: int = 1, max_plate_nesting=None):
    """Pyro's ``Trace_ELBO`` with ``k`` (vectorised) particles."""
    return particles_as_needed(pyro.infer.Trace_ELBO)(**pyro_elbo_options(k, max_plate_nesting))


def meanfield(k: int = 1, max_plate_nesting=None):
    """``TraceMeanField_ELBO`` that refuses a site without a closed-form KL."""
    return AnalyticKLELBO(k, max_plate_nesting)


def iwae(k: int = 5, max_plate_nesting=None):
    return IWAE(k, max_plate_nesting)


def vr(alpha: float = 0.5, k: int = 5, max_plate_nesting=None):
    return RenyiBound(alpha, k, max_plate_nesting)


def dreg(k: int = 5, max_plate_nesting=None):
    return DReG(k, max_plate_nesting)


def stl(k: int = 1, max_plate_nesting=None):
    return STL(k, max_plate_nesting)


def jit_elbo(k: int = 1, max_plate_nesting=None):
    return JitTraceELBO(k, max_plate_nesting)


def jit_meanfield(k: int = 1, max_plate_nesting=None):
    return AnalyticKLELBO(k, max_plate_nesting, jit=True)


def enum(k: int = 1, max_plate_nesting=None):
    """Pyro's ``TraceEnum_ELBO``: sites marked ``infer={"enumerate": "parallel"}`` (or by
    ``pyro.infer.config_enumerate``) are summed exactly, the rest sampled."""
    return particles_as_needed(pyro.infer.TraceEnum_ELBO)(**pyro_elbo_options(k, max_plate_nesting))


def tracegraph(k: int = 1, max_plate_nesting=None):
    """Pyro's ``TraceGraph_ELBO`` (Rao-Blackwellised score function) with decaying-average baselines."""
    return TraceGraphELBO(k, max_plate_nesting)


def vimco(k: int = 5, max_plate_nesting=None):
    return VIMCO(k, max_plate_nesting)


def rws(k: int = 5, insomnia: float = 1.0, max_plate_nesting=None):
    return RWS(k, max_plate_nesting, insomnia)
