r"""A deterministic encoder as a guide: a point mass at the network's code.

.. math::

    q_\phi(z \mid x) = \delta\big(z - \mu_\phi(x)\big)

For the autoencoders of :mod:`ppl_vae.objectives.aggregate` (WAE, SWAE, CWAE, the sparse AE).
A point mass has no density, so such a pair has no importance-sampling estimate of log p(x):
:func:`ppl_vae.log_px` refuses it and the reports give reconstruction error and the
aggregate-posterior tests instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch

from ppl_vae.nn import make_encoder

from .base import OneSiteGuide


class DeterministicGuide(OneSiteGuide):
    """MLP (or conv) encoder whose output is the code itself (args as :class:`MeanFieldGuide`)."""

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
        self.encoder = make_encoder(network, x_dim, list(hidden), z_dim, activation)

    def posterior(self, x: torch.Tensor):
        return dist.Delta(self.encoder(x), event_dim=1)
