r"""Does the aggregate posterior match the prior? ELBO surgery and tests of normality.

The aggregate posterior is :math:`q(z) = \frac{1}{N}\sum_n q(z \mid x_n)`. The rate splits
(Hoffman & Johnson 2016) as

.. math::

    \mathbb{E}_{x}\,\mathrm{KL}(q(z \mid x)\,\|\,p(z)) = I_q(x; z) + \mathrm{KL}(q(z)\,\|\,p(z)),

the information the code carries about x plus the mismatch of q(z) with the prior.
The tests compare one draw of z per data point (a sample of q(z)) with the model's prior. Against
N(0, I): MMD with a permutation p-value, Mardia's skewness and kurtosis, and Kolmogorov–Smirnov
tests of the radii ||z|| and of pairwise distances ||z_i - z_j|| / sqrt(2), both
chi-distributed with d degrees of freedom under N(0, I). Against any other prior (VampPrior,
flow, ACN): the same MMD and KS statistics as two-sample tests against draws of that prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import pyro.poutine as poutine
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
    """Rate = mutual information + marginal KL, nats per data point (Monte Carlo). ``points`` is the
    N of the mixture q(z) = 1/N sum_m q(z|x_m), so the estimate of I is at most log N; ``joint``:
    every latent site together (a guide with several sites), else the one site."""

    rate: float
    mutual_information: float
    marginal_kl: float
    samples: int
    mutual_information_se: float = float("nan")
    points: int = 0
    joint: bool = False


def _data_axis(site) -> int:
    frame = next(f for f in site["cond_indep_stack"] if f.name == "data")
    return site["value"].dim() - site["fn"].event_dim + frame.dim


def _guide_log_density(guide, x: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """log q(z | x) per row of ``x`` with every latent site held at ``values`` (rows on axis 0)."""
    from pyro import poutine

    trace = poutine.trace(poutine.condition(guide, data=values)).get_trace(x)
    total = x.new_zeros(x.shape[0])
    for name in values:
        site = trace.nodes[name]
        lp = site["fn"].log_prob(site["value"])
        frame = next(f for f in site["cond_indep_stack"] if f.name == "data")
        total = total + lp.movedim(lp.dim() + frame.dim, 0).reshape(x.shape[0], -1).sum(1)
    return total


def _per_point(site, n: int) -> torch.Tensor:
    """A site's value with the data axis first, one row per point: ``(n, *event_shape)``."""
    value = site["value"]
    return value.movedim(_data_axis(site), 0).reshape(n, *value.shape[value.dim() - site["fn"].event_dim :])


@torch.no_grad()
def elbo_surgery(model, guide, x: torch.Tensor, samples_per_point: int = 1, batch: int = 500, joint_points: int = 500) -> Surgery:
    r"""Estimate :math:`I_q(x;z) = \mathbb{E}[\log q(z|x) - \log q(z)]` with
    :math:`\log q(z) = \log \frac1N \sum_m q(z \mid x_m)` over the N given points (in minibatches of
    ``batch``: the cross densities q(z_i | x_m) are never held as one N x N block of networks), and
    :math:`\mathrm{KL}(q(z)\|p(z))` = rate - I. The estimate of I is at most log N.

    One latent site: every point of ``x``. Several sites (a hierarchy): the joint code z = (z_1, z_2,
    ...) on the first ``joint_points`` points, each q(z_i | x_m) by running the guide on x_m with
    every site held at z_i (N^2 guide passes).
    """
    probe = site_terms(model, guide, x[:2], num_particles=1)
    if len(probe.latent) > 1:
        return _joint_surgery(model, guide, x[:joint_points], probe.latent, samples_per_point)
    name = probe.latent[0]
    n = x.shape[0]

    def draw():
        return [site_terms(model, guide, x[i : i + batch], num_particles=1) for i in range(0, n, batch)]

    parts = draw()
    fns = [t.guide_trace.nodes[name]["fn"] for t in parts]  # q(. | x_m), batch shape (1, b)
    rate, info = [], []
    for i in range(samples_per_point):
        for t in parts if i == 0 else draw():
            value = t.guide_trace.nodes[name]["value"]
            z = value.reshape(-1, value.shape[-1])
            own = t.guide_terms[name][0]  # log q(z_i | x_i)
            rate.append(own - t.model_terms[name][0])  # against each point's own prior term
            c = z.shape[0]
            cross = []
            for fn in fns:  # log q(z_i | x_m) for this batch's z_i and the points m of one batch
                value = z.reshape(c, *([1] * len(fn.batch_shape)), z.shape[-1]).expand(c, *fn.batch_shape, z.shape[-1])
                cross.append(fn.log_prob(value).reshape(c, -1))
            info.append(own - (torch.logsumexp(torch.cat(cross, 1), 1) - math.log(n)))
    return _surgery(torch.cat(rate), torch.cat(info), samples_per_point, n, joint=False)


