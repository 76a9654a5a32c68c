"""Evaluation diagnostics against closed forms, at their nominal error rates, and the report."""

import json

import numpy as np
import pyro
import pytest
import torch

from ppl_vae import log_px
from ppl_vae.aggregate import elbo_surgery, mardia_tests, mmd_test, prior_match_tests, radius_tests
from ppl_vae.cli import main
from ppl_vae.evaluate import elbo_terms
from ppl_vae.models import LinearGaussian
from ppl_vae.posterior import export_inference_data, posterior_correlations
from ppl_vae.report_text import report_rows
from ppl_vae.scoring import STAGES, score

from helpers import AffineGuide, ShiftedPosteriorGuide, correlated_linear_gaussian, diagonal_posterior_linear_gaussian


@pytest.fixture(scope="module")
def diag_lg():
    lg = diagonal_posterior_linear_gaussian()
    return lg, lg.sample_data(2000, seed=1)


def test_rate_and_elbo_surgery_match_their_closed_forms(diag_lg):
    lg, x = diag_lg
    guide = AffineGuide(6, 3, lg=lg)  # the exact posterior
    post = lg.posterior(x)
    cov, mu = post.covariance_matrix[0], post.loc
    exact_rate = 0.5 * (cov.trace() + (mu**2).sum(-1) - 3 - torch.logdet(cov)).mean().item()
    s = elbo_surgery(lg, guide, x, samples_per_point=4)
    assert s.rate == pytest.approx(exact_rate, abs=0.05)  # 8000 draws: SE about 0.015
    assert elbo_terms(lg, guide, x, k=4).rate == pytest.approx(exact_rate, abs=0.05)
    # the exact posterior's aggregate is the prior: marginal KL ~ 0; I(x;z) = ½ log det Λ
    assert abs(s.marginal_kl) < 0.05
    assert s.mutual_information == pytest.approx(0.5 * torch.logdet(lg.posterior_precision()).item(), abs=0.1)
    # shift every posterior by c: q(z) = N(c, I), so KL(q(z) || p(z)) = |c|^2 / 2
    shifted = AffineGuide(6, 3, lg=lg)
    with torch.no_grad():
        shifted.c += torch.tensor([1.0, 0.5, 0.0])
    assert elbo_surgery(lg, shifted, x).marginal_kl == pytest.approx(0.625, abs=0.08)


def test_aggregate_tests_hold_their_nominal_level_on_real_normal_samples():
    gen = torch.Generator().manual_seed(0)
    rejections = np.zeros(5)
    reps = 100
    for r in range(reps):
        z = torch.randn(200, 4, generator=gen)
        p = [mmd_test(z, permutations=99, seed=r)["p_value"]]
        m, rad = mardia_tests(z), radius_tests(z)
        p += [m["skewness_p_value"], m["kurtosis_p_value"], rad["radius_p_value"], rad["pairwise_p_value"]]
        rejections += np.array(p) < 0.05
    # nominal 5%: binomial(100, 0.05) exceeds 12 with probability < 0.3%
    assert (rejections / reps <= 0.12).all(), rejections


def _loop_mmd_test(z, permutations, seed):
    """The permutation test written directly: biased MMD^2 per split, one split at a time."""
    gen = torch.Generator().manual_seed(seed)
    z = z.double()
    ref = torch.randn(z.shape, generator=gen, dtype=torch.float64)

    def mmd2(a, b):
        ab = torch.cat([a, b])
        k = torch.exp(-torch.cdist(ab, ab).pow(2) / (2 * z.shape[1]))
        n = a.shape[0]
        return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()

    observed, pooled, n = mmd2(z, ref), torch.cat([z, ref]), z.shape[0]
    count = 0
    for _ in range(permutations):
        perm = torch.randperm(2 * n, generator=gen)
        count += int(mmd2(pooled[perm[:n]], pooled[perm[n:]]) >= observed)
    return float(observed), (count + 1) / (permutations + 1)


def test_mmd_test_scores_all_permutations_at_once_as_the_direct_loop_does():
    torch.manual_seed(3)
    for z in (torch.randn(60, 3), torch.randn(60, 3) * 1.3 + 0.2):
        out = mmd_test(z, permutations=49, seed=7)
        mmd2, p_value = _loop_mmd_test(z, 49, 7)
        assert out["mmd2"] == pytest.approx(mmd2, rel=1e-9) and out["p_value"] == p_value


def test_aggregate_tests_reject_a_clearly_non_gaussian_sample():
    torch.manual_seed(0)
    z = torch.distributions.Exponential(1.0).sample((500, 4)) - 1.0  # mean 0, variance 1, skewed
    r = prior_match_tests(z)
    for key in ("p_value", "skewness_p_value", "kurtosis_p_value", "radius_p_value", "pairwise_p_value"):
        assert r[key] < 0.01, key


