"""Networks used by the package's models and guides. No Pyro here."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


class MLP(nn.Sequential):
    """Fully connected network ``in_dim -> hidden... -> out_dim``; works on any leading batch dims."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; known: {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, out_dim))
        super().__init__(*layers)


def bounded_scale(raw: torch.Tensor, min_scale: float = 1e-3, max_scale: float = 1e2) -> torch.Tensor:
    """Map an unconstrained network output to a standard deviation in ``[min_scale, max_scale]``.

    ``softplus`` keeps the gradient alive for small scales and the clamp keeps
    ``log sigma`` finite, so ordinary training cannot make ``log q`` overflow.
    """
    return (nn.functional.softplus(raw) + min_scale).clamp(max=max_scale)


class GaussianHead(nn.Module):
    """Network emitting ``(loc, scale)`` of a diagonal Gaussian from its input."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"):
        super().__init__()
        self.net = MLP(in_dim, hidden, 2 * out_dim, activation)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(x).split(self.out_dim, dim=-1)
        return loc, bounded_scale(raw)
