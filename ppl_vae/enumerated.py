r"""Model sites summed out inside each importance weight: discrete latents the model marks
``infer={"enumerate": "parallel"}`` (or by ``pyro.infer.config_enumerate``) and the guide does not
sample. Pyro's ``poutine.enum`` gives each such site its whole support along a dimension of its own
left of every plate; every model site whose log-density carries such a dimension is summed into one
joint term and the enumerated values are summed out exactly:

.. math::

    \log w = \log \sum_{y} p(x, y \mid z) + \log p(z) - \log q(z \mid x)

which has lower variance than sampling y from a guide (and needs no guide for it).
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch


def enumerated_in_model(model_trace, guide_trace) -> list[str]:
    """Latent model sites marked for parallel enumeration that the guide does not sample."""
    return [
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and name not in guide_trace.nodes
        and site["infer"].get("enumerate") == "parallel"
    ]


def enumerating(model, particle_dim: int):
    """``model`` with its marked sites enumerated in dimensions left of the particle dimension."""
    return poutine.enum(model, first_available_dim=particle_dim - 1)


def carries_enumeration(log_p: torch.Tensor, particle_dim: int) -> bool:
    return log_p.dim() > -particle_dim


def summed_out(sites: list[dict], particle_dim: int, data_dim: int, data_scale: float) -> torch.Tensor:
    """The joint log-density of ``sites`` with their enumerated values summed out: each site's
    log-density (mask and scale applied, plates nested in the data plate summed), added with
    broadcasting, then log-sum-exp over the enumeration dimensions. Shape: the ``-particle_dim``
    rightmost dimensions (particles, ..., data points)."""
    width = -particle_dim
    total = None
    for site in sites:
        log_p = site["fn"].log_prob(site["value"])
        if isinstance(site["mask"], torch.Tensor):
            log_p = torch.where(site["mask"], log_p, log_p.new_zeros(()))
        elif site["mask"] is False:
            log_p = torch.zeros_like(log_p)
        if log_p.dim() < width:
            log_p = log_p.reshape((1,) * (width - log_p.dim()) + log_p.shape)
        for d in range(-width, 0):
            if d not in (particle_dim, data_dim) and log_p.shape[d] != 1:
                log_p = log_p.sum(d, keepdim=True)
        log_p = (site["scale"] / data_scale) * log_p
        total = log_p if total is None else total + log_p
    lead = total.dim() - width
    return total.reshape((-1,) + total.shape[lead:]).logsumexp(0) if lead else total
