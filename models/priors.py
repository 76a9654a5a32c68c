r"""Priors p(z) for the VAE models, chosen by name.

- ``normal``: :math:`\mathcal{N}(0, I)`.
- ``vamp``: the VampPrior (Tomczak & Welling 2018),
  :math:`p(z) = \frac{1}{K}\sum_k q(z \mid u_k)`, a mixture of the guide at K learned
  pseudo-inputs :math:`u_k`.
- ``flow``: :math:`\mathcal{N}(0, I)` pushed through learned masked autoregressive steps,
  oriented so that evaluating :math:`\log p(z)` (what training needs) is one pass.
- ``acn``: the associative compression network prior (Graves et al. 2018),
  :math:`p(z \mid c)` from a prior network, with c the code of one of the K nearest
  neighbours of x's code among the training codes (posterior means, refreshed every
  epoch). In evaluation mode (``model.eval()``) the prior is the uniform mixture over
  the K neighbours, so scores do not depend on a random draw.

Priors that read the guide (``vamp``, ``acn``) get it through :meth:`attach_guide`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from ppl_vae.hooks import HasPosterior
from ppl_vae.nn import MLP, bounded_scale


class UniformMixture(dist.TorchDistribution):
    """Equal-weight mixture over the last batch dimension of ``components`` (any distribution,
    flows included: each component sees the value expanded to its own batch position)."""

    arg_constraints: dict = {}

    def __init__(self, components, validate_args=None):
        self.components = components
        self.num = components.batch_shape[-1]
        super().__init__(components.batch_shape[:-1], components.event_shape, validate_args=False)

    @property
    def support(self):
        return self.components.support

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return UniformMixture(self.components.expand(batch_shape + (self.num,)))

    def log_prob(self, value):
        event_dims = len(self.event_shape)
        batch = torch.broadcast_shapes(value.shape[: value.dim() - event_dims], self.batch_shape)
        value = value.unsqueeze(-1 - event_dims).expand(batch + (self.num,) + self.event_shape)
        return torch.logsumexp(self.components.log_prob(value), dim=-1) - math.log(self.num)

    def sample(self, sample_shape=()):
        draws = self.components.sample(torch.Size(sample_shape))  # (..., K, *event)
        pick = torch.randint(self.num, draws.shape[: draws.dim() - len(self.event_shape) - 1], device=draws.device)
        index = pick.reshape(pick.shape + (1,) * (len(self.event_shape) + 1)).expand(pick.shape + (1,) + self.event_shape)
        return draws.gather(-1 - len(self.event_shape), index).squeeze(-1 - len(self.event_shape))


class NormalPrior(nn.Module):
    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    def forward(self, x: torch.Tensor):
        zeros = x.new_zeros(self.z_dim)
        return dist.Normal(zeros, zeros + 1.0).to_event(1)


class _GuideReader(nn.Module):
    """Holds the guide without registering it as a submodule (the guide registers its own parameters)."""

    def attach_guide(self, guide) -> None:
        if not isinstance(guide, HasPosterior):
            raise ValueError(f"the '{self.name}' prior needs a guide with a posterior(x) method; {type(guide).__name__} has none")
        object.__setattr__(self, "_guide", guide)

    @property
    def guide(self):
        guide = getattr(self, "_guide", None)
        if guide is None:
            raise RuntimeError(f"the '{self.name}' prior reads the guide: call model.attach_guide(guide) first")
        return guide


class VampPrior(_GuideReader):
    """Mixture of the guide's posteriors at ``num_components`` learned pseudo-inputs in [0, 1]."""

    name = "vamp"

    def __init__(self, z_dim: int, x_dim: int, num_components: int = 50):
        super().__init__()
        self.z_dim = z_dim
        self.pseudo_raw = nn.Parameter(0.05 + 0.01 * torch.randn(num_components, x_dim))

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        return nn.functional.hardtanh(self.pseudo_raw, 0.0, 1.0)

    def forward(self, x: torch.Tensor):
        return UniformMixture(self.guide.posterior(self.pseudo_inputs))  # components: batch (K,), event (z_dim,)


class FlowPrior(nn.Module):
    """N(0, I) through ``num_flows`` affine autoregressive steps (reversed orderings between)."""

    name = "flow"

    def __init__(self, z_dim: int, num_flows: int = 2, hidden: Sequence[int] | None = None):
        super().__init__()
        self.z_dim = z_dim
        hidden = list(hidden) if hidden is not None else [max(4 * z_dim, 32)]
        self.steps = nn.ModuleList(T.affine_autoregressive(z_dim, hidden_dims=hidden) for _ in range(num_flows))
        self.register_buffer("reverse", torch.arange(z_dim - 1, -1, -1))

    def forward(self, x: torch.Tensor):
        zeros = x.new_zeros(self.z_dim)
        transforms = []
        for i, step in enumerate(self.steps):
            if i > 0:
                transforms.append(T.Permute(self.reverse))
            transforms.append(step.inv)  # log p(z) runs each step forward: one pass, no sequential inverse
        return dist.TransformedDistribution(dist.Normal(zeros, zeros + 1.0).to_event(1), transforms)


