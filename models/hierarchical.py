r"""A VAE with L stochastic layers, z_L -> ... -> z_1 -> x, each conditional a Gaussian from an MLP.

.. math::

    z_L \sim \mathcal{N}(0, I), \quad z_l \mid z_{l+1} \sim \mathcal{N}(\mu_l(z_{l+1}), \mathrm{diag}\,\sigma_l(z_{l+1})^2),
    \quad x \mid z_1 \sim p(x \mid \mathrm{dec}(z_1))

The defaults are the two-layer network of Burda et al. (2016): 100 stochastic units
with two deterministic tanh layers of 200 between them and x, 50 stochastic units
with two of 100 between them and the first layer. Sites are named ``z1`` (next to
the data) to ``zL``; pair it with :class:`ppl_vae.guides.HierarchicalGuide`. ``prior="vamp"``
puts a VampPrior on the top layer: :math:`p(z_L) = \frac1K \sum_k q(z_L \mid u_k)`, the guide's
top layer at K learned pseudo-inputs with the layers below at their means (Tomczak & Welling
2018 use a top-down guide whose q(z_L | x) is direct; this bottom-up guide needs that choice).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae import hooks
from ppl_vae.nn import MLP, GaussianHead

from .data_init import init_output_bias
from .likelihoods import make_likelihood
from .priors import NormalPrior, VampPrior

BURDA_Z_DIMS = (100, 50)
BURDA_HIDDEN = ((200, 200), (100, 100))


def check_layers(z_dims: Sequence[int], hidden: Sequence[Sequence[int]]) -> None:
    if len(z_dims) < 2:
        raise ValueError(f"a hierarchical model needs at least 2 stochastic layers, got z_dims={list(z_dims)}")
    if len(hidden) != len(z_dims):
        raise ValueError(f"hidden needs one list of widths per stochastic layer ({len(z_dims)}), got {len(hidden)}")


class HierarchicalVAE(nn.Module):
    """Args:
    x_dim: data dimension.
    z_dims: stochastic layer sizes from the data upward (z1 first).
    hidden: per layer l, the deterministic widths between layer l-1 (x for l=1) and z_l,
        listed from the lower side upward; the generative network mirrors them.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dims: Sequence[int] = BURDA_Z_DIMS,
        hidden: Sequence[Sequence[int]] = BURDA_HIDDEN,
        activation: str = "tanh",
        likelihood: str = "bernoulli",
        prior: str = "normal",
        num_components: int = 500,
    ):
        super().__init__()
        check_layers(z_dims, hidden)
        if prior not in ("normal", "vamp"):
            raise ValueError(f"the hierarchical model's top-layer prior is 'normal' or 'vamp', got '{prior}'")
        self.prior = NormalPrior(z_dims[-1]) if prior == "normal" else VampPrior(z_dims[-1], x_dim, num_components)
        self.x_dim, self.z_dims = x_dim, list(z_dims)
        self.likelihood = make_likelihood(likelihood, x_dim)
        self.decoder = MLP(z_dims[0], list(reversed(list(hidden[0]))), x_dim * self.likelihood.outputs_per_dim, activation)
        # conditionals[l] gives p(z_{l+1} | z_{l+2}) (0-based l), from the layer above downward
        self.conditionals = nn.ModuleList(
            GaussianHead(z_dims[i + 1], list(reversed(list(hidden[i + 1]))), z_dims[i], activation)
            for i in range(len(z_dims) - 1)
        )

    def attach_guide(self, guide) -> None:
        """A VampPrior reads the guide's top layer at its pseudo-inputs (``guide.posterior``)."""
        hooks.attach_guide(self.prior, guide)

    def init_from_data(self, x_train: torch.Tensor) -> str:
        """The decoder's output bias from the data (:func:`~ppl_vae.models.data_init.init_output_bias`), at z1 = 0."""
        return init_output_bias(self.decoder, x_train, self.z_dims[0], self.likelihood)

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("model", self)
        top = len(self.z_dims)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(f"z{top}", self.prior(x))
            for level in range(top - 1, 0, -1):
                loc, scale = self.conditionals[level - 1](z)
                z = pyro.sample(f"z{level}", dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
