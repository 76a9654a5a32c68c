r"""The sigmoid belief network's guide: binary layers bottom-up, each linear in the one below.

.. math::

    q(z_1 \mid x) = \mathrm{Bernoulli}(\sigma(V_1 x + c_1)), \qquad
    q(z_{l+1} \mid z_l) = \mathrm{Bernoulli}(\sigma(V_{l+1} z_l + c_{l+1}))
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.models.sbn import SBN_Z_DIMS, check_sbn_layers


class SBNGuide(nn.Module):
    """Args as :class:`ppl_vae.models.SigmoidBeliefNet` (the same ``z_dims``)."""

    def __init__(self, x_dim: int = 784, z_dims: Sequence[int] = SBN_Z_DIMS):
        super().__init__()
        check_sbn_layers(z_dims)
        self.x_dim, self.z_dims = x_dim, [int(d) for d in z_dims]
        sizes = [x_dim, *self.z_dims]
        self.up = nn.ModuleList(nn.Linear(sizes[i], sizes[i + 1]) for i in range(len(self.z_dims)))

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            h = x
            for level, layer in enumerate(self.up, start=1):
                h = pyro.sample(f"z{level}", dist.Bernoulli(logits=layer(h)).to_event(1))
