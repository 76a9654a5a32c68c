"""Training objectives by name: Pyro's ELBOs and per-point importance-weighted bounds."""

from .importance import IWAE, PerPointObjective, RenyiBound, log_mean_exp
from .registry import OBJECTIVES, get_objective, parse_spec

__all__ = ["IWAE", "OBJECTIVES", "PerPointObjective", "RenyiBound", "get_objective", "log_mean_exp", "parse_spec"]
