r"""Objectives that regularise the aggregate posterior q(z) = E_x q(z | x) of a whole batch.

.. math::

    \mathcal{L}(x_{1:B}) = \frac1B \sum_b \Big(\mathbb{E}_q \log p(x_b \mid z)
        - w_{KL}\, \mathrm{KL}(q(z \mid x_b) \,\|\, p(z))\Big) - \lambda\, D\big(q(z), p(z)\big)

with D estimated on the batch of codes the guide sampled at one latent site (the top layer,
the model's first latent site, unless ``site`` names another) against as many draws of that
site's prior. The loss is minus the sum over the batch (times N/B under subsampling), so each
point carries ``lambda * D`` once.

=============  ======  =====================================  =================================
name           w_KL    D                                       reference
=============  ======  =====================================  =================================
``infovae``    1 - a   MMD (``kernel=imq`` or ``rbf``)          Zhao et al. 2019 (InfoVAE)
``wae_mmd``    0       MMD                                      Tolstikhin et al. 2018 (WAE)
``swae``       0       sliced W2^2 (``projections``)            Kolouri et al. 2019
``cwae``       0       log of the Cramér–Wold distance to N(0,I) Tabor et al. 2018
``radial``     0       W2^2 of radii and pairwise distances     the seed discussion's proposal
                       to their chi(d) law under N(0,I)
``sparse_ae``  0       mean L1 norm of the codes                 the point-mass baseline
=============  ======  =====================================  =================================

InfoVAE's parameters in the paper, (alpha, lambda), are ``alpha`` and ``lam = alpha + lambda - 1``
here: ``lam`` is the weight of the MMD term itself, so ``infovae:lam=0`` is the ELBO. With a
deterministic guide (a ``Delta`` site) these are autoencoders with no density q(z | x): such a
pair has no log p(x) estimate (:func:`ppl_vae.log_px` says so).
"""

from __future__ import annotations

import torch

from ..sites import SiteTerms
from .divergences import KERNELS, cramer_wold2, mmd2, radial_distance, sliced_wasserstein2
from .importance import PerPointObjective

PENALTIES = ("mmd", "swd", "cw", "radial", "l1")


def latent_codes(terms: SiteTerms, site: str) -> torch.Tensor:
    """The guide's samples at ``site`` as rows ``(particles x points, event size)``."""
    node = terms.guide_trace.nodes[site]
    value, event_dim = node["value"], node["fn"].event_dim
    flat = value.reshape(value.shape[: value.dim() - event_dim] + (-1,)) if event_dim else value.unsqueeze(-1)
    return flat.reshape(-1, flat.shape[-1])


def prior_codes(terms: SiteTerms, site: str) -> torch.Tensor:
    """One draw of the model's prior at ``site`` per code, shaped as :func:`latent_codes`."""
    node = terms.model_trace.nodes[site]
    fn = node["fn"]
    value = fn.rsample() if fn.has_rsample else fn.sample()
    event_dim = fn.event_dim
    flat = value.reshape(value.shape[: value.dim() - event_dim] + (-1,)) if event_dim else value.unsqueeze(-1)
    codes = flat.reshape(-1, flat.shape[-1])
    n = latent_codes(terms, site).shape[0]
    if codes.shape[0] != n:  # a prior without the plates' batch shape: independent draws, one per code
        draws = fn.sample((n,)) if not fn.has_rsample else fn.rsample((n,))
        codes = draws.reshape(n, -1, codes.shape[-1])[:, 0]
    return codes


def top_site(terms: SiteTerms) -> str:
    """The model's first latent site: the top of a hierarchy, the only one otherwise."""
    return terms.latent[0]


def _is_standard_normal(fn) -> bool:
    base = getattr(fn, "base_dist", fn)
    if type(base).__name__ != "Normal":
        return False
    return bool((base.loc == 0).all() and (base.scale == 1).all())


