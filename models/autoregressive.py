r"""Autoregressive likelihoods: p(x | z) as a PixelCNN over the image's pixels, conditioned on a map
that the model's decoder network computes from z.

.. math::

    \log p(x \mid z) = \sum_i \log p(x_i \mid x_{<i}, \mathrm{dec}(z))

exact (one pass of masked convolutions); a draw runs pixel by pixel (:meth:`PixelCNN.sample`).
Binary pixels (``bernoulli``) or 256 grey levels k/255 (``categorical256``).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from ppl_vae.pixelcnn import PixelCNN

from .likelihoods import GREY_LEVELS

LEVELS = {"bernoulli": 2, "categorical256": 256}


class PixelCNNImages(dist.TorchDistribution):
    """Images (flattened, event ``(H*W,)``) under a conditional PixelCNN; batch shape: the
    conditioning outputs' ``cond.shape[:-1]`` (each row ``cond_channels * H * W`` numbers)."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, net: PixelCNN, cond: torch.Tensor, image_shape: tuple[int, int], validate_args=None):
        self.net, self.cond, self.image_shape = net, cond, tuple(image_shape)
        height, width = self.image_shape
        super().__init__(cond.shape[:-1], torch.Size([height * width]), validate_args=False)

    @property
    def support(self):
        return constraints.independent(constraints.boolean if self.net.levels == 2 else GREY_LEVELS, 1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return PixelCNNImages(self.net, self.cond.expand(batch_shape + self.cond.shape[-1:]), self.image_shape)

    def _maps(self, batch: torch.Size) -> torch.Tensor:
        return self.cond.expand(batch + self.cond.shape[-1:]).reshape(-1, self.net.cond_channels, *self.image_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        images = value.expand(batch + self.event_shape).reshape(-1, 1, *self.image_shape)
        return self.net.log_prob(images.to(self.cond.dtype), self._maps(batch)).reshape(batch)

    def sample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.batch_shape
        maps = self._maps(shape)
        return self.net.sample(self.image_shape, maps.shape[0], maps).reshape(shape + self.event_shape)

    @property
    def mean(self):
        raise NotImplementedError("an autoregressive likelihood has no closed-form mean: pictures show draws")


class PixelCNNLikelihood(nn.Module):
    """p(x | z) as a PixelCNN (``channels`` wide, ``layers`` gated blocks) over ``image_shape``; the
    decoder gives it ``cond_channels`` numbers per pixel (its conditioning map)."""

    autoregressive = True

    def __init__(
        self, x_dim: int, image_shape, likelihood: str = "bernoulli", channels: int = 32, layers: int = 5, cond_channels: int = 4
    ):
        super().__init__()
        self.image_shape = image_shape_of(x_dim, image_shape)
        if likelihood not in LEVELS:
            raise ValueError(
                f"a PixelCNN decoder models binary pixels (likelihood bernoulli) or 256 grey levels (categorical256), "
                f"not likelihood '{likelihood}'"
            )
        if cond_channels < 1:
            raise ValueError(f"a PixelCNN decoder needs cond_channels >= 1, got {cond_channels}")
        self.outputs_per_dim = cond_channels
        self.net = PixelCNN(LEVELS[likelihood], channels, layers, cond_channels)

    @property
    def activation_numbers(self) -> int:
        """Numbers the network's activations hold per image (the log p(x) chunks' memory bound)."""
        height, width = self.image_shape
        channels = self.net.first.out_channels
        return height * width * channels * (6 * len(self.net.blocks) + 4)

    def forward(self, out: torch.Tensor) -> PixelCNNImages:
        return PixelCNNImages(self.net, out, self.image_shape)


def image_shape_of(x_dim: int, image_shape) -> tuple[int, int]:
    """``(H, W)`` of grey images from the data's image shape ``(H, W)`` or ``(1, H, W)``; anything else
    is refused (a PixelCNN runs over a picture's rows)."""
    shape = tuple(image_shape) if image_shape is not None else None
    if shape is not None and len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if shape is None or len(shape) != 2 or shape[0] * shape[1] != x_dim:
        raise ValueError(
            f"a PixelCNN decoder needs grey images (an image shape (H, W) or (1, H, W)); the data's shape per point is "
            f"{image_shape if image_shape is not None else (x_dim,)}"
        )
    return shape