def _joint_surgery(model, guide, x: torch.Tensor, latent: list[str], samples_per_point: int) -> Surgery:
    n = x.shape[0]
    rows = max(1, (50_000 // n))  # codes per block: a block runs the guide on rows x n inputs
    rate, info = [], []
    for _ in range(samples_per_point):
        t = site_terms(model, guide, x, num_particles=1)
        own = sum(t.guide_terms[name][0] for name in latent)
        rate.append(own - sum(t.model_terms[name][0] for name in latent))
        codes = {name: _per_point(t.guide_trace.nodes[name], n) for name in latent}
        log_qz = []
        for i in range(0, n, rows):
            c = min(rows, n - i)
            values = {name: v[i : i + c].repeat_interleave(n, 0) for name, v in codes.items()}
            cross = _guide_log_density(guide, x.repeat(c, *([1] * (x.dim() - 1))), values).reshape(c, n)
            log_qz.append(torch.logsumexp(cross, 1) - math.log(n))
        info.append(own - torch.cat(log_qz))
    return _surgery(torch.cat(rate), torch.cat(info), samples_per_point, n, joint=True)


def _surgery(rate: torch.Tensor, info: torch.Tensor, samples_per_point: int, n: int, joint: bool) -> Surgery:
    se = float(info.std() / math.sqrt(info.numel())) if info.numel() > 1 else float("nan")
    r, i = rate.mean().item(), info.mean().item()
    return Surgery(r, i, r - i, samples_per_point * n, mutual_information_se=se, points=n, joint=joint)


# --------------------------------------------------------------------------- tests against N(0, I)


def mmd_test(z: torch.Tensor, permutations: int = 200, seed: int = 0, reference: torch.Tensor | None = None) -> dict:
    """MMD between z and as many draws of the prior (``reference``; default N(0, I)), p-value by
    permutation (bandwidth sqrt(d)).

    With the pooled kernel matrix K, the biased MMD^2 of a split is s^T K s, s = +1/n on one
    half and -1/n on the other: one matrix product scores every permutation (a loop of
    small products stalls when torch's threads share busy cores)."""
    gen = torch.Generator().manual_seed(seed)
    z = z.detach().double().cpu()
    ref = torch.randn(z.shape, generator=gen, dtype=torch.float64) if reference is None else reference.detach().double().cpu()
    h = math.sqrt(z.shape[1])
    pooled = torch.cat([z, ref])
    k = torch.exp(-torch.cdist(pooled, pooled).pow(2) / (2 * h**2))
    n, m = z.shape[0], ref.shape[0]
    split = torch.cat([torch.full((n,), 1.0 / n, dtype=torch.float64), torch.full((m,), -1.0 / m, dtype=torch.float64)])
    signs = split.repeat(permutations + 1, 1)
    for i in range(1, permutations + 1):
        signs[i, torch.randperm(n + m, generator=gen)] = split
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


def radius_tests(z: torch.Tensor, reference: torch.Tensor | None = None) -> dict:
    """KS tests of ||z|| and of ||z_i - z_j|| / sqrt(2) over disjoint pairs: against chi(d) (the
    N(0, I) prior), or two-sample against the same statistics of ``reference`` (draws of the prior)."""

    def statistics(points):
        x = points.detach().double().cpu().numpy()
        half = x.shape[0] // 2
        return np.linalg.norm(x, axis=1), np.linalg.norm(x[:half] - x[half : 2 * half], axis=1) / math.sqrt(2)

    radii, pair = statistics(z)
    if reference is None:
        chi = stats.chi(z.shape[1])
        radius, pairwise = stats.kstest(radii, chi.cdf), stats.kstest(pair, chi.cdf)
    else:
        ref_radii, ref_pair = statistics(reference)
        radius, pairwise = stats.ks_2samp(radii, ref_radii), stats.ks_2samp(pair, ref_pair)
    return {
        "radius_ks": float(radius.statistic),
        "radius_p_value": float(radius.pvalue),
        "pairwise_ks": float(pairwise.statistic),
        "pairwise_p_value": float(pairwise.pvalue),
    }


def prior_match_tests(z: torch.Tensor, permutations: int = 200, seed: int = 0, reference: torch.Tensor | None = None) -> dict:
    """Every test of z against the prior, each with its p-value (small: q(z) is not the prior).

    ``reference``: draws of the model's own prior where it is not N(0, I) (two-sample MMD and KS
    tests; Mardia's tests of normality then do not apply and are left out)."""
    against = {"against": "N(0, I)" if reference is None else "the model's prior (draws)"}
    normal = mardia_tests(z) if reference is None else {}
    return {
        **mmd_test(z, permutations, seed, reference),
        **normal,
        **radius_tests(z, reference),
        **against,
        "n": z.shape[0],
        "dim": z.shape[1],
    }


@torch.no_grad()
def prior_draws(model, guide, x: torch.Tensor) -> torch.Tensor | None:
    """One draw of the model's own prior of its latent site per point of ``x``, ``(N, d)``; None where
    that prior is N(0, I) (the closed-form tests apply). A prior conditioned on other codes (ACN) is
    drawn as trained: a random training code c, then z ~ p(z | c) (its ``sample_marginal``)."""
    _, name = _single_latent(model, guide, x[:2])
    prior = getattr(model, "prior", None)
    if hasattr(prior, "sample_marginal"):
        return prior.sample_marginal(x.shape[0]).reshape(x.shape[0], -1)
    site = poutine.trace(model).get_trace(x).nodes[name]  # the model alone draws its latents from the prior
    fn = site["fn"]
    base = fn.base_dist if isinstance(fn, dist.Independent) else fn
    if isinstance(base, dist.Normal) and bool((base.loc == 0).all()) and bool((base.scale == 1).all()):
        return None
    return site["value"].reshape(x.shape[0], -1)
