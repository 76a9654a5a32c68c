"""log p(x) with the model's marked discrete sites summed out inside each importance weight,
against the exact marginal of a small mixture model; and with a guide that samples y instead."""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from torch import nn

from ppl_vae import TrainConfig, Trainer, log_px
from ppl_vae.sites import site_terms

C, D, Z = 3, 3, 2


class Mixture(nn.Module):
    """y ~ Cat(pi), z ~ N(0, I), x ~ N(W z + B_y + b, sigma^2 I): p(x) = sum_y pi_y N(x | b + B_y, W W' + sigma^2 I)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.w, self.means = nn.Linear(Z, D), nn.Parameter(2 * torch.randn(C, D))
        self.encoder = nn.Linear(D, 2 * Z)
        with torch.no_grad():  # a guide as broad as the prior
            self.encoder.weight.zero_()
            self.encoder.bias.zero_()
            self.encoder.bias[Z:] = 0.7
        self.pi, self.sigma = torch.tensor([0.5, 0.3, 0.2]), 0.7

    @config_enumerate
    def model(self, x):
        pyro.module("mix", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z), 1.0).to_event(1))
            y = pyro.sample("y", dist.Categorical(self.pi))
            pyro.sample("x", dist.Normal(self.w(z) + self.means[y], self.sigma).to_event(1), obs=x)

    def guide(self, x):  # z only: y is summed out in the model
        pyro.module("mix", self)
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 0.5).to_event(1))

    @torch.no_grad()
    def sample(self, n):
        y = torch.multinomial(self.pi, n, replacement=True)
        return self.w(torch.randn(n, Z)) + self.means[y] + self.sigma * torch.randn(n, D)

    @torch.no_grad()
    def exact_log_px(self, x):
        cov = self.w.weight @ self.w.weight.T + self.sigma**2 * torch.eye(D)
        parts = [
            math.log(self.pi[c]) + torch.distributions.MultivariateNormal(self.w.bias + self.means[c], cov).log_prob(x)
            for c in range(C)
        ]
        return torch.logsumexp(torch.stack(parts), 0)


def test_log_px_sums_the_enumerated_site_inside_each_weight_and_matches_the_exact_marginal():
    pair = Mixture()
    x = pair.sample(40)
    est = log_px(pair.model, pair.guide, x, k=3000, seed=0)
    exact = pair.exact_log_px(x)
    per_point_se = est.mc_se * math.sqrt(x.shape[0])
    # each point within 4 of its own Monte Carlo SE (+ 0.01 for the bias at this K)
    assert (est.per_point - exact).abs().max() < 4 * per_point_se + 0.01, (est.per_point - exact).abs().max()


def test_the_enumerated_term_is_exact_given_z():
    """With one z drawn, the joint term of x is log sum_y p(y) p(x | z, y), computed by hand."""
    pair = Mixture()
    x = pair.sample(6)
    pyro.set_rng_seed(0)
    terms = site_terms(pair.model, pair.guide, x, num_particles=4)
    assert set(terms.model_terms) == {"z", "x"} and terms.observed == ["x"]
    pyro.set_rng_seed(0)
    with pyro.plate("_ppl_vae_particles", 4, dim=-2), pyro.poutine.trace() as tr:
        pair.guide(x)
    z = tr.trace.nodes["z"]["value"]  # (4, 6, Z), the same draws
    by_hand = torch.stack(
        [math.log(pair.pi[c]) + dist.Normal(pair.w(z) + pair.means[c], pair.sigma).to_event(1).log_prob(x) for c in range(C)]
    ).logsumexp(0)
    torch.testing.assert_close(terms.model_terms["x"], by_hand, atol=1e-5, rtol=0)


def test_such_a_model_trains_with_enum_and_iwae_and_is_scored():
    pair = Mixture()
    x = pair.sample(100)
    for objective in ("enum", "iwae:k=4"):
        Trainer(
            pair.model, pair.guide, TrainConfig(epochs=2, batch_size=50, objective=objective, progress=False, eval_every=0)
        ).fit(x)
    assert math.isfinite(log_px(pair.model, pair.guide, x[:10], k=20, seed=0).log_px)
