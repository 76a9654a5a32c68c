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
    """Network emitting ``(loc, scale)`` of a diagonal Gaussian from its input (``network``: mlp or conv)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu", network: str = "mlp"):
        super().__init__()
        self.net = make_encoder(network, in_dim, hidden, 2 * out_dim, activation)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.net(x).split(self.out_dim, dim=-1)
        return loc, bounded_scale(raw)


class ConvEncoder(nn.Module):
    """28x28 images (flattened, any leading dims) -> ``out_dim`` features: two stride-2 convolutions
    (32 and 64 channels, 28 -> 14 -> 7) and a linear layer."""

    def __init__(self, out_dim: int, image_shape: tuple[int, int] = (28, 28), channels: Sequence[int] = (32, 64)):
        super().__init__()
        if tuple(image_shape) != (28, 28):
            raise ValueError(f"the convolutional networks are for 28x28 images, got {tuple(image_shape)}")
        c1, c2 = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.net(x.reshape(-1, 1, 28, 28)).reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """``in_dim`` codes (any leading dims) -> 784 outputs per channel: a linear layer to 64x7x7 and
    two stride-2 transposed convolutions (7 -> 14 -> 28)."""

    def __init__(self, in_dim: int, out_channels: int = 1, channels: Sequence[int] = (64, 32)):
        super().__init__()
        c1, c2 = channels
        self.c1 = c1
        self.fc = nn.Sequential(nn.Linear(in_dim, c1 * 7 * 7), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, out_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, self.c1, 7, 7)
        return self.net(h).reshape(*lead, -1)


def make_encoder(network: str, x_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu") -> nn.Module:
    """``"mlp"`` or ``"conv"`` (28x28 images) network from data to ``out_dim`` outputs."""
    if network == "mlp":
        return MLP(x_dim, hidden, out_dim, activation)
    if network == "conv":
        if x_dim != 784:
            raise ValueError(f"network='conv' needs 28x28 images (x_dim=784), got x_dim={x_dim}")
        return ConvEncoder(out_dim)
    raise ValueError(f"unknown network '{network}'; known: mlp, conv")


def make_decoder(network: str, z_dim: int, hidden: Sequence[int], x_dim: int, activation: str = "relu") -> nn.Module:
    """``"mlp"`` or ``"conv"`` network from codes to ``x_dim`` outputs (``hidden`` from z upward); the
    conv network gives ``x_dim / 784`` channels of a 28x28 map (channel-major when flattened)."""
    if network == "mlp":
        return MLP(z_dim, hidden, x_dim, activation)
    if network == "conv":
        if x_dim % 784:
            raise ValueError(f"network='conv' needs 28x28 images (x_dim=784), got x_dim={x_dim}")
        return ConvDecoder(z_dim, out_channels=x_dim // 784)
    raise ValueError(f"unknown network '{network}'; known: mlp, conv")
