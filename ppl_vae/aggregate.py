r"""Does the aggregate posterior match the prior? ELBO surgery and tests of normality.

The aggregate posterior is :math:`q(z) = \frac{1}{N}\sum_n q(z \mid x_n)`. The rate splits
(Hoffman & Johnson 2016) as

.. math::

    \mathbb{E}_{x}\,\mathrm{KL}(q(z \mid x)\,\|\,p(z)) = I_q(x; z) + \mathrm{KL}(q(z)\,\|\,p(z)),

the information the code carries about x plus the mismatch of q(z) with the prior.
The tests compare one draw of z per data point (a sample of q(z)) with N(0, I): MMD
with a permutation p-value, Mardia's skewness and kurtosis, and Kolmogorov–Smirnov
tests of the radii ||z|| and of pairwise distances ||z_i - z_j|| / sqrt(2), both
chi-distributed with d degrees of freedom under N(0, I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .sites import site_terms


def _single_latent(model, guide, x):
    t = site_terms(model, guide, x, num_particles=1)
    if len(t.latent) != 1:
        raise ValueError(f"aggregate-posterior diagnostics need a guide with one latent site; this one has {t.latent}")
    name = t.latent[0]
    return t, name


@torch.no_grad()
def aggregate_samples(model, guide, x: torch.Tensor) -> torch.Tensor:
    """One z ~ q(z | x_n) per data point: a sample of the aggregate posterior, ``(N, d)``."""
    t, name = _single_latent(model, guide, x)
    z = t.guide_trace.nodes[name]["value"]
    return z.reshape(x.shape[0], -1)


@dataclass
class Surgery:
    """Rate = mutual information + marginal KL, nats per data point (Monte Carlo)."""

    rate: float
    mutual_information: float
    marginal_kl: float
    samples: int


@torch.no_grad()
def elbo_surgery(model, guide, x: torch.Tensor, samples_per_point: int = 4, chunk: int = 256) -> Surgery:
    r"""Estimate :math:`I_q(x;z) = \mathbb{E}[\log q(z|x) - \log q(z)]` with
    :math:`\log q(z) = \log \frac1N \sum_m q(z \mid x_m)` over the N given points, and
    :math:`\mathrm{KL}(q(z)\|p(z))` = rate - I. The estimate of I is at most log N.
    """
    t, name = _single_latent(model, guide, x)
    q_all = t.guide_trace.nodes[name]["fn"]  # q(. | x_m) for every m, batch (1, N)
    n = x.shape[0]
    rate, info = [], []
    for _ in range(samples_per_point):
        draw = site_terms(model, guide, x, num_particles=1)
        z = draw.guide_trace.nodes[name]["value"].reshape(n, -1)
        own = draw.guide_terms[name][0]  # log q(z_i | x_i)
        rate.append(own - draw.model_terms[name][0])  # against each point's own prior term
        for start in range(0, n, chunk):
            zc = z[start : start + chunk]
            c = zc.shape[0]
            # log q(z_i | x_m) for every sampled z_i and every data point m: (chunk, N)
            value = zc.reshape(c, *([1] * len(q_all.batch_shape)), zc.shape[-1]).expand(c, *q_all.batch_shape, zc.shape[-1])
            cross = q_all.log_prob(value).reshape(c, n)
            info.append(own[start : start + c] - (torch.logsumexp(cross, 1) - math.log(n)))
    r, i = torch.cat(rate).mean().item(), torch.cat(info).mean().item()
    return Surgery(rate=r, mutual_information=i, marginal_kl=r - i, samples=samples_per_point * n)


# --------------------------------------------------------------------------- tests against N(0, I)


def mmd_test(z: torch.Tensor, permutations: int = 200, seed: int = 0) -> dict:
    """MMD between z and as many N(0, I) draws, p-value by permutation (bandwidth sqrt(d)).

    With the pooled kernel matrix K, the biased MMD^2 of a split is s^T K s, s = +1/n on one
    half and -1/n on the other: one matrix product scores every permutation (a loop of
    small products stalls when torch's threads share busy cores)."""
    gen = torch.Generator().manual_seed(seed)
    z = z.detach().double().cpu()
    ref = torch.randn(z.shape, generator=gen, dtype=torch.float64)
    h = math.sqrt(z.shape[1])
    pooled = torch.cat([z, ref])
    k = torch.exp(-torch.cdist(pooled, pooled).pow(2) / (2 * h**2))
    n = z.shape[0]
    split = torch.full((2 * n,), 1.0 / n, dtype=torch.float64)
    split[n:] = -1.0 / n  # the observed split
    signs = split.repeat(permutations + 1, 1)
    for i in range(1, permutations + 1):
        signs[i, torch.randperm(2 * n, generator=gen)] = split
    mmd2 = ((signs @ k) * signs).sum(1)
    observed = mmd2[0]
    count = int((mmd2[1:] >= observed).sum())
    return {"mmd2": float(observed), "p_value": (count + 1) / (permutations + 1)}


def mardia_tests(z: torch.Tensor) -> dict:
    """Mardia's multivariate skewness (chi-square) and kurtosis (normal) tests of normality."""
    x = z.detach().double().cpu().numpy()
    n, d = x.shape
    xc = x - x.mean(0)
    s_inv = np.linalg.inv(xc.T @ xc / n)
    g = xc @ s_inv @ xc.T
    b1 = (g**3).sum() / n**2
    b2 = (np.diag(g) ** 2).mean()
    skew_stat = n * b1 / 6
    dof = d * (d + 1) * (d + 2) / 6
    kurt_z = (b2 - d * (d + 2)) / math.sqrt(8 * d * (d + 2) / n)
    return {
        "skewness": float(b1),
        "skewness_p_value": float(stats.chi2.sf(skew_stat, dof)),
        "kurtosis": float(b2),
        "kurtosis_p_value": float(2 * stats.norm.sf(abs(kurt_z))),
    }


def radius_tests(z: torch.Tensor) -> dict:
    """KS tests of ||z|| and of ||z_i - z_j|| / sqrt(2) over disjoint pairs against chi(d)."""
    x = z.detach().double().cpu().numpy()
    n, d = x.shape
    radii = np.linalg.norm(x, axis=1)
    half = n // 2
    pair = np.linalg.norm(x[:half] - x[half : 2 * half], axis=1) / math.sqrt(2)
    chi = stats.chi(d)
    return {
        "radius_ks": float(stats.kstest(radii, chi.cdf).statistic),
        "radius_p_value": float(stats.kstest(radii, chi.cdf).pvalue),
        "pairwise_ks": float(stats.kstest(pair, chi.cdf).statistic),
        "pairwise_p_value": float(stats.kstest(pair, chi.cdf).pvalue),
    }


def prior_match_tests(z: torch.Tensor, permutations: int = 200, seed: int = 0) -> dict:
    """Every test of z against N(0, I), each with its p-value (small: q(z) is not the prior)."""
    return {**mmd_test(z, permutations, seed), **mardia_tests(z), **radius_tests(z), "n": z.shape[0], "dim": z.shape[1]}