def test_psis_k_hat_is_small_for_a_good_proposal_and_large_for_a_heavy_tailed_mismatch():
    lg = correlated_linear_gaussian()
    x = lg.sample_data(100, seed=2)
    good = log_px(lg, ShiftedPosteriorGuide(lg, inflate=1.2, shift=0.05), x, k=2000, psis=True)
    bad = log_px(lg, ShiftedPosteriorGuide(lg, inflate=0.3, shift=0.0), x, k=2000, psis=True)
    assert good.k_hat.max() < 0.5
    assert (bad.k_hat > 0.7).float().mean() > 0.5
    assert bad.as_dict()["k_hat"]["share_above_0.7"] > 0.5
    exact = log_px(lg, lg.exact_guide, x, k=100, psis=True)
    assert (exact.k_hat == -1).all()  # equal weights: nothing to fit, the best case


def test_psis_needs_21_draws_per_point_and_says_so_instead_of_a_verdict():
    lg = correlated_linear_gaussian()
    x = lg.sample_data(30, seed=2)
    with pytest.raises(ValueError, match="at least 21 importance samples per point.*K = 20"):
        log_px(lg, ShiftedPosteriorGuide(lg), x, k=20, psis=True)
    fewest = log_px(lg, ShiftedPosteriorGuide(lg), x, k=21, psis=True)
    assert torch.isfinite(fewest.k_hat).all()  # ArviZ gave inf for every point below 21 (read as "all unreliable")
    for k in (1, 20):  # K = 1 made ArviZ fail with an IndexError
        report = score(lg, ShiftedPosteriorGuide(lg), x, level="full", k=k)
        assert np.isfinite(report["log_px"]) and f"K = {k}" in report["k_hat"]["skipped"]
        row = next(row for row in report_rows(report) if row[0] == "PSIS k-hat")
        assert row[1].startswith("not computed") and "--k" in row[2]


def test_iwae_ladder_comes_from_one_pass_and_grows_with_k():
    lg = correlated_linear_gaussian()
    x = lg.sample_data(200, seed=3)
    est = log_px(lg, ShiftedPosteriorGuide(lg), x, k=500, chunk_k=128, ladder=(1, 5, 50, 500))
    values = [est.iwae_by_k[k] for k in (1, 5, 50, 500)]
    assert values == sorted(values)
    assert est.iwae_by_k[500] == pytest.approx(est.log_px, abs=1e-4)
    assert values[-1] < lg.log_marginal(x).mean().item() + 3 * est.mc_se  # a bound, up to Monte Carlo error


def test_posterior_correlations_recover_the_exact_correlation():
    W = torch.tensor([[1.0, 0.8], [1.0, 1.2], [0.9, 1.0], [1.1, 1.0], [1.0, 0.9]])
    lg = LinearGaussian(5, 2, W=W, b=torch.zeros(5), sigma=0.5, learn=False)
    cov = torch.linalg.inv(lg.posterior_precision())
    rho = abs((cov[0, 1] / cov.diagonal().prod().sqrt()).item())
    x = lg.sample_data(40, seed=4)
    r = posterior_correlations(lg, ShiftedPosteriorGuide(lg, inflate=1.5, shift=0.0), x, k=4000)
    assert r["posterior_mean_abs_offdiag"] == pytest.approx(rho, abs=0.03)  # rho = 0.94
    assert r["guide_mean_abs_offdiag"] < 0.05  # the mean-field guide: none
    assert r["posterior"].shape == (40, 2, 2)


def test_inference_data_export_round_trips(tmp_path):
    import arviz as az

    lg = correlated_linear_gaussian()
    x = lg.sample_data(7, seed=5)
    pyro.set_rng_seed(0)
    path = export_inference_data(lg, ShiftedPosteriorGuide(lg), x, tmp_path / "post.nc", k=30)
    idata = az.from_netcdf(path)
    assert idata.posterior["z"].shape == (1, 30, 7, 2)
    lw = idata.sample_stats["log_weight"].values
    assert lw.shape == (1, 30, 7) and np.isfinite(lw).all()


