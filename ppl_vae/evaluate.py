r"""Scoring a model/guide pair per data point besides log p(x) (:mod:`ppl_vae.importance_sampling`):
the ELBO with its rate and distortion, the guide's means, and active units.

.. math::

    \mathrm{ELBO}(x) = -\big(\underbrace{\mathbb{E}_q[\log q(z \mid x) - \log p(z)]}_{\text{rate}}
        + \underbrace{-\mathbb{E}_q[\log p(x \mid z)]}_{\text{distortion}}\big)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .sites import guess_max_plate_nesting, site_terms


def _batches(x: torch.Tensor, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


@dataclass
class BoundTerms:
    """ELBO pieces in nats per data point: ``elbo = -distortion - rate``; ``rate_per_point`` and
    ``distortion_per_point`` hold each point's (averaged over the samples), on the CPU."""

    elbo: float
    rate: float
    distortion: float
    n: int
    rate_per_point: torch.Tensor | None = field(default=None, repr=False)
    distortion_per_point: torch.Tensor | None = field(default=None, repr=False)


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
    rate_points, dist_points = torch.cat(rate), torch.cat(dist)
    r, d = rate_points.mean().item(), dist_points.mean().item()
    return BoundTerms(-(r + d), r, d, x.shape[0], rate_points.cpu(), dist_points.cpu())


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
    """Latent dimensions u with Cov_x(E_q[u | x]) > ``threshold`` (Burda et al. 2016), per site and in
    total, and ``dims``: how many latent dimensions there are."""
    means = posterior_means(model, guide, x, k=k)
    counts = {name: int((m.var(0) > threshold).sum()) for name, m in means.items()}
    counts["total"] = sum(counts.values())
    counts["dims"] = sum(m.shape[1] for m in means.values())
    return counts
