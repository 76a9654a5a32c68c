r"""Guides for the models with labels (:mod:`ppl_vae.models.labelled`).

.. math::

    \text{ssvae:}\quad q(y \mid x) = \mathrm{Cat}(\mathrm{cls}(x)),\
        q(z \mid x, y) = \mathcal{N}(\mathrm{enc}([x, y])) \qquad
    \text{cvae:}\quad q(z \mid x, y) = \mathcal{N}(\mathrm{enc}([x, y]))
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.models.labelled import join
from ppl_vae.nn import MLP, GaussianHead


class CVAEGuide(nn.Module):
    """q(z | x, y), a diagonal Gaussian from x and the one-hot label. Args as the model's."""

    needs_labels = True

    def __init__(
        self, x_dim: int = 784, z_dim: int = 10, classes: int = 10, hidden: Sequence[int] = (400,), activation: str = "relu"
    ):
        super().__init__()
        self.x_dim, self.z_dim, self.classes = x_dim, z_dim, int(classes)
        self.encoder_z = GaussianHead(x_dim + classes, list(hidden), z_dim, activation)

    def _style(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loc, scale = self.encoder_z(join(x, y))
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if y is None:
            raise ValueError("the conditional VAE's guide (cvae) needs each point's label y")
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            self._style(x, y)


class SSVAEGuide(CVAEGuide):
    """M2's guide: the classifier q(y | x) draws y for an unlabelled point (for `enum`, build it with
    ``enumerate=True`` to sum y out exactly), then q(z | x, y). Args as the model's."""

    needs_labels = False

    def __init__(
        self, x_dim: int = 784, z_dim: int = 50, classes: int = 10, hidden: Sequence[int] = (500,),
        activation: str = "softplus", enumerate: bool = False,
    ):  # fmt: skip
        super().__init__(x_dim, z_dim, classes, hidden, activation)
        self.classify = MLP(x_dim, list(hidden), classes, activation)
        self.enumerate = enumerate

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                infer = {"enumerate": "parallel"} if self.enumerate else {}
                y = pyro.sample("y", dist.OneHotCategorical(logits=self.classify(x)), infer=infer)
            self._style(x, y)
