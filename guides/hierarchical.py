r"""Bottom-up guide for a model with several latent layers.

.. math::

    q(z_{1:L} \mid x) = q(z_1 \mid x) \prod_{l=2}^{L} q(z_l \mid z_{l-1}[, x])

each factor a diagonal Gaussian from an MLP (Burda et al. 2016), or with ``flow="iaf"`` (etc.)
that Gaussian refined by conditional flow steps (:class:`ppl_vae.guides.flows.FlowHead`);
with ``condition_on_x`` every layer above the first also sees x.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.nn import GaussianHead

from .flows import FlowHead


class HierarchicalGuide(nn.Module):
    """Args as :class:`ppl_vae.models.HierarchicalVAE` (same ``z_dims`` and ``hidden``); ``flow``
    (``"iaf"``, ...) with ``num_flows`` steps per layer makes every factor a flow."""

    def __init__(
        self,
        x_dim: int = 784,
        z_dims: Sequence[int] = (100, 50),
        hidden: Sequence[Sequence[int]] = ((200, 200), (100, 100)),
        activation: str = "tanh",
        condition_on_x: bool = False,
        flow: str | None = None,
        num_flows: int = 2,
    ):
        super().__init__()
        from ppl_vae.models.hierarchical import check_layers

        check_layers(z_dims, hidden)
        self.x_dim, self.z_dims, self.condition_on_x = x_dim, list(z_dims), condition_on_x
        inputs = [x_dim] + [z_dims[i - 1] + (x_dim if condition_on_x else 0) for i in range(1, len(z_dims))]
        self.flow = flow
        if flow is None:
            layers = [GaussianHead(inputs[i], list(hidden[i]), z_dims[i], activation) for i in range(len(z_dims))]
        else:
            layers = [
                FlowHead(inputs[i], z_dims[i], list(hidden[i]), flow, num_flows, activation=activation)
                for i in range(len(z_dims))
            ]
        self.layers = nn.ModuleList(layers)

    def _layer(self, layer, h: torch.Tensor):
        if self.flow is None:
            loc, scale = layer(h)
            return dist.Normal(loc, scale).to_event(1)
        return layer.posterior(h)

    def _input(self, level: int, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if level > 1 and self.condition_on_x:
            return torch.cat([h, x.expand(h.shape[:-1] + x.shape[-1:])], dim=-1)
        return h

    def posterior(self, x: torch.Tensor):
        """q(z_L | x) with the layers below at their typical values (means; a flow's pushed-forward
        base mean) instead of samples: what a VampPrior on the top layer reads at its pseudo-inputs."""
        h = x
        for level, layer in enumerate(self.layers[:-1], start=1):
            h = self._input(level, h, x)
            h = layer(h)[0] if self.flow is None else layer.point(h)
        return self._layer(self.layers[-1], self._input(len(self.layers), h, x))

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            h = x
            for level, layer in enumerate(self.layers, start=1):
                h = pyro.sample(f"z{level}", self._layer(layer, self._input(level, h, x)))
