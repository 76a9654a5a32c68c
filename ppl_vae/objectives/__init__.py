"""Training objectives by name: Pyro's ELBOs, per-point importance-weighted bounds, lower-variance
gradient estimators (DReG, STL), and modifiers (beta, warm-up, free bits)."""

from .elbo import STL, FreeBitsELBO, latent_kl
from .importance import IWAE, DReG, PerPointObjective, RenyiBound, log_mean_exp, path_only
from .modifiers import LatentScaled, scale_latents
from .pyro_elbos import AnalyticKLELBO, JitTraceELBO, analytic_sites
from .registry import OBJECTIVES, get_objective, parse_spec

__all__ = [
    "IWAE",
    "OBJECTIVES",
    "STL",
    "AnalyticKLELBO",
    "DReG",
    "FreeBitsELBO",
    "JitTraceELBO",
    "LatentScaled",
    "PerPointObjective",
    "RenyiBound",
    "analytic_sites",
    "get_objective",
    "latent_kl",
    "log_mean_exp",
    "parse_spec",
    "path_only",
    "scale_latents",
]
