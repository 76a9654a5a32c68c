"""Aggregate-posterior penalties against their definitions, and the objectives built on them.

Tolerances: Monte Carlo comparisons allow 4 standard errors; the "near zero" bounds are
stated beside each (measured values in the comments)."""

import math

import numpy as np
import pyro
import pytest
import torch

from ppl_vae import TrainConfig, Trainer, get_objective, load_dataset, log_px
from ppl_vae.importance_sampling import NoDensityError
from ppl_vae.objectives import cramer_wold2, mmd2, sliced_wasserstein2
from ppl_vae.objectives.divergences import chi_quantiles, kummer_phi, radial_distance, silverman_gamma
from ppl_vae.pair import build_pair

GEN = torch.Generator().manual_seed(0)


def _normal(n, d):
    return torch.randn(n, d, generator=GEN, dtype=torch.float64)


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_is_near_zero_for_the_prior_and_grows_with_shift_and_scale(kernel):
    z, prior = _normal(400, 5), _normal(400, 5)
    same = float(mmd2(z, prior, kernel))
    assert abs(same) < 0.005  # unbiased: centred on 0 (measured |.| < 0.002)
    shifted = [float(mmd2(z + s, prior, kernel)) for s in (0.25, 0.5, 1.0)]
    assert same < shifted[0] < shifted[1] < shifted[2]
    assert float(mmd2(z * 2.0, prior, kernel)) > 10 * abs(same) + 0.01


def test_cramer_wold_is_near_zero_for_the_prior_and_grows_with_shift_and_scale():
    z = _normal(400, 8)
    base = float(cramer_wold2(z))
    # the smoothing keeps a finite sample's distance above 0; it shrinks as n grows
    assert base < 0.01 and float(cramer_wold2(_normal(1600, 8))) < base
    shifted = [float(cramer_wold2(z + s)) for s in (0.25, 0.5, 1.0)]
    assert base < shifted[0] < shifted[1] < shifted[2]
    assert float(cramer_wold2(z * 2.0)) > 5 * base


def test_radial_distance_is_near_zero_for_the_prior_and_grows_with_shift_and_scale():
    z = _normal(400, 8)
    base = float(radial_distance(z))
    # the sorted radii of 400 draws scatter around their quantiles by O(1/sqrt(n)); measured 0.004
    assert base < 0.02 and float(radial_distance(_normal(1600, 8))) < base
    shifted = [float(radial_distance(z + s)) for s in (0.25, 0.5, 1.0)]
    assert base < shifted[0] < shifted[1] < shifted[2]
    assert float(radial_distance(z * 2.0)) > 50 * base and float(radial_distance(z * 0.5)) > 50 * base
    # by hand: radii and pairwise distances of 3 codes against chi(2)'s quantiles at 1/6, 1/2, 5/6
    three = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor(chi_quantiles(3, 2), dtype=torch.float64)
    radii = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    pairs = torch.tensor([1.0, 2.0, math.sqrt(5)], dtype=torch.float64) / math.sqrt(2)
    expected = (radii - q).pow(2).mean() + (pairs - q).pow(2).mean()
    assert torch.allclose(radial_distance(three), expected, atol=1e-6)


def test_radial_gradient_moves_codes_toward_the_prior():
    from ppl_vae.aggregate import prior_match_tests

    for start in (_normal(300, 4) * 2.5 + 1.0, _normal(300, 4) * 0.3):
        z = start.clone().requires_grad_(True)
        before = prior_match_tests(start.detach().float(), permutations=50)["mmd2"]
        optimiser = torch.optim.SGD([z], lr=2.0)
        for _ in range(100):
            optimiser.zero_grad()
            radial_distance(z).backward()
            optimiser.step()
        assert torch.isfinite(z).all()
        after = prior_match_tests(z.detach().float(), permutations=50)["mmd2"]
        assert float(radial_distance(z.detach())) < 0.1 * float(radial_distance(start)) and after < 0.5 * before


def test_sliced_wasserstein_in_one_dimension_is_the_exact_wasserstein_distance():
    z, prior = _normal(300, 1) * 1.5 + 0.3, _normal(300, 1)
    exact = (z.flatten().sort().values - prior.flatten().sort().values).pow(2).mean()
    assert torch.allclose(sliced_wasserstein2(z, prior, projections=7), exact, rtol=1e-12)


