r"""The reference beside every cell of ``reproduce_iwae.py``: Burda et al.'s networks trained by a
plain PyTorch loop, no Pyro, every part written out here.

Same networks as the package's cell (built in the same order, so the same seed gives the same
initial weights), the same data-informed initialisation of the decoder's output bias, Adam
(0.9, 0.999, eps 1e-4), minibatch 20, the schedule's learning rates per pass, and the training
images binarised afresh every pass. The bound per point, with z_k = mu + sigma * eps_k:

.. math::

    \log w_k = \log p(x \mid z_k) + \log p(z_k) - \log q(z_k \mid x), \qquad
    \text{iwae: } \log \tfrac1K \textstyle\sum_k w_k, \quad \text{elbo: } \tfrac1K \sum_k \log w_k

and the loss is minus its sum over the minibatch (what the package's step differentiates). It is
scored by the package's ``log_px`` on the same test images, after its weights are copied into the
package's modules (which checks, shape by shape, that the networks are the same).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MIN_SCALE, MAX_SCALE = 1e-3, 1e2  # sigma = softplus(raw) + 1e-3, at most 100: the package's bounds
MEAN_CLIP = 1e-3  # the output bias starts at the log-odds of the pixel means clipped to [1e-3, 1 - 1e-3]


def tanh_mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


class DiagonalGaussian(nn.Module):
    """(mu, sigma) of a diagonal Gaussian from a tanh MLP whose last layer emits [mu, raw sigma]."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.dim = sizes[-1]
        self.net = tanh_mlp([*sizes[:-1], 2 * sizes[-1]])

    def forward(self, h):
        loc, raw = self.net(h).split(self.dim, dim=-1)
        return loc, (F.softplus(raw) + MIN_SCALE).clamp(max=MAX_SCALE)


def normal_log_prob(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


class Reference(nn.Module):
    """1 layer: x-200-200-z(50), decoder mirrored; 2 layers: x-200-200-z1(100)-100-100-z2(50)."""

    def __init__(self, layers: int):
        super().__init__()
        self.layers = layers
        # the model's modules first, then the guide's, as the package builds them
        if layers == 1:
            self.decoder = tanh_mlp([50, 200, 200, 784])
            self.prior_of_z1 = nn.ModuleList()
            self.encoders = nn.ModuleList([DiagonalGaussian([784, 200, 200, 50])])
        else:
            self.decoder = tanh_mlp([100, 200, 200, 784])
            self.prior_of_z1 = nn.ModuleList([DiagonalGaussian([50, 100, 100, 100])])  # p(z1 | z2)
            self.encoders = nn.ModuleList([DiagonalGaussian([784, 200, 200, 100]), DiagonalGaussian([100, 100, 100, 50])])

    def model_parameters(self) -> list[nn.Parameter]:
        return [*self.decoder.parameters(), *self.prior_of_z1.parameters()]

    def guide_parameters(self) -> list[nn.Parameter]:
        return list(self.encoders.parameters())

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k | x) for k reparameterised draws per point, shape (k, B)."""
        h, log_q, zs = x, 0.0, []
        for encoder in self.encoders:  # bottom-up: q(z1 | x), then q(z2 | z1)
            loc, scale = encoder(h)
            z = loc + scale * torch.randn((k, *loc.shape) if not zs else loc.shape, device=x.device)
            log_q = log_q + normal_log_prob(z, loc, scale)
            zs.append(z)
            h = z
        log_p = normal_log_prob(zs[-1], torch.zeros_like(zs[-1]), torch.ones_like(zs[-1]))
        if self.layers == 2:
            loc, scale = self.prior_of_z1[0](zs[1])
            log_p = log_p + normal_log_prob(zs[0], loc, scale)
        logits = self.decoder(zs[0])
        log_p = log_p - F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        return log_p - log_q

    @torch.no_grad()
    def init_from_data(self, x_train: torch.Tensor) -> None:
        """The decoder's output bias such that sigmoid(decoder(0)) is the pixel means (clipped)."""
        out = self.decoder[-1]
        out.bias.zero_()
        rest = self.decoder(torch.zeros(1, self.decoder[0].in_features))[0]  # what the layers below add at z = 0
        mean = (x_train.sum(0, dtype=torch.float64) / x_train.shape[0]).float()
        out.bias.copy_(torch.logit(mean.clamp(MEAN_CLIP, 1 - MEAN_CLIP)) - rest)


