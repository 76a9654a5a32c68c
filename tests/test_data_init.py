"""Data-informed initialisation: the decoder's output bias set from the training data before the
first step (p(x | z=0) has the data's per-dimension mean), recorded, never redone on resume."""

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import TrainConfig, Trainer
from ppl_vae.cli import main
from ppl_vae.guides import HierarchicalGuide, MeanFieldGuide
from ppl_vae.models import VAE, HierarchicalVAE, init_output_bias
from ppl_vae.models.likelihoods import LOGIT_RANGE, MEAN_CLIP

X_DIM = 20


def _data(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    # per-dimension means from 0 (a pixel never on) to near 1, as in images
    return (torch.rand(n, X_DIM, generator=g) < torch.linspace(0, 0.97, X_DIM)).float()


def _prepared(model, guide, x, **config):
    """The trainer up to its first step (parameters created, initialised, the step chosen)."""
    torch.manual_seed(0)
    trainer = Trainer(model, guide, TrainConfig(epochs=1, batch_size=50, device="cpu", progress=False, eval_every=0, **config))
    trainer._prepare(x, None, dynamic=False, resume=False)
    return trainer


def _cb_reachable(mean):
    """The continuous Bernoulli's means at logits ±LOGIT_RANGE bound what it can start at."""
    bounds = dist.ContinuousBernoulli(logits=torch.tensor([-LOGIT_RANGE, LOGIT_RANGE])).mean
    return mean.clamp(MEAN_CLIP, 1 - MEAN_CLIP).clamp(bounds[0].item(), bounds[1].item())


@pytest.mark.parametrize(
    "likelihood, expected",
    [
        ("bernoulli", lambda m: m.clamp(MEAN_CLIP, 1 - MEAN_CLIP)),
        ("continuous_bernoulli", _cb_reachable),
        ("gaussian", lambda m: m),
    ],
)
def test_before_any_step_the_decoder_mean_at_z0_is_the_data_marginal(likelihood, expected):
    x = _data()
    if likelihood == "gaussian":
        x = x * 3.0 - 1.0 + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    model, guide = VAE(X_DIM, 3, hidden=(16,), likelihood=likelihood), MeanFieldGuide(X_DIM, 3, hidden=(16,))
    trainer = _prepared(model, guide, x)
    assert trainer.step == 0 and trainer.data_init.startswith(f"{type(model.likelihood).__name__} decoder")
    mean_at_0 = model.decode_mean(torch.zeros(1, 3))[0]
    torch.testing.assert_close(mean_at_0, expected(x.mean(0)), atol=1e-5, rtol=1e-5)


def test_the_hierarchical_model_starts_at_the_marginal_of_dynamically_binarised_data():
    intensities = torch.rand(300, X_DIM, generator=torch.Generator().manual_seed(2)) ** 2
    model = HierarchicalVAE(X_DIM, z_dims=(4, 2), hidden=((8,), (8,)))
    guide = HierarchicalGuide(X_DIM, z_dims=(4, 2), hidden=((8,), (8,)))
    model.attach_guide(guide)
    torch.manual_seed(0)
    trainer = Trainer(model, guide, TrainConfig(epochs=1, batch_size=50, device="cpu", progress=False, eval_every=0))
    trainer._prepare(intensities, None, dynamic=True, resume=False)
    # the binarised pixels' mean is the intensities' mean
    mean_at_0 = model.likelihood(model.decoder(torch.zeros(1, 4))).mean[0]
    torch.testing.assert_close(mean_at_0, intensities.mean(0).clamp(MEAN_CLIP, 1 - MEAN_CLIP), atol=1e-5, rtol=1e-5)


def test_off_leaves_pytorch_default_initialisation():
    x = _data()
    pairs = []
    for data_init in (True, False):
        torch.manual_seed(5)
        pairs.append((VAE(X_DIM, 3, hidden=(16,)), MeanFieldGuide(X_DIM, 3, hidden=(16,))))
        trainer = _prepared(*pairs[-1], x, data_init=data_init)
    (on, _), (off, _) = pairs
    assert trainer.data_init.startswith("off")
    torch.manual_seed(5)
    untouched = VAE(X_DIM, 3, hidden=(16,))
    assert torch.equal(off.decoder[-1].bias, untouched.decoder[-1].bias)
    assert not torch.allclose(on.decoder[-1].bias, untouched.decoder[-1].bias, atol=0.5)
    assert torch.equal(on.decoder[-1].weight, untouched.decoder[-1].weight)  # only the bias moves


def test_a_resumed_run_is_not_reinitialised_and_ends_as_an_uninterrupted_one(tmp_path):
    x = _data()

    def run(epochs, out, resume=False):
        torch.manual_seed(0)
        model, guide = VAE(X_DIM, 3, hidden=(16,)), MeanFieldGuide(X_DIM, 3, hidden=(16,))
        if resume:  # the checkpoint's parameters decide; initialising again would be a bug
            model.init_from_data = lambda x: pytest.fail("init_from_data called on resume")
        cfg = TrainConfig(epochs=epochs, batch_size=50, device="cpu", progress=False, eval_every=0, out=str(out), compile="off")
        trainer = Trainer(model, guide, cfg)
        trainer.fit(x, resume=resume)
        return trainer

    straight = run(2, tmp_path / "straight")
    run(1, tmp_path / "pieces")
    resumed = run(2, tmp_path / "pieces", resume=True)
    assert resumed.data_init == straight.data_init
    for name, p in straight.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name


class OwnDecoderModel(nn.Module):
    """A user's model in Pyro's VAE-tutorial style, which asks for the initialisation itself."""

    def __init__(self, with_hook):
        super().__init__()
        self.decode = nn.Sequential(nn.Linear(2, 8), nn.Softplus(), nn.Linear(8, X_DIM))
        if with_hook:
            self.init_from_data = lambda x: init_output_bias(self.decode, x, z_dim=2, likelihood="bernoulli")

    def forward(self, x):
        pyro.module("own", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decode(z)).to_event(1), obs=x)


@pytest.mark.parametrize("with_hook", [True, False])
def test_a_users_model_is_initialised_only_when_it_asks(with_hook):
    x = _data()
    model = OwnDecoderModel(with_hook)
    trainer = _prepared(model, MeanFieldGuide(X_DIM, 2, hidden=(8,)), x)
    mean_at_0 = torch.sigmoid(model.decode(torch.zeros(2)))
    if with_hook:
        assert trainer.data_init.startswith("bernoulli decoder")
        torch.testing.assert_close(mean_at_0, x.mean(0).clamp(MEAN_CLIP, 1 - MEAN_CLIP), atol=1e-5, rtol=1e-5)
    else:
        assert "defines no init_from_data" in trainer.data_init


def test_bad_uses_are_named():
    x = _data()
    with pytest.raises(ValueError, match="bias has 8 elements and the data 20 dimensions"):
        init_output_bias(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, X_DIM)), x, 2, layer=nn.Linear(3, 8))
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        init_output_bias(nn.Linear(2, X_DIM), x, 2, likelihood="poisson")
    conv = VAE(784, 3, network="conv")
    assert conv.init_from_data(torch.rand(10, 784)).startswith("not applied: the conv decoder")


def test_the_command_line_records_it_and_turns_it_off(tmp_path, capsys):
    run = ["train", "--dataset", "digits", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--test-k", "2",
           "--eval-every", "0", "--no-progress", "--device", "cpu", "--no-data-init"]  # fmt: skip
    assert main([*run, "--out", str(tmp_path / "off")]) == 0
    assert json.loads((tmp_path / "off" / "result.json").read_text())["data_init"].startswith("off")
    capsys.readouterr()
