"""Guides: each one trains and is scored; on a linear-Gaussian model with a strongly
correlated posterior, full_cov and iaf close the posterior gap and mean_field stalls at
the best diagonal approximation, whose gap is a closed form."""

import pyro
import pytest
import torch

from ppl_vae import TrainConfig, Trainer, elbo_terms, log_px
from ppl_vae.data import load_dataset
from ppl_vae.guides import GUIDES
from ppl_vae.models import VAE, HierarchicalVAE, LinearGaussian
from ppl_vae.objectives import get_objective

W = torch.tensor([[1.0, 0.8], [1.0, 1.2], [0.9, 1.0], [1.1, 1.0], [1.0, 0.9]])


@pytest.fixture(scope="module")
def correlated():
    lg = LinearGaussian(5, 2, W=W, b=torch.zeros(5), sigma=0.5, learn=False)  # decoder fixed
    precision = lg.posterior_precision()
    cov = torch.linalg.inv(precision)
    rho = (cov[0, 1] / cov.diagonal().prod().sqrt()).item()
    # best diagonal q under KL(q || p): precisions diag(Λ); gap = ½(Σ log Λ_ii − log det Λ)
    mean_field_gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()
    return lg, lg.sample_data(128, seed=0), rho, mean_field_gap


def _fit_gap(lg, x, name, steps, lr=0.02, **kw):
    pyro.set_rng_seed(0)
    guide = GUIDES[name](x_dim=5, z_dim=2, hidden=(), **kw)  # linear encoder: the exact posterior is representable
    config = TrainConfig(epochs=steps, batch_size=x.shape[0], lr=lr, progress=False, eval_every=0, objective="elbo:k=4")
    Trainer(lg, guide, config).fit(x, None)
    pyro.set_rng_seed(1)
    elbo = elbo_terms(lg, guide, x, k=400).elbo  # Monte Carlo SE of this mean: about 0.002 nats here
    return lg.log_marginal(x).mean().item() - elbo


def test_the_posterior_is_strongly_correlated(correlated):
    _, _, rho, mean_field_gap = correlated
    assert rho < -0.9 and mean_field_gap > 1.0


@pytest.mark.slow  # a convergence run: 1,500 steps
def test_mean_field_stalls_at_the_closed_form_gap(correlated):
    lg, x, _, mean_field_gap = correlated
    gap = _fit_gap(lg, x, "mean_field", steps=1500)
    # no diagonal q does better than the closed form (up to 0.01 of Monte Carlo error); Adam's
    # noise floor leaves it a little above (measured 1.095 against 1.087)
    assert mean_field_gap - 0.01 < gap < mean_field_gap + 0.03


@pytest.mark.slow  # convergence runs: 600 steps each
@pytest.mark.parametrize("name, kw", [("full_cov", {}), ("iaf", {"num_flows": 2})])
def test_full_covariance_and_iaf_close_the_gap(correlated, name, kw):
    lg, x, _, _ = correlated
    assert _fit_gap(lg, x, name, steps=600, **kw) < 0.05


@pytest.fixture(scope="module")
def mnist_tiny():
    d = load_dataset("mnist5k")
    return d.train.x[:200], d.eval_x("test")[:40]


# the deterministic guide has no density, hence no log p(x): tests/test_aggregate_objectives.py trains it;
# the sbn guide's binary layers fit only the sbn model and no iwae: tests/test_sbn.py trains it; the
# guides of the models with labels (ssvae, cvae) are trained in tests/test_labels.py
@pytest.mark.parametrize("name", sorted(set(GUIDES) - {"deterministic", "sbn", "ssvae", "ssvae_enum", "cvae"}))
@pytest.mark.parametrize("objective", ["elbo", "iwae:k=3"])
def test_every_guide_trains_and_is_scored_on_mnist5k(mnist_tiny, name, objective):
    train_x, test_x = mnist_tiny
    pyro.set_rng_seed(0)
    if name.startswith("hierarchical"):  # the guides of a model with several latent layers
        layers = dict(z_dims=(4, 2), hidden=((32,), (16,)))
        model, guide = HierarchicalVAE(**layers), GUIDES[name](**layers)
    else:
        model, guide = VAE(z_dim=4, hidden=(32,)), GUIDES[name](z_dim=4, hidden=(32,))
    history = Trainer(model, guide, TrainConfig(epochs=2, batch_size=50, progress=False, eval_every=0, objective=objective)).fit(
        train_x, test_x, dynamic=True
    )
    assert history[-1]["val_elbo"] > history[0]["val_elbo"] - 5.0  # trains without breaking
    est = log_px(model, guide, test_x, k=20)
    assert est.k == 20 and est.log_px > history[-1]["val_elbo"] - 1.0


@pytest.mark.parametrize("name", ["full_cov", "iaf", "planar", "radial", "householder"])
def test_meanfield_says_clearly_that_these_guides_have_no_closed_form_kl(name):
    model, guide = VAE(x_dim=6, z_dim=2, hidden=(4,)), GUIDES[name](x_dim=6, z_dim=2, hidden=(4,))
    with pytest.raises(ValueError, match=r"closed-form KL.*\['z'\]"):
        get_objective("meanfield").loss(model, guide, torch.ones(3, 6))


@pytest.mark.parametrize("name", ["planar", "radial"])
def test_non_invertible_flows_are_refused_by_detached_sample_estimators(name):
    model, guide = VAE(x_dim=6, z_dim=2, hidden=(4,)), GUIDES[name](x_dim=6, z_dim=2, hidden=(4,))
    for spec in ("stl", "dreg:k=2"):
        with pytest.raises(ValueError, match="cannot"):
            get_objective(spec).loss(model, guide, torch.ones(3, 6))


@pytest.mark.parametrize("name", ["iaf", "householder", "full_cov"])
def test_invertible_guides_work_with_stl_and_dreg(name):
    model, guide = VAE(x_dim=6, z_dim=2, hidden=(4,)), GUIDES[name](x_dim=6, z_dim=2, hidden=(4,))
    for spec in ("stl", "dreg:k=2"):
        loss = get_objective(spec).differentiable_loss(model, guide, torch.ones(3, 6))
        loss.backward()
        assert torch.isfinite(loss)


def test_flow_guide_options_are_checked():
    with pytest.raises(ValueError, match="unknown flow 'nice'"):
        GUIDES["iaf"].func(flow="nice")
    with pytest.raises(ValueError, match="num_flows"):
        GUIDES["iaf"](num_flows=0)
