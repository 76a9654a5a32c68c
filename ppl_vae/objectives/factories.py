"""The registry's built-in objectives (:data:`ppl_vae.registry.OBJECTIVES`), one factory each:
the spec's parameters are the factory's keyword arguments (``k`` particles, ``alpha``, ...)."""

from __future__ import annotations

import pyro.infer

from .elbo import STL
from .importance import IWAE, DReG, RenyiBound
from .pyro_elbos import AnalyticKLELBO, JitTraceELBO, pyro_elbo_options


def elbo(k: int = 1, max_plate_nesting=None):
    """Pyro's ``Trace_ELBO`` with ``k`` (vectorised) particles."""
    return pyro.infer.Trace_ELBO(**pyro_elbo_options(k, max_plate_nesting))


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
