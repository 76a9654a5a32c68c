"""Observation distributions p(x | z) chosen by name, built from a decoder's output.

Each likelihood says how many decoder outputs it needs per data dimension and
builds a distribution with event shape ``(x_dim,)`` from them.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.nn import bounded_scale


class Bernoulli(nn.Module):
    """``x_i ~ Bernoulli(sigmoid(logit_i))`` for binary pixels."""

    outputs_per_dim = 1

    def __init__(self, x_dim: int):
        super().__init__()

    def forward(self, out: torch.Tensor):
        return dist.Bernoulli(logits=out).to_event(1)


class Gaussian(nn.Module):
    """``x_i ~ N(mu_i, sigma_i^2)`` with a learned per-dimension, bounded sigma."""

    outputs_per_dim = 1

    def __init__(self, x_dim: int, init_scale: float = 0.5):
        super().__init__()
        raw = torch.log(torch.expm1(torch.tensor(init_scale)))
        self.raw_scale = nn.Parameter(raw.expand(x_dim).clone())

    def forward(self, out: torch.Tensor):
        return dist.Normal(out, bounded_scale(self.raw_scale)).to_event(1)


class ContinuousBernoulli(nn.Module):
    """Continuous Bernoulli for intensities in [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    outputs_per_dim = 1

    def __init__(self, x_dim: int):
        super().__init__()

    def forward(self, out: torch.Tensor):
        return dist.ContinuousBernoulli(logits=out).to_event(1)


def make_likelihood(name: str, x_dim: int) -> nn.Module:
    from ppl_vae.registry import LIKELIHOODS

    if name not in LIKELIHOODS:
        raise ValueError(LIKELIHOODS.unknown(name))
    return LIKELIHOODS[name](x_dim)
