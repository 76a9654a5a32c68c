r"""ELBO estimators written on per-point site terms, and free bits as a wrapper of any of them.

.. math::

    \mathcal{L}(x) = \mathbb{E}_{q}\big[\log p(x \mid z)\big] - \mathrm{KL}\big(q(z \mid x)\,\|\,p(z)\big)

Each estimator says how it estimates every latent site's KL (:meth:`point_kl`), with the
gradient it follows:

- :class:`PointELBO`: Monte Carlo, ``log q(z|x) - log p(z)`` at the sampled z (Pyro's
  ``Trace_ELBO`` written per point).
- :class:`STL` (Roeder et al. 2017): the same value; the score term
  :math:`\nabla_\phi \log q_\phi(z)` at fixed z is dropped from the gradient, which leaves the
  path derivative, whose variance vanishes as q approaches the exact posterior.
- :class:`AnalyticELBO`: the closed-form KL where torch has one.

:class:`FreeBits` (Kingma et al. 2016) wraps any of them and replaces each group's minibatch
KL by :math:`\max(\lambda, \mathrm{KL}_j)` in the surrogate, with the wrapped estimator's own
KL gradient (so ``stl:free_bits=...`` is STL with free bits); groups are latent sites, or
latent dimensions of factorised sites. The reported bound stays the wrapped one.
"""

from __future__ import annotations

import torch
from torch.distributions import Independent, kl_divergence

from ..sites import SiteTerms
from .importance import PerPointObjective, at_fixed_sample, path_log_weights


def _per_dim(name: str, q_fn, p_fn):
    if not (isinstance(q_fn, Independent) and isinstance(p_fn, Independent) and q_fn.reinterpreted_batch_ndims == 1):
        raise ValueError(
            f"free bits per dimension need a factorised guide and prior at site '{name}' "
            "(Independent over one event dimension); use free_bits_per=site for this guide"
        )
    return q_fn.base_dist, p_fn.base_dist


def latent_kl(terms: SiteTerms, per: str = "site", analytic: bool = False, path: bool = False) -> dict[str, torch.Tensor]:
    """KL of each latent site per particle and point, ``(K, B)``, or ``(K, B, D)`` per dimension.

    Monte Carlo ``log q(z) - log p(z)`` at the sampled z; ``path``: with the guide's score term
    (every z held fixed) removed from the gradient, as STL does; ``analytic``: the registered
    closed form (an error names the site where torch has none). Site weights (beta, warm-up)
    are applied.
    """
    fixed = terms.replay_at_detached_samples(guide=True) if path else None
    out = {}
    for name in terms.latent:
        q_fn, p_fn = terms.guide_trace.nodes[name]["fn"], terms.model_trace.nodes[name]["fn"]
        z = terms.guide_trace.nodes[name]["value"]
        q_fixed = fixed.nodes[name]["fn"] if fixed is not None else None
        trailing = 0
        if per == "dim":
            q_fn, p_fn = _per_dim(name, q_fn, p_fn)
            q_fixed = q_fixed.base_dist if q_fixed is not None else None
            trailing = 1
        if analytic:
            try:
                kl = kl_divergence(q_fn, p_fn)
            except NotImplementedError:
                raise ValueError(
                    f"no closed-form KL between the guide's {type(q_fn).__name__} and the prior's "
                    f"{type(p_fn).__name__} at site '{name}'; use a Monte Carlo objective"
                ) from None
        else:
            log_q = q_fn.log_prob(z)
            if q_fixed is not None:
                score = at_fixed_sample(q_fixed, z)
                log_q = log_q - (score - score.detach())
            kl = log_q - p_fn.log_prob(z)
        out[name] = terms.reduce(name, kl, trailing=trailing)
    return out


class PointELBO(PerPointObjective):
    """The ELBO with Monte Carlo KL, averaged over ``num_particles`` samples, per point."""

    def point_surrogate(self, terms: SiteTerms):
        value = terms.log_weights().mean(0)
        return value, value

    def point_kl(self, terms: SiteTerms, per: str = "site") -> dict[str, torch.Tensor]:
        return latent_kl(terms, per)


class STL(PerPointObjective):
    """ELBO with the sticking-the-landing gradient, averaged over ``num_particles`` samples."""

    def point_surrogate(self, terms: SiteTerms):
        return terms.log_weights().mean(0), path_log_weights(terms).mean(0)

    def point_kl(self, terms: SiteTerms, per: str = "site") -> dict[str, torch.Tensor]:
        return latent_kl(terms, per, path=True)


class AnalyticELBO(PerPointObjective):
    """The ELBO with each latent site's KL in closed form (an error names a site without one)."""

    def point_surrogate(self, terms: SiteTerms):
        kl = sum(k.mean(0) for k in latent_kl(terms, analytic=True).values())
        value = terms.log_likelihood().mean(0) - kl
        return value, value

    def point_kl(self, terms: SiteTerms, per: str = "site") -> dict[str, torch.Tensor]:
        return latent_kl(terms, per, analytic=True)


class FreeBits(PerPointObjective):
    """``objective`` whose KL has a floor of ``free_bits`` nats per group (``per``: site or dim).

    The surrogate adds, per point, :math:`\\sum_j \\mathrm{KL}_j - \\max(\\lambda, \\mathrm{KL}_j)` with
    ``KL_j`` the group's mean over the minibatch and particles, estimated as ``objective`` estimates
    it: above the floor the gradient is the wrapped objective's, below it the group's KL gradient
    is gone. The bound is the wrapped objective's.
    """

    def __init__(self, objective: PerPointObjective, free_bits: float, per: str = "site"):
        if not hasattr(objective, "point_kl"):
            raise ValueError(
                f"free bits floor the KL term of an ELBO; {objective!r} has no separate KL term (use elbo, meanfield or stl)"
            )
        if free_bits < 0:
            raise ValueError(f"free_bits must be non-negative, got {free_bits}")
        if per not in ("site", "dim"):
            raise ValueError(f"free_bits_per must be 'site' or 'dim', got '{per}'")
        super().__init__(objective.num_particles, objective.max_plate_nesting)
        self.objective, self.free_bits, self.per = objective, float(free_bits), per

    def terms(self, model, guide, *args, **kwargs) -> SiteTerms:
        return self.objective.terms(model, guide, *args, **kwargs)

    def point_surrogate(self, terms: SiteTerms):
        bound, surrogate = self.objective.point_surrogate(terms)
        for kl in self.objective.point_kl(terms, self.per).values():
            group = kl.mean((0, 1))  # a scalar per site, (D,) per dimension
            surrogate = surrogate + (group - group.clamp(min=self.free_bits)).sum()
        return bound, surrogate

    def __repr__(self):
        return f"FreeBits({self.objective!r}, free_bits={self.free_bits}, per={self.per})"


def FreeBitsELBO(free_bits: float, per: str = "site", analytic: bool = False, num_particles: int = 1, max_plate_nesting=None):  # noqa: N802
    """The ELBO with free bits (the name of earlier versions): :class:`FreeBits` of :class:`PointELBO`
    (Monte Carlo KL) or of :class:`AnalyticELBO` (``analytic``)."""
    base = (AnalyticELBO if analytic else PointELBO)(num_particles, max_plate_nesting)
    return FreeBits(base, free_bits, per)
