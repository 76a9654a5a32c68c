"""One registry of named objectives, looked up from Python and the CLI alike.

A spec is ``name`` or ``name:key=value,key=value``: ``"iwae:k=50"``,
``"vr:alpha=0.5,k=5"``, ``"elbo:beta=4"``, ``"iwae:k=5,warmup=1000"``,
``"elbo:free_bits=0.25,free_bits_per=dim"``, ``"infovae:lam=1000,kernel=rbf"``, ``"swae:lam=10,projections=50"``. Modifiers (``beta``, ``warmup`` in
steps, ``warmup_epochs``) combine with every objective; ``free_bits`` with the
single-sample-bound family (``elbo``, ``meanfield``, ``stl``). Adding an objective is
one factory and one line in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.infer

from .aggregate import AGGREGATE_OBJECTIVES, NO_KL
from .elbo import STL, FreeBitsELBO
from .importance import IWAE, DReG, RenyiBound
from .modifiers import LatentScaled
from .pyro_elbos import AnalyticKLELBO, JitTraceELBO, pyro_elbo_options


def _elbo(k: int = 1, max_plate_nesting=None):
    return pyro.infer.Trace_ELBO(**pyro_elbo_options(k, max_plate_nesting))


OBJECTIVES: dict[str, Callable[..., Any]] = {
    "elbo": _elbo,
    "meanfield": lambda k=1, max_plate_nesting=None: AnalyticKLELBO(k, max_plate_nesting),
    "iwae": lambda k=5, max_plate_nesting=None: IWAE(k, max_plate_nesting),
    "vr": lambda alpha=0.5, k=5, max_plate_nesting=None: RenyiBound(alpha, k, max_plate_nesting),
    "dreg": lambda k=5, max_plate_nesting=None: DReG(k, max_plate_nesting),
    "stl": lambda k=1, max_plate_nesting=None: STL(k, max_plate_nesting),
    "jit_elbo": lambda k=1, max_plate_nesting=None: JitTraceELBO(k, max_plate_nesting),
    "jit_meanfield": lambda k=1, max_plate_nesting=None: AnalyticKLELBO(k, max_plate_nesting, jit=True),
    **AGGREGATE_OBJECTIVES,
}

MODIFIERS = ("beta", "warmup", "warmup_epochs")
FREE_BITS = ("free_bits", "free_bits_per")
FREE_BITS_OK = {"elbo": False, "meanfield": True, "stl": False}  # name -> analytic KL
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
        cast = _PARAM_TYPES.get(key, float)
        try:
            params[key] = cast(value)
        except ValueError:
            raise ValueError(f"objective parameter {key}='{value}' in '{spec}' is not a {cast.__name__}") from None
    return name, params


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
        if free_bits:
            if name not in FREE_BITS_OK:
                raise ValueError(
                    f"free bits floor the KL term of an ELBO; '{name}' has no separate KL term (use elbo, meanfield or stl)"
                )
            if "free_bits" not in free_bits:
                raise ValueError("free_bits_per needs free_bits=LAMBDA")
            objective = FreeBitsELBO(
                free_bits["free_bits"],
                free_bits.get("free_bits_per", "site"),
                analytic=FREE_BITS_OK[name],
                num_particles=params.pop("k", 1),
                **params,
            )
        else:
            objective = OBJECTIVES[name](**params)
    except TypeError as err:
        raise ValueError(f"objective '{name}' does not take those parameters ({spec}): {err}") from None
    if modifiers:
        objective = LatentScaled(objective, **modifiers)
    return objective