def _cramer_wold_monte_carlo(z, directions=2000, seed=1):
    """The definition: mean over random unit directions v of the L2 distance between the
    Gaussian-smoothed (variance gamma) densities of v'z and of N(0, 1), in closed form per v."""
    n, d = z.shape
    g = silverman_gamma(n)
    gen = torch.Generator().manual_seed(seed)

    def normal_pdf(m, var):
        return torch.exp(-(m**2) / (2 * var)) / math.sqrt(2 * math.pi * var)

    values = []
    for _ in range(directions // 200):
        v = torch.randn(d, 200, generator=gen, dtype=torch.float64)
        p = z @ (v / v.norm(dim=0))
        pairs = normal_pdf(p.unsqueeze(0) - p.unsqueeze(1), 2 * g).mean((0, 1))
        values.append(
            pairs + normal_pdf(torch.tensor(0.0, dtype=torch.float64), 2 + 2 * g) - 2 * normal_pdf(p, 1 + 2 * g).mean(0)
        )
    values = torch.cat(values)
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


@pytest.mark.parametrize("d", [1, 2, 5, 20, 64])
def test_closed_form_cramer_wold_agrees_with_its_monte_carlo_definition(d):
    z = _normal(100, d) * 1.3 + 0.2
    mc, se = _cramer_wold_monte_carlo(z)
    closed = float(cramer_wold2(z))
    assert abs(closed - mc) < 4 * se + 1e-12, (closed, mc, se)  # D = 1 is exact: se = 0


def test_kummer_phi_matches_known_values():
    s = torch.tensor([0.0, 0.5, 2.0, 10.0], dtype=torch.float64)
    assert torch.allclose(kummer_phi(s, 1), torch.exp(-s))
    # D = 3: 1F1(1/2; 3/2; -s) = sqrt(pi / s) erf(sqrt s) / 2
    expected = torch.tensor([1.0] + [math.sqrt(math.pi / v) * math.erf(math.sqrt(v)) / 2 for v in (0.5, 2.0, 10.0)])
    assert torch.allclose(kummer_phi(s, 3), expected.double(), rtol=1e-8)


# --------------------------------------------------------------------------- objectives


def _vae_pair(guide="mean_field", prior="normal", x_dim=16, z_dim=3):
    pyro.set_rng_seed(0)
    small = {"z_dim": z_dim, "hidden": (8,)}
    return build_pair({"model": "vae", "guide": guide, "model_kwargs": {**small, "prior": prior}, "guide_kwargs": small}, x_dim)


X = torch.bernoulli(torch.full((24, 16), 0.35), generator=torch.Generator().manual_seed(2))


def _loss_and_grads(spec, model, guide, seed=3):
    pyro.set_rng_seed(seed)
    params = list(model.parameters()) + list(guide.parameters())
    for p in params:
        p.grad = None
    loss = get_objective(spec).differentiable_loss(model, guide, X)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in params]


def test_infovae_without_its_mmd_term_is_the_elbo():
    model, guide = _vae_pair()
    info, g_info = _loss_and_grads("infovae:lam=0", model, guide)
    elbo, g_elbo = _loss_and_grads("iwae:k=1", model, guide)  # the per-point ELBO on the same draws
    assert info == pytest.approx(elbo, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_info, g_elbo))
    pyro_elbo, _ = _loss_and_grads("elbo", model, guide)  # Pyro's Trace_ELBO draws the same z
    assert info == pytest.approx(pyro_elbo, rel=1e-5)


def test_the_penalty_enters_each_point_once():
    model, guide = _vae_pair()
    plain, _ = _loss_and_grads("infovae:lam=0", model, guide)
    weighted, _ = _loss_and_grads("infovae:lam=10", model, guide)
    objective = get_objective("infovae:lam=10")
    pyro.set_rng_seed(3)
    d = float(objective.divergence(objective.terms(model, guide, X)).detach())
    assert weighted - plain == pytest.approx(10 * d * X.shape[0], rel=1e-4)


@pytest.mark.parametrize("spec", ["wae_mmd", "wae_mmd:kernel=rbf", "swae:projections=20", "cwae", "radial", "sparse_ae"])
def test_autoencoders_with_a_deterministic_encoder_train(spec):
    data = load_dataset("digits")
    model, guide = _vae_pair("deterministic", x_dim=64)
    config = TrainConfig(epochs=3, batch_size=50, eval_every=0, progress=False, objective=spec)
    history = Trainer(model, guide, config).fit(data.train.x[:300], data.eval_x("val")[:50], dynamic=True)
    assert history[-1]["train_loss"] < history[0]["train_loss"] and all(np.isfinite(h["val_distortion"]) for h in history)


