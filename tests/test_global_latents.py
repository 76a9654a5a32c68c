"""Global latents (sites outside pyro.plate("data")): trained by the objectives that are right with
them, their terms weighted B / N per minibatch, to the exact posterior of a conjugate model; refused
by the per-point objectives and log p(x) with the reason."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

from ppl_vae import TrainConfig, Trainer, get_objective, log_px
from ppl_vae.global_latents import GlobalScaled, global_sites

N, B = 200, 10


def model(x):
    """mu ~ N(0, 1) shared by all points; x_n ~ N(mu, 1): p(mu | x) = N(sum x / (N + 1), 1 / (N + 1))."""
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(mu, 1.0).expand([x.shape[0], 1]).to_event(1), obs=x)


def guide(x):
    loc = pyro.param("q_loc", torch.tensor(0.0))
    scale = pyro.param("q_scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def _data():
    return 3.0 + torch.randn(N, 1, generator=torch.Generator().manual_seed(0))


NOTHING_TO_ENUMERATE = pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")


@pytest.mark.parametrize("objective", ["elbo", "meanfield", pytest.param("enum", marks=NOTHING_TO_ENUMERATE), "tracegraph"])
def test_the_minibatch_losses_add_up_to_the_whole_data_sets_loss(objective):
    """With the same draw of mu for every minibatch, the B / N weighting makes the N / B minibatch
    losses sum to the loss of all N points at once, where the global terms count once: exactly."""
    x = _data()
    pyro.clear_param_store()
    pyro.param("q_loc", torch.tensor(1.0))
    pyro.param("q_scale", torch.tensor(0.5), constraint=constraints.positive)
    inner = get_objective(objective)
    inner.loss(model, guide, x)  # its first call may check the pair (drawing numbers): done before the seeded ones
    scaled = GlobalScaled(inner, N)
    parts = []
    for xb in x.split(B):
        pyro.set_rng_seed(0)
        parts.append(scaled.loss(model, guide, xb))
    pyro.set_rng_seed(0)
    whole = inner.loss(model, guide, x)
    assert sum(parts) == pytest.approx(whole, rel=1e-5)
    pyro.set_rng_seed(0)
    unscaled = sum(inner.loss(model, guide, xb) for xb in x.split(B))
    assert abs(unscaled - whole) > 1.0  # without the weighting the global terms would count N / B times


def test_a_global_latent_is_trained_toward_the_exact_posterior_by_the_trainer():
    x = _data()
    exact_loc = float(x.sum()) / (N + 1)
    config = TrainConfig(epochs=20, batch_size=B, lr=0.02, progress=False, eval_every=0, seed=0)
    trainer = Trainer(model, guide, config)
    history = trainer.fit(x, val_x=x[:50])
    assert isinstance(trainer.objective, GlobalScaled) and trainer.objective.sites == ["mu"]
    # the posterior mean is reached quickly (its sd, 0.07, needs far more steps of a weak gradient)
    assert abs(float(pyro.param("q_loc").detach()) - exact_loc) < 0.05
    assert all(math.isfinite(row["val_elbo"]) for row in history) and "val_log_px" not in history[-1]


@pytest.mark.parametrize("objective", ["iwae:k=5", "vimco:k=3", "dreg:k=3"])
def test_the_per_point_objectives_refuse_a_global_latent_with_the_reason(objective):
    with pytest.raises(ValueError, match=r"global latent site\(s\) \['mu'\].*train with elbo, meanfield, enum or tracegraph"):
        Trainer(model, guide, TrainConfig(epochs=1, objective=objective, progress=False, eval_every=0)).fit(_data())


def test_log_px_refuses_a_global_latent_saying_why_and_what_to_do():
    with pytest.raises(ValueError, match="'mu' is not inside pyro.plate\\('data'\\): a global latent.*pyro.condition"):
        log_px(model, guide, _data(), k=10)


def test_global_sites_are_found_and_local_ones_are_not():
    from ppl_vae.guides import MeanFieldGuide
    from ppl_vae.models import VAE

    assert global_sites(model, guide, _data()[:2]) == ["mu"]
    assert global_sites(VAE(x_dim=4, z_dim=2, hidden=(3,)), MeanFieldGuide(x_dim=4, z_dim=2, hidden=(3,)), torch.ones(2, 4)) == []


def test_the_command_line_refuses_a_global_latent_before_training_saying_what_to_do(tmp_path, capsys):
    from ppl_vae.cli import main

    user = tmp_path / "shared_shift.py"
    user.write_text(
        "import pyro, pyro.distributions as dist, torch\n"
        "from torch import nn\n"
        "dec, enc = nn.Linear(2, 64), nn.Linear(64, 4)\n"
        "def model(x):\n"
        "    pyro.module('dec', dec)\n"
        "    shift = pyro.sample('shift', dist.Normal(x.new_zeros(64), 1.0).to_event(1))\n"
        "    with pyro.plate('data', x.shape[0]):\n"
        "        z = pyro.sample('z', dist.Normal(x.new_zeros(2), 1.0).to_event(1))\n"
        "        pyro.sample('x', dist.Bernoulli(logits=dec(z) + shift).to_event(1), obs=x)\n"
        "def guide(x):\n"
        "    pyro.module('enc', enc)\n"
        "    pyro.sample('shift', dist.Normal(pyro.param('shift_loc', torch.zeros(64)), 0.1).to_event(1))\n"
        "    with pyro.plate('data', x.shape[0]):\n"
        "        m, s = enc(x).chunk(2, -1)\n"
        "        pyro.sample('z', dist.Normal(m, nn.functional.softplus(s) + 1e-3).to_event(1))\n"
    )
    out = tmp_path / "run"
    args = ["train", "--model", f"{user}:model", "--guide", f"{user}:guide", "--dataset", "digits", "--epochs", "1"]
    assert main([*args, "--no-progress", "--device", "cpu", "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "global latent site(s) ['shift']" in err and "Trainer" in err
    assert not (out / "checkpoint.pt").exists()
