"""Observation distributions p(x | z) chosen by name, built from a decoder's output.

Each likelihood says how many decoder outputs it needs per data dimension, builds a
distribution with event shape ``(x_dim,)`` from them, and inverts its mean
(``output_for_mean``: the decoder output whose distribution has a given mean), which the
data-informed initialisation of :mod:`ppl_vae.models.data_init` uses.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from ppl_vae.nn import bounded_scale

MEAN_CLIP = 1e-3  # a pixel that is 0 (or 1) in every training image starts at log-odds -6.9 (+6.9), not -inf
# the continuous Bernoulli's logits are searched in [-15, 15]: its mean there is 0.067 and 0.933, and it
# approaches 0 and 1 only as 1/logit (float32 clamps its probabilities beyond |logit| ~ 16)
LOGIT_RANGE = 15.0


def clip_mean(mean: torch.Tensor) -> torch.Tensor:
    return mean.clamp(MEAN_CLIP, 1 - MEAN_CLIP)


class Bernoulli(nn.Module):
    """``x_i ~ Bernoulli(sigmoid(logit_i))`` for binary pixels."""

    outputs_per_dim = 1

    def __init__(self, x_dim: int):
        super().__init__()

    def forward(self, out: torch.Tensor):
        return dist.Bernoulli(logits=out).to_event(1)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The log-odds ``log(m / (1 - m))``, with m clipped to [MEAN_CLIP, 1 - MEAN_CLIP]."""
        return torch.logit(clip_mean(mean))


class Gaussian(nn.Module):
    """``x_i ~ N(mu_i, sigma_i^2)`` with a learned per-dimension, bounded sigma."""

    outputs_per_dim = 1

    def __init__(self, x_dim: int, init_scale: float = 0.5):
        super().__init__()
        raw = torch.log(torch.expm1(torch.tensor(init_scale)))
        self.raw_scale = nn.Parameter(raw.expand(x_dim).clone())

    def forward(self, out: torch.Tensor):
        return dist.Normal(out, bounded_scale(self.raw_scale)).to_event(1)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The mean itself: the decoder's output is the Normal's location."""
        return mean.clone()


class ContinuousBernoulli(nn.Module):
    """Continuous Bernoulli for intensities in [0, 1] (Loaiza-Ganem & Cunningham 2019)."""

    outputs_per_dim = 1

    def __init__(self, x_dim: int):
        super().__init__()

    def forward(self, out: torch.Tensor):
        return dist.ContinuousBernoulli(logits=out).to_event(1)

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """The logit whose continuous Bernoulli has mean m, found by bisection (its mean is not
        sigmoid(logit) but increases with it); a mean beyond those at ±LOGIT_RANGE gets that bound."""
        target = clip_mean(mean).double()
        low, high = torch.full_like(target, -LOGIT_RANGE), torch.full_like(target, LOGIT_RANGE)
        for _ in range(60):  # halves a 2 * LOGIT_RANGE interval to ~1e-16
            mid = (low + high) / 2
            below = dist.ContinuousBernoulli(logits=mid).mean < target
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        return ((low + high) / 2).to(mean.dtype)


class _GreyLevels(constraints.Constraint):
    """Values k/255, k = 0..255 (8-bit grey levels scaled to [0, 1])."""

    is_discrete = True

    def check(self, value):
        scaled = value * 255
        return (value >= 0) & (value <= 1) & ((scaled - scaled.round()).abs() < 1e-3)

    def __repr__(self):
        return "GreyLevels(k/255)"


GREY_LEVELS = _GreyLevels()


class GreyLevelsDistribution(dist.TorchDistribution):
    """Independent 256-way categoricals over grey levels k/255: ``logits`` ``(..., D, 256)``, event ``(D,)``."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(GREY_LEVELS, 1)

    def __init__(self, logits: torch.Tensor, validate_args=None):
        self.logits = logits
        super().__init__(logits.shape[:-2], logits.shape[-2:-1], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return GreyLevelsDistribution(self.logits.expand(torch.Size(batch_shape) + self.logits.shape[-2:]))

    def log_prob(self, value):
        level = (value * 255).round().long().clamp(0, 255)
        log_p = torch.log_softmax(self.logits, -1)
        batch = torch.broadcast_shapes(value.shape, log_p.shape[:-1])
        return log_p.expand(batch + (256,)).gather(-1, level.expand(batch).unsqueeze(-1)).squeeze(-1).sum(-1)

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return dist.Categorical(logits=self.logits).sample(sample_shape).to(self.logits.dtype) / 255

    @property
    def mean(self):
        levels = torch.arange(256, dtype=self.logits.dtype, device=self.logits.device)
        return (torch.softmax(self.logits, -1) * levels).sum(-1) / 255


class Categorical256(nn.Module):
    """``x_i`` one of 256 grey levels k/255, a categorical per pixel: 256 decoder outputs each, laid
    out channel-major (output ``l * D + i`` is level l's logit at pixel i, as a conv decoder gives)."""

    outputs_per_dim = 256

    def __init__(self, x_dim: int):
        super().__init__()

    def forward(self, out: torch.Tensor):
        return GreyLevelsDistribution(out.reshape(out.shape[:-1] + (256, -1)).transpose(-1, -2))

    def output_for_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """Logits putting mass 1 - m on level 0 and m on level 255 (the rest negligible: e^-30)."""
        m = clip_mean(mean)
        logits = torch.full(m.shape + (256,), -30.0, dtype=m.dtype, device=m.device)
        logits[..., 0], logits[..., 255] = torch.log1p(-m), torch.log(m)
        return logits.transpose(-1, -2).reshape(m.shape[:-1] + (-1,))


def make_likelihood(name: str, x_dim: int) -> nn.Module:
    from ppl_vae.registry import LIKELIHOODS

    if name not in LIKELIHOODS:
        raise ValueError(LIKELIHOODS.unknown(name))
    return LIKELIHOODS[name](x_dim)
