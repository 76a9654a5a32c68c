"""Objectives by spec, from the one registry (:data:`ppl_vae.registry.OBJECTIVES`).

A spec is ``name`` or ``name:key=value,key=value``: ``"iwae:k=50"``,
``"vr:alpha=0.5,k=5"``, ``"elbo:beta=4"``, ``"iwae:k=5,warmup=1000"``,
``"elbo:free_bits=0.25,free_bits_per=dim"``, ``"infovae:lam=1000,kernel=rbf"``, ``"swae:lam=10,projections=50"``. Modifiers (``beta``, ``warmup`` in
steps, ``warmup_epochs``) combine with every objective; ``free_bits`` with the
single-sample-bound family (``elbo``, ``meanfield``, ``stl``), as a wrapper of each.
Adding an objective is one factory and one line in :data:`ppl_vae.registry.OBJECTIVES`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from ..registry import OBJECTIVES
from .aggregate import NO_KL, AggregatePenalized
from .elbo import STL, AnalyticELBO, FreeBits, PointELBO
from .modifiers import LatentScaled

MODIFIERS = ("beta", "warmup", "warmup_epochs")
FREE_BITS = ("free_bits", "free_bits_per")
# the per-point estimator that free bits wrap, for each objective that has a separate KL term
FREE_BITS_BASES = {"elbo": PointELBO, "meanfield": AnalyticELBO, "stl": STL}
_PARAM_TYPES: dict[str, type] = {
    "k": int,
    "alpha": float,
    "beta": float,
    "warmup": int,
    "warmup_epochs": int,
    "free_bits": float,
    "free_bits_per": str,
    "lam": float,
    "kernel": str,
    "projections": int,
    "site": str,
}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"iwae:k=5"`` into ``("iwae", {"k": 5})``; errors name the bad part."""
    name, _, rest = spec.strip().partition(":")
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective '{name}' in '{spec}'; known: {', '.join(OBJECTIVES)}")
    params: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"objective parameter '{part}' in '{spec}' must look like key=value")
        if key in params:
            raise ValueError(f"objective parameter '{key}' is given twice in '{spec}'")
        cast = _PARAM_TYPES.get(key, float)
        try:
            params[key] = cast(value)
        except ValueError:
            raise ValueError(f"objective parameter {key}='{value}' in '{spec}' is not a {cast.__name__}") from None
        if cast is float and not math.isfinite(params[key]):  # beta=nan passed every "< 0" check and trained on nan
            raise ValueError(f"objective parameter {key}='{value}' in '{spec}' must be a finite number")
    return name, params


def _free_bits(name: str, params: dict, free_bits: dict):
    if name not in FREE_BITS_BASES:
        raise ValueError(f"free bits floor the KL term of an ELBO; '{name}' has no separate KL term (use elbo, meanfield or stl)")
    if "free_bits" not in free_bits:
        raise ValueError("free_bits_per needs free_bits=LAMBDA")
    base = FREE_BITS_BASES[name](params.pop("k", 1), **params)
    return FreeBits(base, free_bits["free_bits"], free_bits.get("free_bits_per", "site"))


def get_objective(spec: str, **overrides):
    """Build the objective named by ``spec`` (see module docstring)."""
    name, params = parse_spec(spec)
    params.update(overrides)
    if "k" in params and params["k"] < 1:
        raise ValueError(f"k (number of particles) must be a positive integer, got {params['k']} in '{spec}'")
    modifiers = {k: params.pop(k) for k in MODIFIERS if k in params}
    if modifiers and name in NO_KL:
        raise ValueError(
            f"{', '.join(modifiers)} scale the KL term, and '{name}' has none (its regulariser is lam=...); use infovae for a KL"
        )
    free_bits = {k: params.pop(k) for k in FREE_BITS if k in params}
    try:
        objective = _free_bits(name, params, free_bits) if free_bits else OBJECTIVES[name](**params)
    except TypeError as err:
        raise ValueError(f"objective '{name}' does not take those parameters ({spec}): {err}") from None
    if modifiers:
        objective = LatentScaled(objective, **modifiers)
    return objective


def accepts_point_masses(objective) -> bool:
    """Whether ``objective`` can train a point-mass (deterministic) guide: the penalties on the
    aggregate posterior need no density q(z|x); every bound on log p(x) does."""
    inner = objective.objective if isinstance(objective, LatentScaled) else objective
    return isinstance(inner, AggregatePenalized)


def resolve_spec(spec: str) -> str:
    """``spec`` with every parameter its objective takes written out, defaults filled in, in the
    factory's order (modifiers as given, after them): ``"iwae"`` is ``"iwae:k=5"``. What reports
    record, so a row says which bound it trained."""
    name, params = parse_spec(spec)
    modifiers = {k: params.pop(k) for k in MODIFIERS if k in params}
    if "free_bits" in params or "free_bits_per" in params:
        defaults = {"k": 1, "free_bits_per": "site"}
    else:
        signature = inspect.signature(OBJECTIVES[name]).parameters.values()
        defaults = {p.name: p.default for p in signature if p.default is not inspect.Parameter.empty}
        defaults.pop("max_plate_nesting", None)
    full = {**defaults, **params, **modifiers}
    parts = [
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in full.items() if value is not None
    ]
    return f"{name}:{','.join(parts)}" if parts else name


def num_particles(objective) -> int:
    """How many samples per point ``objective`` draws at once (Pyro's ELBOs and the package's alike)."""
    inner = objective.objective if isinstance(objective, LatentScaled) else objective
    inner = getattr(inner, "elbo", inner)  # AnalyticKLELBO and JitTraceELBO hold Pyro's ELBO
    return int(getattr(inner, "num_particles", 1))
