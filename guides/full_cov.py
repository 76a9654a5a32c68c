r"""Full-covariance Gaussian amortized guide through a Cholesky factor (the "linear IAF" of
Kingma et al. 2016).

.. math::

    q_\phi(z \mid x) = \mathcal{N}\big(\mu_\phi(x),\ L_\phi(x) L_\phi(x)^\top\big),
    \quad L \text{ lower triangular, } L_{ii} > 0

The encoder emits the mean, the diagonal of L (through a bounded softplus) and its
D(D-1)/2 strictly lower entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch

from ppl_vae.nn import bounded_scale, make_encoder

from .base import OneSiteGuide


class FullCovGuide(OneSiteGuide):
    """MLP encoder emitting a mean and a Cholesky factor per data point.

    Args:
        x_dim, z_dim: data and latent dimensions.
        hidden: encoder hidden widths.
        site: name of the latent site.
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
        n_off = z_dim * (z_dim - 1) // 2
        self.encoder = make_encoder(network, x_dim, list(hidden), 2 * z_dim + n_off, activation)
        rows, cols = torch.tril_indices(z_dim, z_dim, offset=-1)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        d = self.z_dim
        out = self.encoder(x)
        loc, raw_diag, off = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        tril = torch.diag_embed(bounded_scale(raw_diag))
        if off.shape[-1]:
            tril = tril.clone()
            tril[..., self.rows, self.cols] = off
        return dist.MultivariateNormal(loc, scale_tril=tril)
