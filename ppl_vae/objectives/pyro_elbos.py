"""Pyro's own ELBOs, wrapped only where they would mislead.

``TraceMeanField_ELBO`` silently falls back to Monte Carlo for a latent site whose
guide/prior pair has no registered KL (a full-covariance or flow guide against a
diagonal prior, DESIGN.md). :class:`AnalyticKLELBO` checks the pair on first use,
says which sites are analytic, and refuses a pair with none closed-form.
The ``Jit*`` ELBOs rest on the deprecated ``torch.jit.trace``; its deprecation and
tracer warnings are silenced around their calls and nowhere else.
"""

from __future__ import annotations

import warnings

import pyro.infer
import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence

from ..particles import runs_one_at_a_time


def analytic_sites(model, guide, *args, **kwargs) -> dict[str, bool]:
    """For each latent site, whether Pyro has a closed-form KL(guide || prior)."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    out = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name not in guide_trace.nodes:
            continue
        if site["fn"].__class__.__name__ == "_Subsample":
            continue
        try:
            kl_divergence(guide_trace.nodes[name]["fn"], site["fn"])
            out[name] = True
        except NotImplementedError:
            out[name] = False
    return out


def pyro_elbo_options(num_particles: int, max_plate_nesting: int | None) -> dict:
    """Keyword arguments of Pyro's ELBO classes: particles vectorised when there are several."""
    kw: dict = {"num_particles": num_particles, "vectorize_particles": num_particles > 1}
    if max_plate_nesting is not None:
        kw["max_plate_nesting"] = max_plate_nesting
    return kw


_AS_NEEDED: dict[type, type] = {}


def particles_as_needed(cls: type) -> type:
    """Pyro's ELBO class ``cls`` whose vectorised particles run one at a time for a pair found not to
    broadcast over a leading sample dimension (:func:`ppl_vae.sites.runs_one_at_a_time`), as Pyro's
    own ``vectorize_particles=False`` runs them."""
    if cls not in _AS_NEEDED:

        def _get_traces(self, model, guide, args, kwargs):
            if not (self.vectorize_particles and runs_one_at_a_time(model, guide)):
                yield from cls._get_traces(self, model, guide, args, kwargs)
                return
            self.vectorize_particles = False
            try:
                traces = list(cls._get_traces(self, model, guide, args, kwargs))
            finally:
                self.vectorize_particles = True
            yield from traces

        _AS_NEEDED[cls] = type(cls.__name__, (cls,), {"_get_traces": _get_traces, "__module__": cls.__module__})
    return _AS_NEEDED[cls]


class AnalyticKLELBO:
    """``TraceMeanField_ELBO`` that refuses, with the site named, to pretend a KL is analytic."""

    def __init__(self, num_particles: int = 1, max_plate_nesting: int | None = None, jit: bool = False):
        cls = pyro.infer.JitTraceMeanField_ELBO if jit else particles_as_needed(pyro.infer.TraceMeanField_ELBO)
        self.elbo = cls(**pyro_elbo_options(num_particles, max_plate_nesting))
        self.jit = jit
        self.analytic: dict[str, bool] | None = None

    def _check(self, model, guide, args, kwargs):
        if self.analytic is None:
            self.analytic = analytic_sites(model, guide, *args, **kwargs)
            missing = [n for n, ok in self.analytic.items() if not ok]
            if missing:
                raise ValueError(
                    f"'meanfield' needs a closed-form KL(q || p) at every latent site, and there is none at "
                    f"{missing} for this guide and prior (flows and full-covariance guides against a diagonal "
                    "prior have none); use 'elbo' (Monte Carlo KL) or an importance-weighted objective"
                )

    def differentiable_loss(self, model, guide, *args, **kwargs):
        self._check(model, guide, args, kwargs)
        return _quiet(self.jit, self.elbo.differentiable_loss, model, guide, *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        self._check(model, guide, args, kwargs)
        return _quiet(self.jit, self.elbo.loss, model, guide, *args, **kwargs)

    def __call__(self, model, guide, *args, **kwargs):
        """The differentiable loss, so ``pyro.infer.SVI`` takes this object as its ``loss``."""
        return self.differentiable_loss(model, guide, *args, **kwargs)

    def __repr__(self):
        return f"AnalyticKLELBO(jit={self.jit})"


class JitTraceELBO:
    """Pyro's ``JitTrace_ELBO`` with its ``torch.jit.trace`` deprecation warning silenced."""

    def __init__(self, num_particles: int = 1, max_plate_nesting: int | None = None):
        self.elbo = pyro.infer.JitTrace_ELBO(**pyro_elbo_options(num_particles, max_plate_nesting))

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return _quiet(True, self.elbo.differentiable_loss, model, guide, *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        return _quiet(True, self.elbo.loss, model, guide, *args, **kwargs)

    def __call__(self, model, guide, *args, **kwargs):
        return self.differentiable_loss(model, guide, *args, **kwargs)


def _quiet(jit: bool, fn, *args, **kwargs):
    if not jit:
        return fn(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        # tracing a Pyro model always trips torch's tracer warnings (shape checks turned into constants)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return fn(*args, **kwargs)
