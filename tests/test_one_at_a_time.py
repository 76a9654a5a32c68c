"""Pairs that do not broadcast over a leading sample dimension (networks that concatenate inputs,
as Pyro's semi-supervised VAE example does): found by a trial trace, said once, and run one
particle at a time, with the answers of a vectorised run: log p(x) against an exact marginal,
training by every kind of objective, and a clear refusal where all particles' traces are needed."""

import importlib.util
import json
import math
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import TrainConfig, Trainer, get_objective, log_px
from ppl_vae.particles import SequentialParticles, runs_one_at_a_time
from ppl_vae.sites import site_terms

C, D, Z = 3, 3, 2  # classes, data width, latent width


class ConcatMixture(nn.Module):
    """x = W z + B y + b + sigma e, y ~ Cat(pi), z ~ N(0, I): p(x) = sum_c pi_c N(x | b + B_c, W W' + sigma^2 I).
    The guide reads [x, y] through torch.cat without broadcasting."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.decoder = nn.Linear(Z + C, D)
        self.encoder_y = nn.Linear(D, C)
        self.encoder_z = nn.Linear(D + C, 2 * Z)
        self.pi = torch.tensor([0.5, 0.3, 0.2])
        self.sigma = 0.7
        with torch.no_grad():  # a guide as broad as the prior: importance sampling from it is well behaved
            for net in (self.encoder_y, self.encoder_z):
                net.weight.zero_()
                net.bias.zero_()
            self.encoder_z.bias[Z:] = 0.7

    def model(self, x):
        pyro.module("mix", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
            y = pyro.sample("y", dist.OneHotCategorical(self.pi.expand(x.shape[0], C)))
            pyro.sample("x", dist.Normal(self.decoder(torch.cat([z, y], -1)), self.sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("mix", self)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(x)))
            loc, raw = self.encoder_z(torch.cat([x, y], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 0.5).to_event(1))

    @torch.no_grad()
    def sample(self, n):
        y = nn.functional.one_hot(torch.multinomial(self.pi, n, replacement=True), C).float()
        return self.decoder(torch.cat([torch.randn(n, Z), y], -1)) + self.sigma * torch.randn(n, D)

    @torch.no_grad()
    def exact_log_px(self, x):
        w, b = self.decoder.weight[:, :Z], self.decoder.weight[:, Z:]
        cov = w @ w.T + self.sigma**2 * torch.eye(D)
        parts = [
            math.log(self.pi[c]) + torch.distributions.MultivariateNormal(self.decoder.bias + b[:, c], cov).log_prob(x)
            for c in range(C)
        ]
        return torch.logsumexp(torch.stack(parts), 0)


def _said(record) -> int:
    return sum(issubclass(w.category, SequentialParticles) for w in record)


def test_log_px_of_a_pair_that_does_not_broadcast_matches_the_exact_marginal_and_is_said_once():
    pair = ConcatMixture()
    x = pair.sample(30)
    with warnings.catch_warnings(record=True) as first:
        warnings.simplefilter("always")
        est = log_px(pair.model, pair.guide, x, k=1000, seed=0, compile="off")
    assert _said(first) == 1 and runs_one_at_a_time(pair.model, pair.guide)
    exact = pair.exact_log_px(x)
    # 1,000 draws per point from a broad guide: each point's estimate within 4 of its own MC SE (+ 0.01 for the
    # bias; seeds 0-2 gave at most 2.6 SE and mean errors under 0.007)
    per_point_se = est.mc_se * math.sqrt(x.shape[0])
    assert (est.per_point - exact).abs().max() < 4 * per_point_se + 0.01, (est.per_point - exact).abs().max()
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        log_px(pair.model, pair.guide, x[:5], k=10, seed=0, compile="off")
    assert _said(again) == 0


def test_particles_run_one_at_a_time_hold_the_terms_of_each_draw():
    pair = ConcatMixture()
    x = torch.randn(7, D)
    with pytest.warns(SequentialParticles):
        terms = site_terms(pair.model, pair.guide, x, num_particles=5)
    assert terms.log_weights().shape == (5, 7) and terms.not_reparameterized == ["y"]
    assert not torch.allclose(terms.log_weights()[0], terms.log_weights()[1])  # five draws, not one five times
    with pytest.raises(ValueError, match="one at a time .*broadcast"):
        terms.guide_trace.nodes  # noqa: B018  (a single trace of five sequential draws does not exist)


@pytest.mark.parametrize(
    "objective, pair",
    [("elbo", ConcatMixture), ("elbo:k=3", ConcatMixture), ("tracegraph:k=2", ConcatMixture), ("vimco:k=3", ConcatMixture),
     ("iwae:k=3", "gaussian"), ("meanfield:k=2", "gaussian")],
)  # fmt: skip
def test_a_pair_that_does_not_broadcast_trains_with_every_kind_of_objective(objective, pair):
    pair = ConcatGaussian() if pair == "gaussian" else pair()
    x = torch.randn(120, D) + 1.0
    config = TrainConfig(epochs=2, batch_size=40, objective=objective, progress=False, eval_every=0, seed=0, compile="off")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SequentialParticles)
        history = Trainer(pair.model, pair.guide, config).fit(x)
    assert len(history) == 2 and all(math.isfinite(row["train_loss"]) for row in history)


class ConcatGaussian(nn.Module):
    """z ~ N(0, I), x ~ N(decoder(z), 1); the decoder reads [z, x * 0] through torch.cat (no broadcasting)."""

    def __init__(self):
        super().__init__()
        self.decoder, self.encoder = nn.Linear(Z + D, D), nn.Linear(D, 2 * Z)

    def model(self, x):
        pyro.module("flat", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(torch.cat([z, x * 0], -1)), 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("flat", self)
        loc, raw = self.encoder(x).chunk(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 0.1).to_event(1))


@pytest.mark.parametrize("objective, pair", [("dreg:k=3", ConcatGaussian), ("rws:k=3", ConcatMixture)])
def test_objectives_that_need_all_particles_traces_refuse_it_naming_broadcasting(objective, pair):
    pair = pair()
    x = torch.randn(20, D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SequentialParticles)
        site_terms(pair.model, pair.guide, x, num_particles=2)  # found out once
        with pytest.raises(ValueError, match="one at a time.*broadcast"):
            get_objective(objective).differentiable_loss(pair.model, pair.guide, x)


def test_pyros_elbo_runs_them_one_at_a_time_with_the_vectorised_answer():
    """elbo:k=200 is Pyro's Trace_ELBO with vectorised particles; for this pair they run one at a time,
    and its value agrees with the mean of 200 sequential log-weights within 4 SE of the difference."""
    pair = ConcatMixture()
    x = torch.randn(10, D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SequentialParticles)
        site_terms(pair.model, pair.guide, x, num_particles=2)
    torch.manual_seed(0)
    loss = get_objective("elbo:k=200").loss(pair.model, pair.guide, x)
    terms = site_terms(pair.model, pair.guide, x, num_particles=200)
    expected = -terms.log_weights().mean(0).sum().item()
    se = terms.log_weights().mean(1).std().item() * x.shape[0] / math.sqrt(200)  # per-particle sums' spread
    assert abs(loss - expected) < 4 * se * math.sqrt(2), (loss, expected, se)


def test_pyros_semi_supervised_vae_style_example_trains_and_is_scored():
    path = Path(__file__).resolve().parent.parent / "examples" / "pyro_style_ssvae.py"
    spec = importlib.util.spec_from_file_location("pyro_style_ssvae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.SSVAE(x_dim=64, z_dim=2, classes=3, hidden=8)
    x = torch.bernoulli(torch.full((60, 64), 0.3))
    with pytest.raises(RuntimeError, match="same number of dimensions"):  # it does not broadcast: that is the point
        with pyro.plate("particles", 2, dim=-2):
            net.guide(x)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        Trainer(net.model, net.guide, TrainConfig(epochs=1, batch_size=30, progress=False, eval_every=0)).fit(x)
    assert _said(said) == 1
    est = log_px(net.model, net.guide, x[:10], k=20, seed=0)
    assert math.isfinite(est.log_px) and est.log_px < 0


def test_the_example_class_trains_and_is_evaluated_from_the_command_line(tmp_path):
    from ppl_vae.cli import main

    ref = str(Path(__file__).resolve().parent.parent / "examples" / "pyro_style_ssvae.py") + ":SSVAE"
    out = tmp_path / "run"
    common = ["--epochs", "1", "--test-k", "4", "--eval-every", "0", "--no-progress", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SequentialParticles)
        assert (
            main(
                ["train", "--model", ref + ".model", "--guide", ref + ".guide", "--dataset", "digits", *common, "--out", str(out)]
            )
            == 0
        )
        assert main(["evaluate", str(out), "--k", "4", "--n-points", "30", "--device", "cpu"]) == 0
    report = json.loads(next(out.glob("eval-*/evaluation.json")).read_text())
    assert report["log_px"] < 0 and "active_units" in report
    assert 0 <= report["classification_error"] <= 1  # the guide's site y is its classifier


def test_the_example_classes_train_with_labels_from_the_command_line(tmp_path):
    from ppl_vae.cli import main

    path = str(Path(__file__).resolve().parent.parent / "examples" / "pyro_style_ssvae.py")
    common = ["--dataset", "digits", "--epochs", "1", "--test-k", "4", "--eval-every", "0", "--no-progress", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SequentialParticles)
        ss, cv = tmp_path / "ss", tmp_path / "cv"
        pair = ["--model", path + ":SSVAE.model", "--guide", path + ":SSVAE.guide"]
        assert main(["train", *pair, "--labelled", "5", "--objective", "vimco:k=3", *common, "--out", str(ss)]) == 0
        pair = ["--model", path + ":CVAE.model", "--guide", path + ":CVAE.guide"]
        assert main(["train", *pair, "--labelled", "all", *common, "--out", str(cv)]) == 0
    labelled = json.loads((ss / "result.json").read_text())
    assert labelled["labels"]["labelled"] == 50 and 0 <= labelled["classification_error"] <= 1
    conditional = json.loads((cv / "result.json").read_text())
    assert conditional["labels"]["conditional"] and conditional["log_px"] < 0 and "classification_error" not in conditional