def test_a_point_mass_guide_has_no_log_px_and_says_why():
    model, guide = _vae_pair("deterministic")
    with pytest.raises(NoDensityError, match="point mass .* no importance-sampling estimate"):
        log_px(model, guide, X, k=5)


def test_what_does_not_combine_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="'swae' has none"):
        get_objective("swae:beta=2")
    with pytest.raises(ValueError, match="kernel must be one of"):
        get_objective("infovae:kernel=laplace")
    with pytest.raises(ValueError, match="free bits"):
        get_objective("wae_mmd:free_bits=1")
    with pytest.raises(ValueError, match="point mass with no density"):
        _loss_and_grads("infovae", *_vae_pair("deterministic"))
    with pytest.raises(ValueError, match="distance to N\\(0, I\\).*not a standard normal"):
        _loss_and_grads("cwae", *_vae_pair(prior="vamp"))
    with pytest.raises(ValueError, match="distance to N\\(0, I\\).*not a standard normal"):
        _loss_and_grads("radial", *_vae_pair(prior="vamp"))
    assert get_objective("infovae:warmup=10")  # infovae has a KL term to warm up


def test_the_penalty_sits_on_the_top_layer_of_a_hierarchy_unless_named():
    layers = {"z_dims": (4, 2), "hidden": ((8,), (8,))}
    pyro.set_rng_seed(0)
    model, guide = build_pair(
        {"model": "hierarchical", "guide": "hierarchical", "model_kwargs": layers, "guide_kwargs": layers}, 16
    )
    objective = get_objective("wae_mmd")
    terms = objective.terms(model, guide, X)
    from ppl_vae.objectives.aggregate import latent_codes, top_site

    assert top_site(terms) == "z2" and latent_codes(terms, "z2").shape == (24, 2)
    assert latent_codes(terms, "z1").shape == (24, 4)
    assert np.isfinite(float(get_objective("wae_mmd:site=z1").differentiable_loss(model, guide, X).detach()))
    with pytest.raises(ValueError, match="no latent site 'z9'"):
        get_objective("wae_mmd:site=z9").differentiable_loss(model, guide, X)


def test_compare_preset_aggregate_reports_every_method_with_its_figures(tmp_path, capsys):
    import json

    from ppl_vae.cli import main

    out = tmp_path / "agg"
    argv = ["compare", "--preset", "aggregate", "--dataset", "digits", "--epochs", "1", "--z-dim", "3", "--hidden", "16"]
    assert main([*argv, "--test-k", "5", "--eval-every", "0", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok"] * 8
    names = [r["variant"] for r in rows]
    assert names[0] == "VAE" and any(n.startswith("CWAE") for n in names) and any(n.startswith("sparse AE") for n in names)
    assert any(n.startswith("radial") for n in names)
    for r in rows:
        assert {"test_distortion", "mmd2", "p_value", "skewness_p_value", "radius_p_value", "pairwise_p_value"} <= set(r)
        assert (r["log_px"] is None) == (r["guide"] == "deterministic")
    table = (out / "compare.md").read_text().strip().splitlines()
    assert len({line.count("|") for line in table}) == 1 and "no density" in table[5]
    assert (out / "samples_side_by_side.png").stat().st_size > 1000 and (out / "aggregate_posteriors.png").stat().st_size > 1000
    assert main(["compare", "--preset", "aggregate", "--objectives", "elbo", "--out", str(tmp_path / "x")]) == 2
    assert "drop --objectives" in capsys.readouterr().err


def test_a_penalty_weight_sweep_with_q_tests_gives_the_tradeoff_table_and_plot(tmp_path):
    import json

    from ppl_vae.cli import main

    out = tmp_path / "sweep"
    argv = ["compare", "--objectives", "radial:lam=0.1,radial:lam=100", "--guide", "deterministic", "--q-tests"]
    argv += ["--dataset", "digits", "--epochs", "1", "--z-dim", "3", "--hidden", "16", "--test-k", "5", "--eval-every", "0"]
    assert main([*argv, "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["objective"] for r in rows] == ["radial:lam=0.1", "radial:lam=100"]
    assert all(r["status"] == "ok" and r["mmd2"] >= 0 and 0 < r["radius_p_value"] <= 1 for r in rows)
    header = (out / "compare.md").read_text().splitlines()[0]
    assert "reconstruction error" in header and "MMD² to the prior" in header and "radius p" in header
    assert (out / "reconstruction_vs_gaussianity.png").stat().st_size > 1000
