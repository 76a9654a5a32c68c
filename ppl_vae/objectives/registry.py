"""One registry of named objectives, looked up from Python and the CLI alike.

A spec is ``name`` or ``name:key=value,key=value`` (``"iwae:k=50"``,
``"vr:alpha=0.5,k=5"``). Adding an objective is one factory and one line in
:data:`OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.infer

from .importance import IWAE, RenyiBound


def _elbo(k: int = 1, max_plate_nesting: int | None = None):
    kw: dict[str, Any] = {"num_particles": k, "vectorize_particles": k > 1}
    if max_plate_nesting is not None:
        kw["max_plate_nesting"] = max_plate_nesting
    return pyro.infer.Trace_ELBO(**kw)


def _meanfield(k: int = 1, max_plate_nesting: int | None = None):
    kw: dict[str, Any] = {"num_particles": k, "vectorize_particles": k > 1}
    if max_plate_nesting is not None:
        kw["max_plate_nesting"] = max_plate_nesting
    return pyro.infer.TraceMeanField_ELBO(**kw)


def _iwae(k: int = 5, max_plate_nesting: int | None = None):
    return IWAE(num_particles=k, max_plate_nesting=max_plate_nesting)


def _vr(alpha: float = 0.5, k: int = 5, max_plate_nesting: int | None = None):
    return RenyiBound(alpha=alpha, num_particles=k, max_plate_nesting=max_plate_nesting)


OBJECTIVES: dict[str, Callable[..., Any]] = {
    "elbo": _elbo,
    "meanfield": _meanfield,
    "iwae": _iwae,
    "vr": _vr,
}

_PARAM_TYPES = {"k": int, "alpha": float}


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
    try:
        return OBJECTIVES[name](**params)
    except TypeError as err:
        raise ValueError(f"objective '{name}' does not take those parameters ({spec}): {err}") from None
