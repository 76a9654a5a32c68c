"""Training objectives by name: Pyro's ELBOs, per-point importance-weighted bounds, lower-variance
gradient estimators (DReG, STL), and modifiers (beta, warm-up, free bits)."""

from .aggregate import AggregatePenalized, latent_codes
from .divergences import cramer_wold2, mmd2, sliced_wasserstein2
from .elbo import STL, FreeBitsELBO, latent_kl
from .importance import IWAE, DReG, PerPointObjective, RenyiBound, log_mean_exp, path_only
from .modifiers import LatentScaled, scale_latents
from .pyro_elbos import AnalyticKLELBO, JitTraceELBO, analytic_sites
from .registry import OBJECTIVES, get_objective, parse_spec

__all__ = [
    "IWAE",
    "OBJECTIVES",
    "STL",
    "AggregatePenalized",
    "AnalyticKLELBO",
    "DReG",
    "FreeBitsELBO",
    "JitTraceELBO",
    "LatentScaled",
    "PerPointObjective",
    "RenyiBound",
    "analytic_sites",
    "cramer_wold2",
    "get_objective",
    "latent_codes",
    "latent_kl",
    "mmd2",
    "log_mean_exp",
    "parse_spec",
    "path_only",
    "scale_latents",
    "sliced_wasserstein2",
]
