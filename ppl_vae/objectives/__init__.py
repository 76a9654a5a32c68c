"""Training objectives by name: Pyro's ELBOs, per-point importance-weighted bounds, lower-variance
gradient estimators (DReG, STL), and modifiers (beta, warm-up, free bits)."""

from .aggregate import AggregatePenalized, latent_codes
from .divergences import cramer_wold2, mmd2, sliced_wasserstein2
from .elbo import STL, AnalyticELBO, FreeBits, FreeBitsELBO, PointELBO, latent_kl
from .importance import IWAE, DReG, PerPointObjective, RenyiBound, log_mean_exp, path_only
from .modifiers import LatentScaled, scale_latents
from .pyro_elbos import AnalyticKLELBO, JitTraceELBO, analytic_sites
from .registry import OBJECTIVES, accepts_point_masses, get_objective, num_particles, parse_spec, resolve_spec

__all__ = [
    "IWAE",
    "OBJECTIVES",
    "STL",
    "AggregatePenalized",
    "AnalyticELBO",
    "AnalyticKLELBO",
    "DReG",
    "FreeBits",
    "FreeBitsELBO",
    "JitTraceELBO",
    "LatentScaled",
    "PerPointObjective",
    "PointELBO",
    "RenyiBound",
    "accepts_point_masses",
    "analytic_sites",
    "cramer_wold2",
    "get_objective",
    "latent_codes",
    "latent_kl",
    "mmd2",
    "num_particles",
    "log_mean_exp",
    "parse_spec",
    "path_only",
    "resolve_spec",
    "scale_latents",
    "sliced_wasserstein2",
]
