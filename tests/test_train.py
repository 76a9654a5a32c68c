"""The trainer: any contract-following pair, determinism, resume, checkpoints."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import TrainConfig, Trainer, log_px
from ppl_vae.checkpoint import CheckpointError, load_checkpoint
from ppl_vae.data import load_dataset
from ppl_vae.guides import MeanFieldGuide
from ppl_vae.models import VAE

from conftest import DEVICE


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits")
    return d.train.x[:300], d.eval_x("val")[:100]


def _pair(z_dim=4, seed=0):
    pyro.set_rng_seed(seed)  # network initialisation is part of "same seed, same numbers"
    return VAE(x_dim=64, z_dim=z_dim, hidden=(32,)), MeanFieldGuide(x_dim=64, z_dim=z_dim, hidden=(32,))


def _config(tmp_path=None, **kw):
    base = dict(epochs=2, batch_size=50, eval_every=0, progress=False, device=DEVICE, out=str(tmp_path) if tmp_path else None)
    base.update(kw)
    return TrainConfig(**base)


def test_training_improves_the_validation_elbo(digits):
    train_x, val_x = digits
    model, guide = _pair()
    # from PyTorch's initialisation: the data-informed start is already at the pixel marginals, which
    # these 48 steps on 300 digits improve by only ~0.5 nats (tests/test_data_init.py tests that start)
    config = _config(epochs=8, eval_every=4, eval_k=20, data_init=False)
    history = Trainer(model, guide, config).fit(train_x, val_x, dynamic=True)
    assert history[-1]["val_elbo"] > history[0]["val_elbo"] + 2
    assert history[-1]["val_log_px"] >= history[-1]["val_elbo"] - 0.5  # log p(x) bound above the ELBO
    assert "val_log_px" in history[3] and "val_log_px" not in history[2]


@pytest.mark.parametrize(
    "objective",
    [
        "meanfield",
        "iwae:k=3",
        "vr:alpha=0.5,k=3",
        "dreg:k=3",
        "stl",
        "jit_elbo",
        "jit_meanfield",
        "elbo:beta=0.5,warmup=5",
        "meanfield:free_bits=0.1,free_bits_per=dim",
    ],
)
def test_every_registered_objective_trains(digits, objective):
    train_x, val_x = digits
    model, guide = _pair()
    # 280 points in batches of 50: the last batch is smaller (jit must cope)
    history = Trainer(model, guide, _config(epochs=3, objective=objective)).fit(train_x[:280], val_x, dynamic=True)
    assert history[-1]["val_elbo"] > history[0]["val_elbo"]


def test_same_seed_same_numbers_and_resume_is_exact(tmp_path, digits):
    train_x, val_x = digits
    straight = Trainer(*_pair(), _config(tmp_path / "a", epochs=3))
    h_straight = straight.fit(train_x, val_x, dynamic=True)

    again = Trainer(*_pair(), _config(tmp_path / "b", epochs=3))
    assert [r["train_loss"] for r in again.fit(train_x, val_x, dynamic=True)] == [r["train_loss"] for r in h_straight]

    first = Trainer(*_pair(), _config(tmp_path / "c", epochs=1))
    first.fit(train_x, val_x, dynamic=True)
    resumed = Trainer(*_pair(), _config(tmp_path / "c", epochs=3))
    h_resumed = resumed.fit(train_x, val_x, dynamic=True, resume=True)
    assert [r["train_loss"] for r in h_resumed] == [r["train_loss"] for r in h_straight]
    for name, p in straight.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name
    assert load_checkpoint(tmp_path / "c" / "checkpoint.pt")["epoch"] == 3


def test_resume_refuses_a_different_configuration_and_missing_checkpoint(tmp_path, digits):
    train_x, val_x = digits
    Trainer(*_pair(), _config(tmp_path, epochs=1)).fit(train_x, val_x, dynamic=True)
    with pytest.raises(CheckpointError, match="lr"):
        Trainer(*_pair(), _config(tmp_path, epochs=2, lr=0.01)).fit(train_x, val_x, dynamic=True, resume=True)
    with pytest.raises(CheckpointError, match="shape"):
        Trainer(*_pair(z_dim=5), _config(tmp_path, epochs=2)).fit(train_x, val_x, dynamic=True, resume=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        Trainer(*_pair(), _config(tmp_path / "empty", epochs=2)).fit(train_x, val_x, dynamic=True, resume=True)
    (tmp_path / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "checkpoint.pt")


class PyroExampleVAE(nn.Module):
    """Written the way Pyro's examples/vae/vae.py writes its VAE (softplus encoder, sigmoid
    decoder, Bernoulli with validation off, pyro.module registration): it must train unchanged."""

    def __init__(self, x_dim=64, z_dim=4, hidden=32):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(x_dim, hidden), nn.Linear(hidden, z_dim), nn.Linear(hidden, z_dim)
        self.fc3, self.fc4 = nn.Linear(z_dim, hidden), nn.Linear(hidden, x_dim)
        self.z_dim, self.x_dim = z_dim, x_dim

    def model(self, x):
        pyro.module("decoder", self)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = torch.sigmoid(self.fc4(nn.functional.softplus(self.fc3(z))))
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("encoder", self)
        with pyro.plate("data", x.shape[0]):
            hidden = nn.functional.softplus(self.fc1(x.reshape(-1, self.x_dim)))
            pyro.sample("latent", dist.Normal(self.fc21(hidden), torch.exp(self.fc22(hidden))).to_event(1))


@pytest.mark.parametrize("objective", ["elbo", "iwae:k=4"])
def test_pyros_example_vae_trains_and_scores_unchanged(digits, objective):
    train_x, val_x = digits
    vae = PyroExampleVAE()
    history = Trainer(vae.model, vae.guide, _config(epochs=4, objective=objective)).fit(train_x, val_x, dynamic=True)
    assert history[-1]["val_elbo"] > history[0]["val_elbo"]
    est = log_px(vae.model, vae.guide, val_x.to(DEVICE), k=50)
    assert est.log_px > history[-1]["val_elbo"] - 1.0 and est.k == 50


def test_a_pair_without_parameters_is_refused(digits):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1).expand(z.shape + (64,)), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))

    with pytest.raises(ValueError, match="no parameters"):
        Trainer(model, guide, _config()).fit(*digits)


def test_learning_rate_stages_and_adam_epsilon(digits):
    from ppl_vae.train import stage_lr

    stages = [[1, 1e-3], [3, 1e-3 * 10 ** (-1 / 7)], [9, 1e-3 * 10 ** (-2 / 7)]]  # Burda et al.'s first stages
    assert [stage_lr(stages, e) for e in (0, 1, 3, 4, 12, 13, 99)] == [1e-3, stages[1][1], stages[1][1]] + [stages[2][1]] * 4
    train_x, val_x = digits
    trainer = Trainer(*_pair(), _config(epochs=5, lr_stages=[[1, 1e-3], [3, 1e-4]], adam_eps=1e-4))
    history = trainer.fit(train_x, val_x, dynamic=True)
    assert [r["lr"] for r in history] == [1e-3, 1e-4, 1e-4, 1e-4, 1e-4]
    assert trainer.optimizer.param_groups[0]["eps"] == 1e-4
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(lr_stages=[[1, 1e-3]], lr_decay=0.9)
    with pytest.raises(ValueError, match="lr_stages"):
        TrainConfig(lr_stages=[[0, 1e-3]])


def test_a_run_cut_into_pieces_by_a_time_limit_ends_where_the_whole_run_ends(tmp_path, digits, monkeypatch):
    from ppl_vae.train import Interrupted

    from helpers import StepClock

    monkeypatch.setattr(Trainer, "clock", StepClock(tick=1.0))  # one second a step: the same pieces on any machine
    train_x, val_x = digits
    whole = Trainer(*_pair(), _config(tmp_path / "whole", epochs=3, batch_size=10))
    whole.fit(train_x, val_x, dynamic=True)
    steps, pieces = whole.step, 0
    while True:  # each piece stops after 20 steps, mid-epoch, and the next one resumes it
        trainer = Trainer(*_pair(), _config(tmp_path / "cut", epochs=3, batch_size=10, time_limit=20))
        try:
            trainer.fit(train_x, val_x, dynamic=True, resume=(tmp_path / "cut" / "checkpoint.pt").exists())
            break
        except Interrupted as stop:
            assert "stopped at the time limit (20 s)" in str(stop)
            pieces += 1
            assert trainer.step == 20 * pieces
    assert pieces == steps // 20 and steps > 40
    for name, p in whole.params.items():
        assert torch.equal(p, trainer.params[name]), name
