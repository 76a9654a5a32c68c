r"""Amortized normalizing-flow guides: a diagonal Gaussian refined by flows conditioned on x.

.. math::

    z_0 \sim \mathcal{N}(\mu(x), \mathrm{diag}\,\sigma(x)^2), \quad z_T = f_T \circ \dots \circ f_1(z_0; h(x)),
    \quad \log q(z_T \mid x) = \log q(z_0 \mid x) - \sum_t \log \left|\det \partial f_t / \partial z_{t-1}\right|

The encoder emits ``mu``, ``sigma`` and a context vector ``h``; each flow step is one of
Pyro's conditional transforms, conditioned on ``h``:

- ``iaf``: inverse autoregressive flow (Kingma et al. 2016), MADE networks over
  (z, h) with the ordering reversed between steps;
- ``planar`` and ``radial`` (Rezende & Mohamed 2015), parameters from a network of h;
- ``householder`` (Tomczak & Welling 2016), volume-preserving reflections from h.

Planar and radial steps cannot be inverted in closed form: their log-density is known
only at their own samples, so estimators that re-evaluate ``log q`` at a detached sample
(``stl``, ``dreg``) refuse them.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from ppl_vae.nn import bounded_scale, make_encoder

from .base import OneSiteGuide

FLOWS = ("iaf", "planar", "radial", "householder")


def _make_step(flow: str, z_dim: int, context_dim: int, flow_hidden: Sequence[int]):
    hidden = list(flow_hidden)
    if flow == "iaf":
        return T.conditional_affine_autoregressive(z_dim, context_dim, hidden_dims=hidden)
    if flow == "planar":
        return T.conditional_planar(z_dim, context_dim, hidden_dims=hidden)
    if flow == "radial":
        return T.conditional_radial(z_dim, context_dim, hidden_dims=hidden)
    if flow == "householder":
        return T.conditional_householder(z_dim, context_dim, hidden_dims=hidden, count_transforms=1)
    raise ValueError(f"unknown flow '{flow}'; known: {', '.join(FLOWS)}")


class FlowHead(nn.Module):
    """q(z | h): a diagonal Gaussian from a network of ``h``, refined by ``num_flows`` conditional
    flow steps that read a context vector the same network emits (one latent layer of a guide).

    Args:
        in_dim, z_dim: input and latent dimensions.
        hidden: the network's hidden widths.
        flow: ``"iaf"``, ``"planar"``, ``"radial"`` or ``"householder"``.
        num_flows: number of flow steps.
        flow_hidden: hidden widths of each step's network (MADE for IAF).
        context_dim: size of the context vector the network emits.
        network: ``"mlp"`` or ``"conv"`` (28x28 images).
    """

    def __init__(
        self,
        in_dim: int,
        z_dim: int,
        hidden: Sequence[int],
        flow: str = "iaf",
        num_flows: int = 2,
        flow_hidden: Sequence[int] | None = None,
        context_dim: int | None = None,
        activation: str = "relu",
        network: str = "mlp",
    ):
        nn.Module.__init__(self)  # FlowGuide's OneSiteGuide parts are set by FlowGuide itself
        if flow not in FLOWS:
            raise ValueError(f"unknown flow '{flow}'; known: {', '.join(FLOWS)}")
        if num_flows < 1:
            raise ValueError(f"num_flows must be at least 1, got {num_flows}")
        self.z_dim, self.flow = z_dim, flow
        self.context_dim = context_dim or max(z_dim, 8)
        flow_hidden = list(flow_hidden) if flow_hidden is not None else [max(4 * z_dim, 32)]
        self.encoder = make_encoder(network, in_dim, list(hidden), 2 * z_dim + self.context_dim, activation)
        self.steps = nn.ModuleList(_make_step(flow, z_dim, self.context_dim, flow_hidden) for _ in range(num_flows))
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1))

    def _parts(self, h: torch.Tensor):
        d = self.z_dim
        loc, raw, context = self.encoder(h).split([d, d, self.context_dim], dim=-1)
        transforms = []
        for i, step in enumerate(self.steps):
            if self.flow == "iaf" and i > 0:
                transforms.append(T.Permute(self.reverse))  # reversed ordering between IAF steps
            transforms.append(step.condition(context))
        return loc, raw, transforms

    def posterior(self, h: torch.Tensor) -> dist.TransformedDistribution:
        loc, raw, transforms = self._parts(h)
        return dist.TransformedDistribution(dist.Normal(loc, bounded_scale(raw)).to_event(1), transforms)

    def point(self, h: torch.Tensor) -> torch.Tensor:
        """The base distribution's mean pushed through the flow: a typical code, without sampling."""
        loc, _, transforms = self._parts(h)
        for t in transforms:
            loc = t(loc)
        return loc


class FlowGuide(FlowHead, OneSiteGuide):
    """Diagonal Gaussian encoder of x followed by ``num_flows`` conditional flow steps.

    Args:
        x_dim, z_dim: data and latent dimensions.
        hidden: encoder hidden widths.
        flow: ``"iaf"``, ``"planar"``, ``"radial"`` or ``"householder"``.
        num_flows: number of flow steps.
        flow_hidden: hidden widths of each step's network (MADE for IAF).
        context_dim: size of the context vector h the encoder emits.
        network: ``"mlp"`` or ``"conv"`` (28x28 images) encoder.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 10,
        hidden: Sequence[int] = (400,),
        flow: str = "iaf",
        num_flows: int = 2,
        flow_hidden: Sequence[int] | None = None,
        context_dim: int | None = None,
        activation: str = "relu",
        site: str = "z",
        network: str = "mlp",
    ):
        super().__init__(x_dim, z_dim, hidden, flow, num_flows, flow_hidden, context_dim, activation, network)
        self.x_dim, self.site = x_dim, site
