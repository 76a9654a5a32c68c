r"""Importance-weighted bounds computed per data point, right under subsampling.

.. math::

    \mathcal{L}_K(x) = \mathbb{E}_{z_{1:K} \sim q}\Big[\log \frac{1}{K}
        \sum_k \frac{p(x, z_k)}{q(z_k \mid x)}\Big]
    \qquad
    \mathcal{L}^{\alpha}_K(x) = \mathbb{E}\Big[\frac{1}{1-\alpha} \log \frac{1}{K}
        \sum_k w_k^{1-\alpha}\Big]

``IWAE`` is Burda et al. (2016); ``RenyiBound`` is the VR bound of Li & Turner
(2016), equal to ``IWAE`` at alpha = 0 and to the ELBO as alpha -> 1. Unlike Pyro
1.9's ``RenyiELBO``, the data plate's subsample scale N/B multiplies the per-point
bound outside the log-sum-exp, and both have a ``differentiable_loss``.
"""

from __future__ import annotations

import math

import torch

from ..sites import SiteTerms, guess_max_plate_nesting, site_terms


def at_fixed_sample(fn, value: torch.Tensor) -> torch.Tensor:
    """``log fn(value)`` at a detached value, or a clear error where ``fn`` cannot evaluate it."""
    try:
        return fn.log_prob(value.detach())
    except (KeyError, NotImplementedError):  # Pyro's planar/radial flows know log q only at their own samples
        raise ValueError(
            f"this estimator (stl, dreg) evaluates log q at a detached sample, and the guide's {type(fn).__name__} "
            "cannot (a flow without an inverse, such as planar or radial); use elbo or iwae with this guide"
        ) from None


def path_only(fn, value: torch.Tensor) -> torch.Tensor:
    """``log fn(value)`` whose gradient holds only the path through ``value``, for a site whose
    distribution ``fn`` does not depend on other samples (see :func:`path_log_weights` otherwise).

    ``log q(z; phi) - [log q(sg z; phi) - sg(.)]``: same value, the score term at fixed
    z subtracted. Works for any distribution, flows included.
    """
    at_fixed = at_fixed_sample(fn, value)
    return fn.log_prob(value) - (at_fixed - at_fixed.detach())


def path_log_weights(terms: SiteTerms) -> torch.Tensor:
    r"""``log p(x, z) - log q(z | x)`` per particle and point, ``(K, B)``, with the guide's score
    term removed from the gradient.

    The score term is :math:`\partial \log q(z; \phi) / \partial \phi` with *every* z held
    fixed. In a guide such as q(z1 | x) q(z2 | z1) the parameters of q(z2 | .) depend on the
    reparameterised z1, so detaching each site's own value is not enough: the guide is run
    again at the detached samples (:meth:`SiteTerms.replay_at_detached_samples`) and its
    log-density there is what is subtracted. Its value is zero; the path derivative stays.
    """
    fixed = terms.replay_at_detached_samples(guide=True)
    out = terms.log_weights()
    for name in terms.guide_terms:
        site, value = fixed.nodes[name], terms.guide_trace.nodes[name]["value"]
        at_fixed = at_fixed_sample(site["fn"], value)
        out = out + terms.reduce(name, at_fixed - at_fixed.detach(), guide=True)
    return out


