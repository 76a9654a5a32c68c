"""What the codes carry: k-NN accuracy (by hand), the greedy tour, the ordered coding cost against
its sum written out, and the tests of q(z) against the model's own prior (VampPrior, flow, ACN)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae.aggregate import prior_draws, prior_match_tests
from ppl_vae.codes import greedy_tour, knn_accuracy, ordered_coding_cost
from ppl_vae.pair import build_pair


def test_knn_accuracy_counts_leave_one_out_majorities():
    codes = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [0.15]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])  # the last one sits among the 0s: misclassified
    r = knn_accuracy(codes, labels, k=3, chunk=2)
    assert r["knn_accuracy"] == pytest.approx(6 / 7)
    assert r["knn_accuracy_se"] == pytest.approx(math.sqrt(6 / 7 * 1 / 7 / 7))
    assert r["majority_class"] == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="needs more than 3 codes"):
        knn_accuracy(codes[:3], labels[:3], k=3)


def test_greedy_tour_walks_to_the_nearest_unvisited_code():
    codes = torch.tensor([[0.0], [10.0], [1.0], [3.0], [-1.5]])
    assert greedy_tour(codes).tolist() == [0, 2, 3, 4, 1]  # 0 -> 1.0 -> 3.0 -> -1.5 (4.5 away, 10 is 7) -> 10


class _ToyPrior:
    """p(z | c) = N(c + 1, 0.5^2 I); codes are the posterior means."""

    def __init__(self, guide):
        self.guide = guide

    def encode(self, x):
        return self.guide.posterior(x).mean

    def conditional(self, c):
        return dist.Normal(c + 1.0, 0.5 * torch.ones_like(c)).to_event(1)


class _ToyGuide:
    def posterior(self, x):
        return dist.Normal(x, 0.3 * torch.ones_like(x)).to_event(1)


def _kl_normal(m1, s1, m2, s2):
    return (math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5).sum()


def test_ordered_coding_cost_is_the_tour_sum_of_kl_terms_plus_distortion():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    distortion = torch.tensor([1.0, 2.0, 3.0, 4.0])
    guide = _ToyGuide()
    r = ordered_coding_cost(_ToyPrior(guide), guide, x, distortion)
    order = [0, 2, 3, 1]  # from (0,0): (1,0) at 1, then (1,1) at 1, then (3,0)
    first = _kl_normal(x[0], 0.3, torch.zeros(2), 1.0)
    rest = sum(_kl_normal(x[order[t]], 0.3, x[order[t - 1]] + 1.0, 0.5) for t in range(1, 4))
    assert r["first_code_nats"] == pytest.approx(float(first), rel=1e-5)
    assert r["ordered_rate"] == pytest.approx(float(first + rest) / 4, rel=1e-5)
    assert r["ordered_coding_cost"] == pytest.approx(float(first + rest) / 4 + 2.5, rel=1e-5)


def _pair(prior, **prior_kwargs):
    pyro.set_rng_seed(0)
    small = {"z_dim": 2, "hidden": (16,)}
    spec = {"model": "vae", "guide": "mean_field", "model_kwargs": {**small, "prior": prior, "prior_kwargs": prior_kwargs},
            "guide_kwargs": small}  # fmt: skip
    return build_pair(spec, 64)


def _x(n, seed=0):
    return torch.bernoulli(torch.rand(n, 64, generator=torch.Generator().manual_seed(seed)))


def test_the_standard_normal_prior_keeps_the_closed_form_tests():
    model, guide = _pair("normal")
    assert prior_draws(model, guide, _x(10)) is None


@pytest.mark.parametrize("prior", ["vamp", "flow", "acn"])
def test_codes_drawn_from_the_models_own_prior_pass_and_n01_codes_do_not(prior):
    """Draws of the prior itself pass the two-sample tests (p > 0.001 each); N(0, I) codes do not pass
    every one of them (the learned prior's draws are far from N(0, I) after the nudge below)."""
    model, guide = _pair(prior, **({"num_neighbours": 2} if prior == "acn" else {}))
    with torch.no_grad():  # move each prior away from N(0, I): the encoder's means shift by 3, or the flow's loc
        for m in guide.modules():
            if isinstance(m, nn.Linear):
                last = m
        last.bias[:2] += 3.0
        if prior == "flow":
            for p in model.prior.parameters():
                p.mul_(3.0)
    x = _x(400)
    if prior == "acn":
        model.refresh(x)
    draws = prior_draws(model, guide, x)
    assert draws is not None and draws.shape == (400, 2)
    again = prior_draws(model, guide, _x(400, seed=1))
    same = prior_match_tests(again, reference=draws)
    assert same["against"] == "the model's prior (draws)" and "skewness_p_value" not in same
    assert min(same["p_value"], same["radius_p_value"], same["pairwise_p_value"]) > 1e-3
    other = prior_match_tests(torch.randn(400, 2, generator=torch.Generator().manual_seed(2)), reference=draws)
    assert min(other["p_value"], other["radius_p_value"]) < 1e-3


def test_one_scoring_computes_the_posterior_moments_once(monkeypatch, tmp_path):
    """Active units, the k-NN codes and the traversals read the same E_q[z|x]: one pass of the guide."""
    import ppl_vae.scoring as scoring

    calls = []
    real = scoring.posterior_moments
    monkeypatch.setattr(scoring, "posterior_moments", lambda *a, **k: calls.append(a[2].shape[0]) or real(*a, **k))
    model, guide = _pair("normal")
    x = torch.rand(40, 64).round()
    report = scoring.score(model, guide, x, level="full", k=4, labels=torch.arange(40) % 2, image_shape=(8, 8), out=tmp_path)
    assert calls == [40]
    assert report["active_units"] <= 2 and report["code_knn"]["points"] == 40
    assert (tmp_path / "traversals.png").exists()
