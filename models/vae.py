r"""The variational autoencoder's generative model as a Pyro model.

.. math::

    z \sim p(z), \qquad x \mid z \sim p_\theta(x \mid \mathrm{dec}_\theta(z))

The module is the model: ``VAE(...)(x)`` runs it. The data set sits in the one
``pyro.plate("data")``; the latent site is ``"z"`` and the observed site ``"x"``.
The prior is chosen by name (see :mod:`ppl_vae.models.priors`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from torch import nn

from ppl_vae import hooks
from ppl_vae.nn import ConvDecoder, make_decoder
from ppl_vae.registry import PRIORS

from .autoregressive import PixelCNNLikelihood
from .data_init import init_output_bias
from .likelihoods import make_likelihood
from .priors import ACNPrior

DECODERS = ("factorized", "pixelcnn")


class VAE(nn.Module):
    """A prior, a decoder network and a likelihood, each chosen by name.

    Args:
        x_dim: data dimension (784 for flattened 28x28 images).
        z_dim: latent dimension.
        hidden: decoder hidden widths, from x downward (mirrors the encoder's).
        likelihood: ``"bernoulli"`` (binary data), ``"gaussian"`` (learned variance)
            or ``"continuous_bernoulli"`` (intensities in [0, 1]).
        prior: ``"normal"``, ``"vamp"``, ``"flow"`` or ``"acn"``; ``prior_kwargs`` go to it.
        network: ``"mlp"`` or ``"conv"`` (28x28 images) decoder.
        decoder: ``"factorized"`` (the network's outputs are p(x | z)'s parameters, pixels
            independent given z) or ``"pixelcnn"`` (the outputs condition a PixelCNN over the
            pixels, :mod:`ppl_vae.models.autoregressive`; ``pixelcnn`` holds its channels, layers
            and cond_channels; needs ``image_shape``).

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
        prior: str = "normal",
        prior_kwargs: dict | None = None,
        network: str = "mlp",
        decoder: str = "factorized",
        pixelcnn: dict | None = None,
        image_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(PRIORS.unknown(prior))
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder '{decoder}'; known: {', '.join(DECODERS)}")
        if pixelcnn and decoder != "pixelcnn":
            raise ValueError("pixelcnn options describe the PixelCNN decoder: give decoder='pixelcnn' too")
        self.x_dim, self.z_dim = x_dim, z_dim
        if decoder == "pixelcnn":
            self.likelihood = PixelCNNLikelihood(x_dim, image_shape, likelihood, **(pixelcnn or {}))
        else:
            self.likelihood = make_likelihood(likelihood, x_dim)
        self.decoder = make_decoder(
            network, z_dim, list(reversed(list(hidden))), x_dim * self.likelihood.outputs_per_dim, activation
        )
        kwargs = dict(prior_kwargs or {})
        if prior == "vamp":
            kwargs.setdefault("x_dim", x_dim)
        self.prior = PRIORS[prior](z_dim, **kwargs)

    def attach_guide(self, guide) -> None:
        """Give a prior that reads the guide (vamp, acn) its guide; a no-op for the others."""
        hooks.attach_guide(self.prior, guide)

    def refresh(self, x_train: torch.Tensor) -> None:
        """Per-epoch refresh of data-dependent state (the ACN code bank); the trainer calls it."""
        hooks.refresh(self.prior, x_train)

    def init_from_data(self, x_train: torch.Tensor) -> str:
        """The decoder's output bias from the data (:func:`~ppl_vae.models.data_init.init_output_bias`)."""
        if isinstance(self.decoder, ConvDecoder):
            return "not applied: the conv decoder's last layer has one bias per channel, not one per pixel"
        if isinstance(self.likelihood, PixelCNNLikelihood):
            return "not applied: the PixelCNN decoder's output layer has one bias per level, not one per pixel"
        return init_output_bias(self.decoder, x_train, self.z_dim, self.likelihood)

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("model", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z); one draw for a PixelCNN decoder (no closed-form mean)."""
        p = self.likelihood(self.decoder(z))
        return p.sample() if getattr(self.likelihood, "autoregressive", False) else p.mean

    @torch.no_grad()
    def sample_images(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """Means of p(x | z) at n unconditional draws; the ACN prior samples by its chain."""
        if isinstance(self.prior, ACNPrior):
            return self.prior.chain(self.decode_mean, n)
        return self.decode_mean(self.prior(like[:1]).sample((n,)).reshape(n, self.z_dim))
