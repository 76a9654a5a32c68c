r"""Diagonal Gaussian amortized guide (the mean-field encoder of Kingma & Welling 2014).

.. math::

    q_\phi(z \mid x) = \mathcal{N}\big(z;\ \mu_\phi(x),\ \mathrm{diag}\,\sigma_\phi(x)^2\big)
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch

from ppl_vae.nn import GaussianHead

from .base import OneSiteGuide


class MeanFieldGuide(OneSiteGuide):
    """MLP encoder emitting a mean and a bounded standard deviation per latent dimension.

    Args:
        x_dim: data dimension.
        z_dim: latent dimension (must match the model's).
        hidden: encoder hidden widths, from x upward.
        site: name of the latent site it proposes for.
        network: ``"mlp"`` or ``"conv"`` (28x28 images) encoder.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 10,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        site: str = "z",
        network: str = "mlp",
    ):
        super().__init__(x_dim, z_dim, site)
        self.encoder = GaussianHead(x_dim, list(hidden), z_dim, activation, network)

    @property
    def local_head(self):
        return self.encoder.net  # the raw (loc, unbounded scale): refinement keeps the scale's bounds

    def posterior(self, x: torch.Tensor):
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)