class PerPointObjective:
    """Base of objectives written on per-point log-weights ``(K, B)``.

    Subclasses define :meth:`point_surrogate` returning ``(bound, surrogate)``, each of
    shape ``(B,)``: the bound's value and a tensor with the gradient to follow (their
    values may differ: ``loss + (surrogate - surrogate.detach())`` reports the bound).
    """

    requires_reparam = True

    def __init__(self, num_particles: int = 1, max_plate_nesting: int | None = None):
        if int(num_particles) != num_particles or num_particles < 1:
            raise ValueError(f"k (number of particles) must be a positive integer, got {num_particles}")
        self.num_particles = int(num_particles)
        self.max_plate_nesting = max_plate_nesting

    def terms(self, model, guide, *args, **kwargs) -> SiteTerms:
        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
        terms = site_terms(
            model,
            guide,
            *args,
            num_particles=self.num_particles,
            max_plate_nesting=self.max_plate_nesting,
            **kwargs,
        )
        if self.requires_reparam and not terms.reparameterized:
            raise ValueError(
                f"{type(self).__name__} needs a reparameterisable guide (every guide site with "
                "rsample); for guides with discrete or non-reparameterised sites use vimco:k=K or rws:k=K (multi-sample "
                "bounds), tracegraph or elbo (score functions), or enum (sites marked for enumeration summed out)"
            )
        return terms

    def point_surrogate(self, terms: SiteTerms) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def point_bound(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The bound per data point, shape ``(B,)``, without gradient."""
        with torch.no_grad():
            bound, _ = self.point_surrogate(self.terms(model, guide, *args, **kwargs))
        return bound

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the bound summed over the data set (scaled by N/B under subsampling);
        its gradient is the estimator's."""
        terms = self.terms(model, guide, *args, **kwargs)
        bound, surrogate = self.point_surrogate(terms)
        value = bound.detach() + (surrogate - surrogate.detach())
        return -terms.data_scale * value.sum()

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def __call__(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The differentiable loss: what ``pyro.infer.SVI(model, guide, optim, loss=objective)`` calls."""
        return self.differentiable_loss(model, guide, *args, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.num_particles})"


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log(mean(exp(log_w)))`` along ``dim``, stably."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


class IWAE(PerPointObjective):
    """Importance weighted bound with ``num_particles`` vectorised samples (Burda et al. 2016)."""

    def point_surrogate(self, terms):
        bound = log_mean_exp(terms.log_weights())
        return bound, bound


class RenyiBound(PerPointObjective):
    """Renyi (VR) bound with parameter ``alpha`` != 1 (Li & Turner 2016); alpha=0 is IWAE."""

    def __init__(self, alpha: float = 0.0, num_particles: int = 2, max_plate_nesting=None):
        if alpha == 1:
            raise ValueError("alpha=1 is the ELBO: use the 'elbo' objective instead of 'vr'")
        super().__init__(num_particles, max_plate_nesting)
        self.alpha = float(alpha)

    def point_surrogate(self, terms):
        scaled = (1.0 - self.alpha) * terms.log_weights()
        bound = log_mean_exp(scaled) / (1.0 - self.alpha)
        return bound, bound

    def __repr__(self):
        return f"RenyiBound(alpha={self.alpha}, k={self.num_particles})"


class DReG(PerPointObjective):
    r"""IWAE bound with the doubly reparameterised gradient of Tucker et al. (2018).

    Value: the IWAE bound. Gradient: for the guide, :math:`\sum_k \tilde w_k^2
    \,\partial \log w_k / \partial z_k \,\partial z_k / \partial \phi` (path only); for the
    model, the ordinary :math:`\sum_k \tilde w_k \nabla_\theta \log p(x, z_k)`. The model
    is replayed once more at the detached samples to separate the two.
    """

    def point_surrogate(self, terms):
        log_w = terms.log_weights()
        bound = log_mean_exp(log_w)
        w = torch.softmax(log_w.detach(), dim=0)
        path_log_w = path_log_weights(terms)
        fixed_z = self._model_at_detached_samples(terms)
        # guide: w^2 on the path derivative; model: w on log p, undoing the w^2 the first term gave it
        surrogate = (w**2 * path_log_w).sum(0) + ((w - w**2) * fixed_z).sum(0)
        return bound, surrogate

    def _model_at_detached_samples(self, terms) -> torch.Tensor:
        """log p(x, sg z) per particle and point: gradient to the model's parameters only."""
        trace = terms.replay_at_detached_samples()
        total = 0.0
        for name in terms.model_terms:
            site = trace.nodes[name]
            total = total + terms.reduce_site(site, site["fn"].log_prob(site["value"]))
        return total
