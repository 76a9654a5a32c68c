"""The log p(x) estimator against the exact marginal of a linear-Gaussian model."""

import math

import pytest
import torch

from ppl_vae import log_px
from ppl_vae.sites import ContractError

from helpers import ShiftedPosteriorGuide, correlated_linear_gaussian


@pytest.fixture
def lg_data():
    lg = correlated_linear_gaussian()
    return lg, lg.sample_data(300, seed=1)


@pytest.mark.parametrize("k", [1, 7, 250])
def test_exact_posterior_guide_gives_exact_log_px_for_any_k(lg_data, k):
    lg, x = lg_data
    est = log_px(lg, lg.exact_guide, x, k=k, chunk_k=64, batch_size=128)
    exact = lg.log_marginal(x)
    # every importance weight equals p(x): only float32 rounding remains
    assert torch.allclose(est.per_point, exact, atol=2e-4)
    assert est.k == k and est.n == 300
    assert est.log_px_se == pytest.approx(float(exact.std() / math.sqrt(300)), rel=1e-3)


def test_mismatched_guide_converges_from_below_as_k_grows(lg_data):
    lg, x = lg_data
    guide = ShiftedPosteriorGuide(lg)
    exact = lg.log_marginal(x).mean().item()
    estimates = {k: log_px(lg, guide, x, k=k, chunk_k=500) for k in (1, 10, 100, 3000)}
    means = [estimates[k].log_px for k in (1, 10, 100, 3000)]
    # the IWAE bound does not decrease in K on average (allow 3 Monte Carlo SEs of noise)
    for (k_a, a), (k_b, b) in zip(estimates.items(), list(estimates.items())[1:]):
        assert b.log_px >= a.log_px - 3 * (b.mc_se if k_a > 1 else 0.05), (k_a, k_b, means)
    gap_1 = exact - means[0]
    gap_big = exact - means[-1]
    assert gap_1 > 0.2  # the guide really is mismatched
    # converged: within 3 Monte Carlo SEs (+ a 0.01 nat floor) of the exact value
    assert abs(gap_big) < 3 * estimates[3000].mc_se + 0.01, (gap_big, estimates[3000].mc_se)
    assert gap_big < gap_1 / 10


def test_chunking_does_not_change_the_estimate(lg_data):
    lg, x = lg_data
    guide = ShiftedPosteriorGuide(lg)
    torch.manual_seed(3)
    a = log_px(lg, guide, x[:50], k=200, chunk_k=200, batch_size=50)
    torch.manual_seed(3)
    b = log_px(lg, guide, x[:50], k=200, chunk_k=200, batch_size=50)
    torch.manual_seed(3)
    c = log_px(lg, guide, x[:50], k=200, chunk_k=37, batch_size=50)
    assert torch.equal(a.per_point, b.per_point)
    # a different chunking draws different samples: equal up to Monte Carlo error
    assert abs(a.log_px - c.log_px) < 5 * a.mc_se + 1e-3


def test_bad_inputs_are_named(lg_data):
    lg, x = lg_data
    with pytest.raises(ValueError, match="k"):
        log_px(lg, lg.exact_guide, x, k=0)
    with pytest.raises(ValueError, match="empty"):
        log_px(lg, lg.exact_guide, x[:0], k=5)


def test_site_outside_data_plate_is_a_contract_error(lg_data):
    import pyro
    import pyro.distributions as dist

    lg, x = lg_data

    def model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z @ lg.W.T, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))

    with pytest.raises(ContractError, match="'z' is not inside pyro.plate\\('data'\\)"):
        log_px(model, guide, x, k=2)


def test_a_seeded_estimate_leaves_the_callers_generators_as_they_were():
    """Its trial runs of the pair included: otherwise a run whose validation schedule differs between
    two legs (a resume after a last epoch off the --eval-every grid) would not resume to the bit."""
    import pyro

    from ppl_vae.pair import build_pair

    pyro.set_rng_seed(0)
    model, guide = build_pair(
        {"model": "vae", "model_kwargs": {"z_dim": 2, "hidden": (8,)}, "guide_kwargs": {"z_dim": 2, "hidden": (8,)}}, 16
    )
    x = torch.bernoulli(torch.full((5, 16), 0.5))
    state = torch.get_rng_state()
    log_px(model, guide, x, k=3, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
