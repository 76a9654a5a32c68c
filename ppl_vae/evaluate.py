r"""Scoring a model/guide pair per data point: log p(x) by importance sampling, ELBO,
rate and distortion.

.. math::

    \log \hat p(x) = \log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)},
    \quad z_k \sim q(z \mid x)

The estimate is a stochastic lower bound (the IWAE bound) that tends to log p(x)
as K grows. Work is chunked over K and over data points, so memory does not grow
with K; only a running log-sum-exp per point is kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .sites import guess_max_plate_nesting, site_terms


@dataclass
class LogPx:
    """Estimated log p(x) in nats per data point.

    ``log_px`` is the mean over points; ``log_px_se`` its standard error over the
    data points; ``mc_se`` the Monte Carlo standard error of that mean from the
    importance weights (delta method); ``k`` the number of importance samples;
    ``per_point`` the per-point estimates.
    """

    log_px: float
    log_px_se: float
    mc_se: float
    k: int
    n: int
    per_point: torch.Tensor

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("per_point")
        return d


def _batches(x: torch.Tensor, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


@torch.no_grad()
def log_px(
    model,
    guide,
    x: torch.Tensor,
    k: int = 1000,
    chunk_k: int = 100,
    batch_size: int = 500,
    progress: bool = False,
) -> LogPx:
    """Importance-sampling estimate of log p(x) per data point for any contract-following pair.

    Args:
        model, guide: Pyro model and guide, each with its data in ``pyro.plate("data")``.
        x: data, first dimension is the data point.
        k: importance samples per data point.
        chunk_k, batch_size: particles and data points evaluated at once (memory bound).
    Returns:
        :class:`LogPx` with mean, standard errors and per-point estimates.
    """
    if k < 1:
        raise ValueError(f"k (importance samples) must be at least 1, got {k}")
    if x.shape[0] == 0:
        raise ValueError("log_px needs at least one data point; x is empty")
    mpn = guess_max_plate_nesting(model, guide, (x[:1],), {})
    estimates, rel_vars = [], []
    batches = list(_batches(x, batch_size))
    for xb in tqdm(batches, desc=f"log p(x), K={k}", disable=not progress, leave=False):
        lse = torch.full((xb.shape[0],), -math.inf, device=xb.device)
        lse2 = lse.clone()
        done = 0
        while done < k:
            kc = min(chunk_k, k - done)
            lw = site_terms(model, guide, xb, num_particles=kc, max_plate_nesting=mpn).log_weights()
            lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
            lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
            done += kc
        est = lse - math.log(k)
        # Var(mean w) / (mean w)^2 = (E[w^2] / E[w]^2 - 1) / K, the delta-method variance of log p^
        rel_var = (torch.exp(lse2 - math.log(k) - 2 * est) - 1.0).clamp(min=0) / k
        estimates.append(est)
        rel_vars.append(rel_var)
    per_point = torch.cat(estimates)
    n = per_point.shape[0]
    se = float(per_point.std() / math.sqrt(n)) if n > 1 else float("nan")
    # one sample says nothing about the spread of the weights
    mc_se = float(torch.cat(rel_vars).sum().sqrt() / n) if k > 1 else float("nan")
    return LogPx(float(per_point.mean()), se, mc_se, k, n, per_point.cpu())


@dataclass
class BoundTerms:
    """ELBO pieces in nats per data point: ``elbo = -distortion - rate``."""

    elbo: float
    rate: float
    distortion: float
    n: int


@torch.no_grad()
def elbo_terms(model, guide, x: torch.Tensor, k: int = 1, batch_size: int = 500) -> BoundTerms:
    """Monte Carlo ELBO, rate ``E_q[log q(z|x) - log p(z)]`` and distortion ``-E_q[log p(x|z)]``,
    each averaged over ``k`` samples and the data points."""
    mpn = guess_max_plate_nesting(model, guide, (x[:1],), {})
    rate, dist = [], []
    for xb in _batches(x, batch_size):
        t = site_terms(model, guide, xb, num_particles=k, max_plate_nesting=mpn)
        rate.append((t.log_guide() - t.log_prior()).mean(0))
        dist.append(-t.log_likelihood().mean(0))
    r, d = torch.cat(rate).mean().item(), torch.cat(dist).mean().item()
    return BoundTerms(elbo=-(r + d), rate=r, distortion=d, n=x.shape[0])


@torch.no_grad()
def posterior_means(model, guide, x: torch.Tensor, k: int = 50, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """E_q[z | x] per latent site, ``(N, prod(event_shape))``: the guide's own mean where its
    distribution has one, else the average of ``k`` samples."""
    mpn = guess_max_plate_nesting(model, guide, (x[:1],), {})
    out: dict[str, list[torch.Tensor]] = {}
    for xb in _batches(x, batch_size):
        t = site_terms(model, guide, xb, num_particles=k, max_plate_nesting=mpn)
        for name in t.latent:
            site = t.guide_trace.nodes[name]
            value, batch_dims = site["value"], site["value"].dim() - site["fn"].event_dim
            try:
                mean = site["fn"].mean.expand(value.shape)
            except NotImplementedError:  # flows and others without a closed-form mean: use the samples
                mean = value
            data_dim = next(f.dim for f in site["cond_indep_stack"] if f.name == "data")
            p_axis, d_axis = batch_dims + t.particle_dim, batch_dims + data_dim
            mean = mean.mean(p_axis, keepdim=True).movedim(d_axis, 0)
            out.setdefault(name, []).append(mean.reshape(xb.shape[0], -1))
    return {name: torch.cat(parts) for name, parts in out.items()}


def active_units(model, guide, x: torch.Tensor, threshold: float = 0.01, k: int = 50) -> dict[str, int]:
    """Latent dimensions u with Cov_x(E_q[u | x]) > ``threshold`` (Burda et al. 2016), per site and in total."""
    means = posterior_means(model, guide, x, k=k)
    counts = {name: int((m.var(0) > threshold).sum()) for name, m in means.items()}
    counts["total"] = sum(counts.values())
    return counts
