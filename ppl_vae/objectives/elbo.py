r"""ELBO estimators written on per-point site terms: sticking the landing, analytic KL, free bits.

.. math::

    \mathcal{L}(x) = \mathbb{E}_{q}\big[\log p(x \mid z)\big] - \mathrm{KL}\big(q(z \mid x)\,\|\,p(z)\big)

``STL`` (Roeder et al. 2017) keeps the value and drops the score term
:math:`\nabla_\phi \log q_\phi(z)` at fixed z from the gradient, which leaves only
the path derivative: its variance vanishes as q approaches the exact posterior.

``FreeBitsELBO`` (Kingma et al. 2016) replaces each group's minibatch KL by
:math:`\max(\lambda, \mathrm{KL}_j)`, so no group is pushed below lambda nats;
groups are latent sites, or latent dimensions of factorised sites.
"""

from __future__ import annotations

import torch
from torch.distributions import Independent, kl_divergence

from ..sites import SiteTerms
from .importance import PerPointObjective, path_log_weights


class STL(PerPointObjective):
    """ELBO with the sticking-the-landing gradient, averaged over ``num_particles`` samples."""

    def point_surrogate(self, terms: SiteTerms):
        return terms.log_weights().mean(0), path_log_weights(terms).mean(0)


def latent_kl(terms: SiteTerms, per: str = "site", analytic: bool = False) -> dict[str, torch.Tensor]:
    """KL of each latent site per particle and point, ``(K, B)``, or ``(K, B, D)`` per dimension.

    Monte Carlo ``log q(z) - log p(z)`` at the sampled z, or the registered closed form
    when ``analytic`` (an error names the site where torch has none). Site weights
    (beta, warm-up) are applied.
    """
    out = {}
    for name in terms.latent:
        q_site, p_site = terms.guide_trace.nodes[name], terms.model_trace.nodes[name]
        q_fn, p_fn, z = q_site["fn"], p_site["fn"], q_site["value"]
        trailing = 0
        if per == "dim":
            if not (isinstance(q_fn, Independent) and isinstance(p_fn, Independent) and q_fn.reinterpreted_batch_ndims == 1):
                raise ValueError(
                    f"free bits per dimension need a factorised guide and prior at site '{name}' "
                    "(Independent over one event dimension); use free_bits_per=site for this guide"
                )
            q_fn, p_fn, trailing = q_fn.base_dist, p_fn.base_dist, 1
        if analytic:
            try:
                kl = kl_divergence(q_fn, p_fn)
            except NotImplementedError:
                raise ValueError(
                    f"no closed-form KL between the guide's {type(q_fn).__name__} and the prior's "
                    f"{type(p_fn).__name__} at site '{name}'; use a Monte Carlo objective"
                ) from None
        else:
            kl = q_fn.log_prob(z) - p_fn.log_prob(z)
        out[name] = terms.reduce(name, kl, trailing=trailing)
    return out


class FreeBitsELBO(PerPointObjective):
    """ELBO whose KL has a floor of ``free_bits`` nats per group (latent site or dimension).

    The reported bound is the ordinary ELBO; only the training surrogate uses
    ``sum_j max(lambda, KL_j)`` with ``KL_j`` averaged over the minibatch and particles.
    """

    def __init__(
        self, free_bits: float, per: str = "site", analytic: bool = False, num_particles: int = 1, max_plate_nesting=None
    ):
        if free_bits < 0:
            raise ValueError(f"free_bits must be non-negative, got {free_bits}")
        if per not in ("site", "dim"):
            raise ValueError(f"free_bits_per must be 'site' or 'dim', got '{per}'")
        super().__init__(num_particles, max_plate_nesting)
        self.free_bits, self.per, self.analytic = float(free_bits), per, analytic

    def point_surrogate(self, terms: SiteTerms):
        log_lik = terms.log_likelihood()
        clamped = log_lik.new_zeros(())
        for kl in latent_kl(terms, self.per, self.analytic).values():
            # minibatch-mean KL per group (scalar per site, (D,) per dimension), floored at lambda
            clamped = clamped + kl.mean((0, 1)).clamp(min=self.free_bits).sum()
        # the floored KL belongs to the batch as a whole: each point carries an equal share
        surrogate = log_lik.mean(0) - clamped
        return terms.log_weights().mean(0), surrogate

    def __repr__(self):
        return f"FreeBitsELBO(free_bits={self.free_bits}, per={self.per}, k={self.num_particles})"