class AggregatePenalized(PerPointObjective):
    """See the module docstring; ``penalty`` is one of :data:`PENALTIES`."""

    def __init__(
        self,
        penalty: str,
        lam: float,
        kl_weight: float = 0.0,
        kernel: str = "imq",
        projections: int = 50,
        site: str | None = None,
        num_particles: int = 1,
        max_plate_nesting: int | None = None,
        name: str = "",
    ):
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got '{penalty}'")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got '{kernel}'")
        if lam < 0:
            raise ValueError(f"lam (the penalty's weight) must be non-negative, got {lam}")
        if not 0 <= kl_weight <= 1:
            raise ValueError(f"the KL weight (1 - alpha) must lie in [0, 1], got {kl_weight}")
        if projections < 1:
            raise ValueError(f"projections must be at least 1, got {projections}")
        super().__init__(num_particles, max_plate_nesting)
        self.penalty, self.lam, self.kl_weight = penalty, float(lam), float(kl_weight)
        self.kernel, self.projections, self.site, self.name = kernel, int(projections), site, name or penalty
        self._normal_sites: set[str] = set()

    def divergence(self, terms: SiteTerms) -> torch.Tensor:
        """The batch's penalty D (a scalar) at the chosen site."""
        site = self.site or top_site(terms)
        if site not in terms.guide_terms:
            raise ValueError(f"{self.name}: no latent site '{site}'; the guide samples {sorted(terms.guide_terms)}")
        z = latent_codes(terms, site)
        if self.penalty == "l1":
            return z.abs().sum(-1).mean()
        if self.penalty in ("cw", "radial"):
            prior = terms.model_trace.nodes[site]["fn"]
            # checked once per site: the check reads values to the host, which a compiled step cannot
            if site not in self._normal_sites and not _is_standard_normal(prior):
                raise ValueError(
                    f"{self.name} measures the distance to N(0, I), and the prior at site '{site}' is "
                    f"{type(getattr(prior, 'base_dist', prior)).__name__}, not a standard normal; use wae_mmd or swae"
                )
            self._normal_sites.add(site)
            if self.penalty == "radial":
                return radial_distance(z)
            return torch.log(cramer_wold2(z).clamp(min=1e-12))
        prior = prior_codes(terms, site)
        if self.penalty == "mmd":
            return mmd2(z, prior, self.kernel)
        return sliced_wasserstein2(z, prior, self.projections)

    def point_surrogate(self, terms: SiteTerms):
        value = terms.log_likelihood().mean(0)
        if self.kl_weight:
            for name in terms.point_masses()[:1]:
                raise ValueError(
                    f"{self.name} keeps a KL term, and guide site '{name}' is a point mass with no density; use a "
                    "stochastic guide, or an objective without KL (wae_mmd, swae, cwae, sparse_ae)"
                )
            value = value + self.kl_weight * (terms.log_prior() - terms.log_guide()).mean(0)
        if self.lam:
            value = value - self.lam * self.divergence(terms)
        return value, value

    def __repr__(self) -> str:
        return f"{self.name}(lam={self.lam}, kl_weight={self.kl_weight}, k={self.num_particles})"


def infovae(alpha: float = 0.0, lam: float = 1000.0, kernel: str = "imq", site=None, k: int = 1, max_plate_nesting=None):
    return AggregatePenalized(
        "mmd", lam, 1.0 - alpha, kernel, site=site, num_particles=k, max_plate_nesting=max_plate_nesting, name="infovae"
    )


def wae_mmd(lam: float = 10.0, kernel: str = "imq", site=None, k: int = 1, max_plate_nesting=None):
    return AggregatePenalized(
        "mmd", lam, 0.0, kernel, site=site, num_particles=k, max_plate_nesting=max_plate_nesting, name="wae_mmd"
    )


def swae(lam: float = 10.0, projections: int = 50, site=None, k: int = 1, max_plate_nesting=None):
    return AggregatePenalized(
        "swd", lam, 0.0, projections=projections, site=site, num_particles=k, max_plate_nesting=max_plate_nesting, name="swae"
    )


def cwae(lam: float = 1.0, site=None, k: int = 1, max_plate_nesting=None):
    return AggregatePenalized("cw", lam, 0.0, site=site, num_particles=k, max_plate_nesting=max_plate_nesting, name="cwae")


def radial(lam: float = 10.0, site=None, k: int = 1, max_plate_nesting=None):
    return AggregatePenalized("radial", lam, 0.0, site=site, num_particles=k, max_plate_nesting=max_plate_nesting, name="radial")


def sparse_ae(lam: float = 0.1, site=None, k: int = 1, max_plate_nesting=None):
    return AggregatePenalized("l1", lam, 0.0, site=site, num_particles=k, max_plate_nesting=max_plate_nesting, name="sparse_ae")


NO_KL = ("wae_mmd", "swae", "cwae", "radial", "sparse_ae")  # beta and warm-up scale a KL term these do not have
