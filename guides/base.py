r"""The shape every guide with one latent site shares.

.. math::

    q_\phi(z \mid x) = \prod_n q_\phi(z_n \mid x_n), \quad \text{sampled at site ``site`` inside ``pyro.plate("data")``}

A subclass builds its network and defines :meth:`posterior`; the Pyro guide is :meth:`forward`.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn


class OneSiteGuide(nn.Module):
    """An amortized guide with one latent site ``site`` of ``z_dim`` dimensions for ``x_dim``-dimensional data.

    >>> class Linear(OneSiteGuide):  # doctest: +SKIP
    ...     def __init__(self, x_dim=784, z_dim=10, site="z"):
    ...         super().__init__(x_dim, z_dim, site)
    ...         self.net = nn.Linear(x_dim, z_dim)
    ...     def posterior(self, x):
    ...         return dist.Normal(self.net(x), 1.0).to_event(1)
    """

    def __init__(self, x_dim: int = 784, z_dim: int = 10, site: str = "z"):
        super().__init__()
        self.x_dim, self.z_dim, self.site = x_dim, z_dim, site

    def posterior(self, x: torch.Tensor):
        """q(z | x) for a batch of inputs, as a distribution with event shape ``(z_dim,)``."""
        raise NotImplementedError

    @property
    def local_head(self) -> nn.Module:
        """The module whose output per point is everything q(z|x) reads from x: the encoder (a
        subclass whose encoder post-processes its raw output names the raw part instead)."""
        encoder = self.__dict__.get("_modules", {}).get("encoder")
        if encoder is None:
            raise AttributeError(f"{type(self).__name__} has no encoder module for local_head")
        return encoder

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample(self.site, self.posterior(x))
