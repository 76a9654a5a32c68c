r"""Models with labels: the semi-supervised VAE (Kingma et al. 2014, M2) and the conditional VAE.

.. math::

    \text{ssvae:}\quad y \sim \mathrm{Cat}(1/C),\ z \sim \mathcal{N}(0, I),\
        x \sim \mathrm{Bernoulli}(\mathrm{dec}([z, y])) \qquad
    \text{cvae:}\quad z \sim \mathcal{N}(0, I),\ x \mid y \sim \mathrm{Bernoulli}(\mathrm{dec}([z, y]))

Both are written ``model(x, y=None)`` with y one-hot, as Pyro's semi-supervised VAE example is, but
their networks broadcast over leading sample dimensions (the labels are expanded to the latents'
batch shape before they are joined), so their particles run at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.nn import MLP

from .data_init import init_output_bias


def join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``cat([a, b], -1)`` after broadcasting their leading (sample, enumeration, batch) dimensions."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], -1)


class _LabelledDecoder(nn.Module):
    def __init__(self, x_dim: int, z_dim: int, classes: int, hidden: Sequence[int], activation: str):
        super().__init__()
        if classes < 2:
            raise ValueError(f"classes must be at least 2, got {classes}")
        self.x_dim, self.z_dim, self.classes = x_dim, z_dim, int(classes)
        self.decoder = MLP(z_dim + classes, list(reversed(list(hidden))), x_dim, activation)

    def init_from_data(self, x_train: torch.Tensor) -> str:
        """The decoder's output bias at the pixels' marginal log-odds (:func:`~ppl_vae.models.init_output_bias`)."""
        return init_output_bias(self.decoder, x_train, self.z_dim + self.classes, "bernoulli")

    def _observe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=self.decoder(join(z, y))).to_event(1), obs=x)


class SSVAE(_LabelledDecoder):
    """M2's generative model: a class y (observed when given, a latent of the guide otherwise) and a
    Gaussian style z. Args: ``x_dim``, ``z_dim``, ``classes``, ``hidden`` (decoder widths from x
    downward), ``activation``."""

    def __init__(
        self, x_dim: int = 784, z_dim: int = 50, classes: int = 10, hidden: Sequence[int] = (500,), activation: str = "softplus"
    ):
        super().__init__(x_dim, z_dim, classes, hidden, activation)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("model", self)
        with pyro.plate("data", x.shape[0]):
            prior = dist.OneHotCategorical(x.new_full((x.shape[0], self.classes), 1.0 / self.classes))
            y = pyro.sample("y", prior, obs=y)
            self._observe(x, y)


class CVAE(_LabelledDecoder):
    """A VAE conditioned on its label: p(x | y) = E_{N(z; 0, I)} p(x | z, y); every point needs y.
    Score it with :func:`ppl_vae.labels.conditioned` (log p(x | y)). Args as :class:`SSVAE`."""

    needs_labels = True

    def __init__(
        self, x_dim: int = 784, z_dim: int = 10, classes: int = 10, hidden: Sequence[int] = (400,), activation: str = "relu"
    ):
        super().__init__(x_dim, z_dim, classes, hidden, activation)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if y is None:
            raise ValueError("the conditional VAE (cvae) needs each point's label y: it models p(x | y)")
        pyro.module("model", self)
        with pyro.plate("data", x.shape[0]):
            self._observe(x, y)