def test_evaluate_command_writes_the_full_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist5k",
                "--epochs",
                "1",
                "--hidden",
                "32",
                "--z-dim",
                "3",
                "--test-k",
                "5",
                "--eval-every",
                "0",
                "--out",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "60", "--n-points", "80", "--no-progress", "--device", "cpu", "--html"]) == 0
    printed = capsys.readouterr()
    table = printed.out
    for words in ("IWAE bound by K", "PSIS k-hat", "I(x;z)", "q(z) vs N(0,I)", "mean |corr|", "How to read it"):
        assert words in table
    stages = [line for line in printed.err.splitlines() if line.startswith("evaluate [")]
    applied = [stage.name for stage in STAGES if "inference gap" not in stage.name]  # that one: only with --refine
    n = len(applied)  # every other stage applies at the full level with an output folder
    assert (
        stages[0] == f"evaluate [1/{n}] log p(x) by importance sampling" and stages[-1] == f"evaluate [{n}/{n}] the ArviZ export"
    )
    assert len(stages) == n
    run, out = out, out / "eval-k60-n80"  # the evaluation's own folder (named by K and the points): the training pictures stay
    assert (run / "reconstructions.png").exists() and (run / "checkpoint.pt").exists()
    r = json.loads((out / "evaluation.json").read_text())
    assert r["k"] == 60 and r["n"] == 80 and set(r["iwae_by_k"]) == {"1", "5", "50", "60"}
    assert {"share_above_0.7", "median"} <= set(r["k_hat"])
    # one rate: the ELBO row's, split into I(x;z) and the marginal KL (no second estimate of it)
    assert "rate" not in r["surgery"]
    assert r["test_rate"] == pytest.approx(r["surgery"]["mutual_information"] + r["surgery"]["marginal_kl"])
    assert r["latent_dims"] == 3 and set(r["stage_seconds"]) == set(applied)
    assert len(r["kl_per_dimension"]["z"]) == 3 and r["prior_match"]["n"] == 80
    for name in ("reconstructions", "samples", "traversals", "aggregate_posterior", "iwae_vs_k"):
        assert (out / f"{name}.png").stat().st_size > 500
    assert (out / "posterior.nc").exists() and "| test log p(x) |" in (out / "evaluation.md").read_text()
    _check_html(out / "evaluation.html", r)
    assert r["encoder_sigma"]["min"] > 0 and len(r["encoder_sigma"]["per_dimension"]["z"]) == 3
    # --refine: the inference gap split, in its own folder
    assert main(["evaluate", str(run), "--k", "20", "--n-points", "30", "--refine", "5", "--no-progress", "--device", "cpu"]) == 0
    assert "inference gap split" in capsys.readouterr().out
    g = json.loads((run / "eval-k20-n30-refine5" / "evaluation.json").read_text())["gap_split"]
    assert g["points"] == 30 and g["steps"] == 5
    assert g["inference_gap"] == pytest.approx(g["approximation_gap"] + g["amortisation_gap"], abs=1e-4)


def _check_html(path, report):
    """The HTML report stands alone: every picture embedded as a PNG, no outside reference,
    one table row per report row with three cells."""
    import base64
    from html.parser import HTMLParser

    class Parse(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.links, self.rows, self.cells = [], [], [], 0

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.images.append(attrs["src"])
            if tag in ("link", "script") or (tag == "a" and "href" in attrs):
                self.links.append(attrs)
            if tag == "tr":
                self.cells = 0
            if tag in ("td", "th"):
                self.cells += 1

        def handle_endtag(self, tag):
            if tag == "tr":
                self.rows.append(self.cells)

    parser = Parse()
    parser.feed(path.read_text())
    assert len(parser.images) == len(report["pictures"]) and not parser.links
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert parser.rows[: 1 + len(report_rows(report))] == [3] * (1 + len(report_rows(report)))


def test_diagnostics_that_do_not_apply_are_skipped_with_a_reason(tmp_path):
    from ppl_vae.guides import HierarchicalGuide
    from ppl_vae.models import HierarchicalVAE

    layers = dict(x_dim=64, z_dims=(4, 2), hidden=((16,), (8,)))
    x = torch.bernoulli(torch.rand(20, 64))
    report = score(HierarchicalVAE(**layers), HierarchicalGuide(**layers), x, level="full", k=10)
    assert "one latent site" in report["prior_match"]["skipped"]
    assert "needs at least 21" in report["k_hat"]["skipped"]  # K = 10
    assert np.isfinite(report["log_px"])
    # the rate's split and the correlations take every latent site together
    assert report["surgery"]["joint"] and report["surgery"]["points"] == 20
    assert np.isfinite(report["posterior_correlation"]["posterior_mean_abs_offdiag"])
    assert len(report["encoder_sigma"]["per_dimension"]["z1"]) == 4 and report["encoder_sigma"]["max"] > 0


def test_pictures_are_labelled_and_readable_at_any_n(tmp_path):
    import matplotlib.image as mpimg

    from ppl_vae.plots import interleave_reconstructions, save_grid

    x, rec = torch.rand(20, 784), torch.rand(20, 784)
    images, labels = interleave_reconstructions(x, rec, per_row=8)
    assert labels == ["data", "reconstruction"] * 3
    assert torch.equal(images[:8], x[:8]) and torch.equal(images[8:16], rec[:8]) and torch.equal(images[16:20], x[8:12])
    for n in (1, 64, 2000):
        path = save_grid(torch.rand(n, 784), (28, 28), tmp_path / f"g{n}.png", title="t")
        height, width = mpimg.imread(path).shape[:2]
        per_row = int(np.ceil(np.sqrt(n)))
        assert width >= 250 and height >= 100  # one image is still big enough to see
        assert width >= per_row * 29  # never fewer screen pixels than the images have
        assert width <= 4000 and height <= 4000  # and not a poster for 2,000 images
    labelled = save_grid(images, (28, 28), tmp_path / "l.png", nrow=8, row_labels=labels)
    plain = save_grid(images, (28, 28), tmp_path / "p.png", nrow=8)
    assert mpimg.imread(labelled).shape[1] > mpimg.imread(plain).shape[1]  # room for the row labels
