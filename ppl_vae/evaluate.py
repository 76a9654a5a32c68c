r"""Scoring a model/guide pair per data point besides log p(x) (:mod:`ppl_vae.importance_sampling`):
the ELBO with its rate and distortion, the guide's means, and active units.

.. math::

    \mathrm{ELBO}(x) = -\big(\underbrace{\mathbb{E}_q[\log q(z \mid x) - \log p(z)]}_{\text{rate}}
        + \underbrace{-\mathbb{E}_q[\log p(x \mid z)]}_{\text{distortion}}\big)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro.poutine as poutine
import torch

from .sites import found_one_at_a_time, guess_max_plate_nesting, site_terms, vectorized


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
def posterior_moments(model, guide, x: torch.Tensor, k: int = 50, batch_size: int = 500) -> dict[str, tuple]:
    """``(E_q[z | x], sd_q[z | x])`` per latent site, each ``(N, prod(event_shape))``: from the guide's
    own mean and variance where its distribution has them (averaged over ``k`` draws of the sites
    before it), else from ``k`` samples."""
    mpn = guess_max_plate_nesting(model, guide, (x[:1],), {})
    out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    one_at_a_time = found_one_at_a_time(model, guide, x)
    latent = None if one_at_a_time else site_terms(model, guide, x[:1], max_plate_nesting=mpn).latent
    particle_dim = -mpn - 1
    for xb in _batches(x, batch_size):
        if one_at_a_time:
            for name, moments in _moments_one_at_a_time(model, guide, xb, k, mpn).items():
                out.setdefault(name, []).append(moments)
            continue
        # the guide alone: the moments are q's, and the model's likelihood (a PixelCNN's, say) costs k passes
        trace = poutine.trace(vectorized(guide, k, particle_dim)).get_trace(xb)
        for name in latent:
            site = trace.nodes[name]
            value, batch_dims = site["value"], site["value"].dim() - site["fn"].event_dim
            data_dim = next(f.dim for f in site["cond_indep_stack"] if f.name == "data")
            p_axis, d_axis = batch_dims + particle_dim, batch_dims + data_dim
            try:  # a later site's moments are conditional on earlier draws: Var = E Var(.|draws) + Var E(.|draws)
                mean, var = site["fn"].mean.expand(value.shape), site["fn"].variance.expand(value.shape)
                var = var.mean(p_axis, keepdim=True) + mean.var(p_axis, keepdim=True, correction=0)
                mean, sd = mean.mean(p_axis, keepdim=True), var.sqrt()
            except NotImplementedError:  # flows and others without closed-form moments: use the samples
                mean, sd = value.mean(p_axis, keepdim=True), value.std(p_axis, keepdim=True)
            mean, sd = (v.movedim(d_axis, 0).reshape(xb.shape[0], -1) for v in (mean, sd))
            out.setdefault(name, []).append((mean, sd))
    return {name: (torch.cat([m for m, _ in parts]), torch.cat([s for _, s in parts])) for name, parts in out.items()}


def _moments_one_at_a_time(model, guide, xb: torch.Tensor, k: int, mpn: int) -> dict[str, tuple]:
    """:func:`posterior_moments` for a pair whose particles run one at a time: each of ``k`` draws
    gives every site's conditional mean and variance (a sample and 0 without closed forms), and
    Var = E Var(.|draws) + Var E(.|draws)."""
    means: dict[str, list[torch.Tensor]] = {}
    variances: dict[str, list[torch.Tensor]] = {}
    for _ in range(k):
        t = site_terms(model, guide, xb, num_particles=1, max_plate_nesting=mpn)
        for name in t.latent:
            site = t.guide_trace.nodes[name]
            value, batch_dims = site["value"], site["value"].dim() - site["fn"].event_dim
            data_axis = batch_dims + next(f.dim for f in site["cond_indep_stack"] if f.name == "data")
            try:
                mean, var = site["fn"].mean.expand(value.shape), site["fn"].variance.expand(value.shape)
            except NotImplementedError:
                mean, var = value, torch.zeros_like(value)
            means.setdefault(name, []).append(mean.movedim(data_axis, 0).reshape(xb.shape[0], -1))
            variances.setdefault(name, []).append(var.movedim(data_axis, 0).reshape(xb.shape[0], -1))
    out = {}
    for name in means:
        m, v = torch.stack(means[name]), torch.stack(variances[name])
        out[name] = (m.mean(0), (v.mean(0) + m.var(0, correction=0)).sqrt())
    return out


def posterior_means(model, guide, x: torch.Tensor, k: int = 50, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """E_q[z | x] per latent site, ``(N, prod(event_shape))`` (see :func:`posterior_moments`)."""
    return {name: mean for name, (mean, _) in posterior_moments(model, guide, x, k, batch_size).items()}


def active_units(model, guide, x: torch.Tensor, threshold: float = 0.01, k: int = 50, moments: dict | None = None) -> dict:
    """Latent dimensions u with Cov_x(E_q[u | x]) > ``threshold`` (Burda et al. 2016), per site and in
    total, ``dims``: how many latent dimensions there are, and ``sigma``: the encoder's standard
    deviation E_x sd_q[u | x] per dimension and site (near 0: a near-point-mass code). ``moments``:
    :func:`posterior_moments` of ``x`` already computed (else they are, with ``k`` draws)."""
    moments = posterior_moments(model, guide, x, k=k) if moments is None else moments
    counts = {name: int((m.var(0) > threshold).sum()) for name, (m, _) in moments.items()}
    counts["total"] = sum(counts.values())
    counts["dims"] = sum(m.shape[1] for m, _ in moments.values())
    counts["sigma"] = {name: sd.mean(0).tolist() for name, (_, sd) in moments.items()}
    return counts
