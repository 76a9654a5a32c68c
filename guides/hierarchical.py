r"""Bottom-up guide for a model with several latent layers.

.. math::

    q(z_{1:L} \mid x) = q(z_1 \mid x) \prod_{l=2}^{L} q(z_l \mid z_{l-1}[, x])

each factor a diagonal Gaussian from an MLP (Burda et al. 2016); with
``condition_on_x`` every layer above the first also sees x.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.nn import GaussianHead


class HierarchicalGuide(nn.Module):
    """Args as :class:`ppl_vae.models.HierarchicalVAE` (same ``z_dims`` and ``hidden``)."""

    def __init__(
        self,
        x_dim: int = 784,
        z_dims: Sequence[int] = (100, 50),
        hidden: Sequence[Sequence[int]] = ((200, 200), (100, 100)),
        activation: str = "tanh",
        condition_on_x: bool = False,
    ):
        super().__init__()
        from ppl_vae.models.hierarchical import check_layers

        check_layers(z_dims, hidden)
        self.x_dim, self.z_dims, self.condition_on_x = x_dim, list(z_dims), condition_on_x
        inputs = [x_dim] + [z_dims[i - 1] + (x_dim if condition_on_x else 0) for i in range(1, len(z_dims))]
        self.layers = nn.ModuleList(GaussianHead(inputs[i], list(hidden[i]), z_dims[i], activation) for i in range(len(z_dims)))

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            h = x
            for level, layer in enumerate(self.layers, start=1):
                if level > 1 and self.condition_on_x:
                    h = torch.cat([h, x.expand(h.shape[:-1] + x.shape[-1:])], dim=-1)
                loc, scale = layer(h)
                h = pyro.sample(f"z{level}", dist.Normal(loc, scale).to_event(1))
