r"""What the codes carry: the k-nearest-neighbour accuracy of the test codes, and the ordered coding
cost of a model whose prior is conditioned on another code (the associative compression network).

k-NN accuracy (Graves et al. 2018's measure of informative codes): each test point's code (its
posterior mean) is classified by the majority label of its k nearest other test codes (Euclidean,
leave-one-out); the labels are used for this score only.

Ordered coding cost: the test set sent in one tour, each code under the prior its predecessor's
code gives (greedy: from the first point, always on to the nearest unvisited code), the first
code under N(0, I):

.. math::

    \frac1N\Big[\mathrm{KL}(q(z \mid x_{\pi_1}) \,\|\, \mathcal N(0, I))
      + \sum_{t > 1} \mathrm{KL}(q(z \mid x_{\pi_t}) \,\|\, p(z \mid c_{\pi_{t-1}}))
      + \sum_t \mathbb{E}_q[-\log p(x_{\pi_t} \mid z)]\Big]

nats per image, an upper bound on what sending the set in that order costs (the order itself is
implied by the codes, so it is not sent).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import kl_divergence

KL_SAMPLES = 64  # Monte Carlo KL where no closed form is registered


@torch.no_grad()
def knn_accuracy(codes: torch.Tensor, labels: torch.Tensor, k: int = 5, chunk: int = 1000) -> dict:
    """Leave-one-out k-NN accuracy of ``codes`` ``(N, d)`` with ``labels`` ``(N,)``, with its binomial SE."""
    n = codes.shape[0]
    if n <= k:
        raise ValueError(f"k-NN accuracy with k={k} needs more than {k} codes, got {n}")
    codes, labels = codes.float(), labels.to(codes.device).long()
    classes = int(labels.max()) + 1
    correct = 0
    for start in range(0, n, chunk):
        d = torch.cdist(codes[start : start + chunk], codes)
        d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = math.inf  # not its own neighbour
        idx = d.topk(k, dim=1, largest=False).indices
        votes = torch.nn.functional.one_hot(labels[idx], classes).sum(1).float()
        votes += 1e-3 * torch.nn.functional.one_hot(labels[idx[:, 0]], classes)  # ties: the nearest one's label
        correct += int((votes.argmax(1) == labels[start : start + chunk]).sum())
    acc = correct / n
    chance = float(torch.bincount(labels).max()) / n
    return {"knn_accuracy": acc, "knn_accuracy_se": math.sqrt(acc * (1 - acc) / n), "k": k, "points": n, "majority_class": chance}


@torch.no_grad()
def greedy_tour(codes: torch.Tensor) -> torch.Tensor:
    """An order of the codes: from the first, always on to the nearest code not yet visited."""
    n = codes.shape[0]
    visited = torch.zeros(n, dtype=torch.bool, device=codes.device)
    order = torch.empty(n, dtype=torch.long)
    current = 0
    for t in range(n):
        order[t] = current
        visited[current] = True
        if t + 1 < n:
            d = (codes - codes[current]).pow(2).sum(1).masked_fill(visited, math.inf)
            current = int(d.argmin())
    return order


def _kl(q, p) -> torch.Tensor:
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        z = q.sample((KL_SAMPLES,))
        return (q.log_prob(z) - p.log_prob(z)).mean(0)


@torch.no_grad()
def ordered_coding_cost(prior, guide, x: torch.Tensor, distortion_per_point: torch.Tensor, batch: int = 1000) -> dict:
    """The ordered coding cost (module docstring) of ``x`` under a conditional ``prior`` (with
    ``encode(x)`` and ``conditional(c)``: the ACN prior) and the guide's ``posterior(x)``;
    ``distortion_per_point``: each point's ``E_q[-log p(x|z)]``. Nats per image."""
    codes = prior.encode(x)
    order = greedy_tour(codes).to(x.device)
    kls = []
    for start in range(0, x.shape[0], batch):
        idx = order[start : start + batch]
        prev = order[(torch.arange(start, start + idx.shape[0], device=x.device) - 1).clamp(min=0)]
        kls.append(_kl(guide.posterior(x[idx]), prior.conditional(codes[prev])))
    kl = torch.cat(kls)
    q_first = guide.posterior(x[order[:1]])
    loc = torch.zeros_like(codes[:1])
    first = float(_kl(q_first, dist.Normal(loc, torch.ones_like(loc)).to_event(1))[0])
    rate = (kl[1:].sum() + first) / x.shape[0]
    distortion = float(distortion_per_point.mean())
    return {
        "ordered_coding_cost": float(rate) + distortion,
        "ordered_rate": float(rate),
        "distortion": distortion,
        "first_code_nats": first,
        "points": x.shape[0],
        "tour": "greedy nearest unvisited neighbour from the first test point; each code under p(z | predecessor's code)",
    }
