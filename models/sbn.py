r"""A sigmoid belief network: L layers of binary latents above binary data (Neal 1992; the
model of Mnih & Gregor 2014 and of the VIMCO paper's MNIST experiments).

.. math::

    z_L \sim \mathrm{Bernoulli}(\sigma(b_L)), \quad
    z_l \mid z_{l+1} \sim \mathrm{Bernoulli}(\sigma(W_l z_{l+1} + b_l)), \quad
    x \mid z_1 \sim \mathrm{Bernoulli}(\sigma(W_0 z_1 + b_0))

Every conditional is linear in the layer above, as in those papers. Sites ``z1`` (next to
the data) to ``zL``; pair it with :class:`ppl_vae.guides.SBNGuide`, whose sites are discrete,
so it trains with ``vimco``, ``rws``, ``tracegraph`` or ``elbo`` (score functions), not with
objectives that need reparameterised samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .data_init import init_output_bias

SBN_Z_DIMS = (200, 200, 200)


def check_sbn_layers(z_dims: Sequence[int]) -> None:
    if not z_dims or any(int(d) < 1 for d in z_dims):
        raise ValueError(f"a sigmoid belief network needs at least one layer of positive size, got z_dims={list(z_dims)}")


class SigmoidBeliefNet(nn.Module):
    """Args: ``x_dim`` binary pixels; ``z_dims`` binary layer sizes from the data upward."""

    def __init__(self, x_dim: int = 784, z_dims: Sequence[int] = SBN_Z_DIMS):
        super().__init__()
        check_sbn_layers(z_dims)
        self.x_dim, self.z_dims = x_dim, [int(d) for d in z_dims]
        self.top_logits = nn.Parameter(torch.zeros(self.z_dims[-1]))
        # down[l] maps z_{l+2} to the logits of z_{l+1} (0-based), from the top layer downward
        self.down = nn.ModuleList(nn.Linear(self.z_dims[i + 1], self.z_dims[i]) for i in range(len(self.z_dims) - 1))
        self.decoder = nn.Linear(self.z_dims[0], x_dim)

    def init_from_data(self, x_train: torch.Tensor) -> str:
        """The output bias at the pixels' marginal log-odds (:func:`~ppl_vae.models.init_output_bias`)."""
        return init_output_bias(self.decoder, x_train, self.z_dims[0], "bernoulli")

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("model", self)
        top = len(self.z_dims)
        with pyro.plate("data", x.shape[0]):
            logits = self.top_logits.expand(x.shape[:1] + self.top_logits.shape)
            z = pyro.sample(f"z{top}", dist.Bernoulli(logits=logits).to_event(1))
            for level in range(top - 1, 0, -1):
                z = pyro.sample(f"z{level}", dist.Bernoulli(logits=self.down[level - 1](z)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)