class ACNPrior(_GuideReader):
    """Associative compression network prior: p(z | c) with c a nearest-neighbour training code."""

    name = "acn"

    def __init__(self, z_dim: int, num_neighbours: int = 5, hidden: Sequence[int] = (256,)):
        super().__init__()
        if num_neighbours < 1:
            raise ValueError(f"num_neighbours must be at least 1, got {num_neighbours}")
        self.z_dim, self.num_neighbours = z_dim, num_neighbours
        self.prior_net = MLP(z_dim, list(hidden), 2 * z_dim)
        self.register_buffer("codes", torch.zeros(0, z_dim), persistent=False)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Posterior means (the codes) of ``x``, ``(N, z_dim)``."""
        parts = []
        for start in range(0, x.shape[0], batch_size):
            q = self.guide.posterior(x[start : start + batch_size])
            try:
                parts.append(q.mean)
            except NotImplementedError:  # flow guides: the mean of 32 samples
                parts.append(q.sample((32,)).mean(0))
        return torch.cat(parts)

    def refresh(self, x_train: torch.Tensor) -> None:
        """Recompute the bank of training codes (called by the trainer at every epoch start)."""
        if x_train.shape[0] <= self.num_neighbours:
            raise ValueError(
                f"the acn prior's K={self.num_neighbours} neighbours need more training points than K (a point's own "
                f"code is not its neighbour); the training data has {x_train.shape[0]}: lower --acn-neighbours"
            )
        self.codes = self.encode(x_train)

    @torch.no_grad()
    def sample_marginal(self, n: int) -> torch.Tensor:
        """n draws of the prior as trained, mixed over the bank: c a random training code, z ~ p(z | c)."""
        c = self.codes[torch.randint(self.codes.shape[0], (n,), device=self.codes.device)]
        return self.conditional(c).sample()

    @torch.no_grad()
    def neighbours(self, codes: torch.Tensor, exclude_nearest: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact K nearest bank codes (Euclidean) of each code: ``(distances, indices)``, each ``(B, K)``.

        ``exclude_nearest`` drops the closest one: in training, a point's own code. Candidates come
        from float32 ``cdist`` (its matrix-product form is off by ~1e-4 on a 50,000-code bank), and
        are ranked by distances recomputed in float64: near-ties then fall the same way in the
        compiled and the eager step, whose check would otherwise refuse the compiled one.
        """
        if self.codes.shape[0] < self.num_neighbours + int(exclude_nearest):
            raise RuntimeError(
                f"the ACN prior holds {self.codes.shape[0]} training codes, fewer than K={self.num_neighbours}: "
                "call model.refresh(train_x) first (the trainer does, every epoch)"
            )
        k = self.num_neighbours + int(exclude_nearest)
        n_candidates = min(self.codes.shape[0], 2 * k + 8)
        candidates = torch.cdist(codes, self.codes).topk(n_candidates, dim=-1, largest=False).indices
        exact = (codes.double().unsqueeze(1) - self.codes[candidates].double()).pow(2).sum(-1).sqrt()
        dist_k, pos = exact.topk(k, dim=-1, largest=False)
        dist_k, idx = dist_k.to(codes.dtype), candidates.gather(1, pos)
        return (dist_k[:, 1:], idx[:, 1:]) if exclude_nearest else (dist_k, idx)

    def conditional(self, c: torch.Tensor):
        """p(z | c): a diagonal Gaussian from the prior network."""
        loc, raw = self.prior_net(c).split(self.z_dim, dim=-1)
        return dist.Normal(loc, bounded_scale(raw)).to_event(1)

    def forward(self, x: torch.Tensor):
        _, idx = self.neighbours(self.encode(x), exclude_nearest=self.training)
        if self.training:  # one neighbour at random, as in the paper
            pick = torch.randint(self.num_neighbours, (x.shape[0], 1), device=x.device)
            return self.conditional(self.codes[idx.gather(1, pick).squeeze(1)])
        return UniformMixture(self.conditional(self.codes[idx]))  # components: batch (B, K)

    @torch.no_grad()
    def chain(self, decode_mean, n: int, steps: int = 10) -> torch.Tensor:
        """Unconditional samples by a chain through the prior network (Graves et al. 2018):
        start at random training codes c; repeat z ~ p(z | c), x = E[x | z], c = code(x)."""
        c = self.codes[torch.randint(self.codes.shape[0], (n,), device=self.codes.device)]
        for _ in range(steps):
            x = decode_mean(self.conditional(c).sample())
            c = self.encode(x)
        return x