def bound(log_w: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "iwae":
        return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
    return log_w.mean(0)


def parse_objective(spec: str) -> tuple[str, int]:
    """``iwae:k=5`` -> ("iwae", 5); ``elbo`` -> ("elbo", 1)."""
    name, _, params = spec.partition(":")
    k = int(params.split("=")[1]) if params else 1
    if name not in ("elbo", "iwae"):
        raise ValueError(f"the plain-PyTorch reference trains elbo and iwae cells, not '{spec}'")
    return name, k


def lr_at(schedule: list, epoch: int) -> float:
    """The learning rate of pass ``epoch`` (0-based) under [[passes, lr], ...]."""
    for passes, lr in schedule:
        if epoch < passes:
            return lr
        epoch -= passes
    return schedule[-1][1]


def train(reference: Reference, train_x, objective: str, passes: int, schedule: list, seed: int, out: Path,
          minutes: float = 0, data_init: bool = True, log=print) -> bool:  # fmt: skip
    """Train to ``passes`` passes from ``out/checkpoint.pt`` if there is one (written at every
    pass's end: a piece stopped by ``minutes`` resumes exactly). True when the passes are done."""
    kind, k = parse_objective(objective)
    optimizer = torch.optim.Adam(reference.parameters(), lr=schedule[0][1], betas=(0.9, 0.999), eps=1e-4)
    path = out / "checkpoint.pt"
    if path.exists():
        state = torch.load(path, weights_only=False)
        reference.load_state_dict(state["params"])
        optimizer.load_state_dict(state["optimizer"])
        done, seconds, data_init_record = state["passes"], state["seconds"], state["data_init"]
        torch.set_rng_state(state["rng"])
    else:
        torch.manual_seed(seed + 1)  # the draws (not the weights, built under the cell's seed)
        if data_init:
            reference.init_from_data(train_x)
        done, seconds, data_init_record = 0, 0.0, data_init
    start = time.monotonic()
    while done < passes:
        if minutes and time.monotonic() - start > 60 * minutes:
            return False
        began = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(schedule, done)
        x = torch.bernoulli(train_x)  # binarised afresh every pass
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed * 100_003 + done))
        total = 0.0
        for i in range(0, x.shape[0], 20):
            xb = x[order[i : i + 20]]
            loss = -bound(reference.log_weights(xb, k), kind).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        done += 1
        seconds += time.perf_counter() - began
        log(f"reference: pass {done} of {passes}, training loss {total / x.shape[0]:.2f} nats per image")
        state = {"params": reference.state_dict(), "optimizer": optimizer.state_dict(), "passes": done,
                 "seconds": seconds, "data_init": data_init_record, "rng": torch.get_rng_state()}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        torch.save(state, out / "checkpoint.tmp")
        (out / "checkpoint.tmp").replace(path)
    return True


def copy_into(reference: Reference, model: nn.Module, guide: nn.Module) -> None:
    """The reference's weights into the package's pair, parameter by parameter in build order."""
    for mine, theirs in ((reference.model_parameters(), list(model.parameters())),
                         (reference.guide_parameters(), list(guide.parameters()))):  # fmt: skip
        if [p.shape for p in mine] != [p.shape for p in theirs]:
            raise AssertionError("the reference's networks are not the package's cell's")
        with torch.no_grad():
            for a, b in zip(mine, theirs):
                b.copy_(a)
