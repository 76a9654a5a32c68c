r"""The variational autoencoder's generative model as a Pyro model.

.. math::

    z \sim \mathcal{N}(0, I_d), \qquad x \mid z \sim p_\theta(x \mid \mathrm{dec}_\theta(z))

The module is the model: ``VAE(...)(x)`` runs it. The data set sits in the one
``pyro.plate("data")``; the latent site is ``"z"`` and the observed site ``"x"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.nn import MLP

from .likelihoods import make_likelihood


class VAE(nn.Module):
    """Standard-normal prior, MLP decoder and a likelihood chosen by name.

    Args:
        x_dim: data dimension (784 for flattened 28x28 images).
        z_dim: latent dimension.
        hidden: decoder hidden widths, from z upward.
        likelihood: ``"bernoulli"`` (binary data), ``"gaussian"`` (learned variance)
            or ``"continuous_bernoulli"`` (intensities in [0, 1]).
        activation: hidden nonlinearity.

    >>> model = VAE(x_dim=784, z_dim=10)
    >>> # model(x) is the Pyro model; pair it with guides.MeanFieldGuide(784, 10)
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 10,
        hidden: Sequence[int] = (400,),
        likelihood: str = "bernoulli",
        activation: str = "relu",
    ):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.likelihood = make_likelihood(likelihood, x_dim)
        self.decoder = MLP(z_dim, list(reversed(list(hidden))), x_dim * self.likelihood.outputs_per_dim, activation)

    def prior(self, x: torch.Tensor):
        zeros = x.new_zeros(self.z_dim)
        return dist.Normal(zeros, zeros + 1.0).to_event(1)

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("model", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
