"""A user's own model and guide: file.py:name on the command line, Python-API checkpoints opened by
the CLI, the objectives as Pyro SVI losses, and the param store left alone or announced."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pyro
import pyro.optim
import pytest
import torch

from ppl_vae import TrainConfig, Trainer, get_objective
from ppl_vae.cli import main
from ppl_vae.guides import MeanFieldGuide
from ppl_vae.models import VAE
from ppl_vae.train import ParamStoreNote

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "own_model.py"
COMMON = ["--epochs", "1", "--test-k", "4", "--eval-every", "0", "--no-progress", "--device", "cpu"]

USER_FILE = textwrap.dedent(
    """
    import pyro, pyro.distributions as dist, torch
    from torch import nn

    decoder = nn.Linear(2, 64)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    class Encoder(nn.Module):
        def __init__(self, x_dim, z_dim=2):
            super().__init__()
            self.net = nn.Linear(x_dim, 2 * z_dim)

        def forward(self, x):
            pyro.module("encoder", self)
            loc, raw = self.net(x).chunk(2, -1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    def outside_the_plate(x):
        pyro.module("encoder2", decoder)
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(2))

    class NeedsMore:
        def __init__(self, x_dim, depth):
            pass

    not_callable = 3
    """
)


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(USER_FILE)
    return path


def test_a_function_model_and_a_class_guide_from_a_file_train_evaluate_and_sample(user_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--model", f"{user_file}:model", "--guide", f"{user_file}:Encoder", "--out", str(out)]
    assert main([*argv, *COMMON]) == 0
    meta = json.loads((out / "result.json").read_text())["config"]["meta"]
    assert meta["model"] == f"{user_file.resolve()}:model" and meta["guide"] == f"{user_file.resolve()}:Encoder"
    assert main(["evaluate", str(out), "--k", "5", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((out / "eval-k5" / "evaluation.json").read_text())["k"] == 5
    assert main(["sample", str(out), "--n", "4", "--device", "cpu"]) == 0
    assert (out / "sample-n4" / "samples.png").exists()


@pytest.mark.parametrize(
    "model, guide, message",
    [
        ("{f}:model", "{f}:outside_the_plate", "guide site 'z' is not inside pyro.plate('data')"),
        ("{f}:model", "{f}:nope", "has no attribute 'nope'"),
        ("{f}:model", "{f}:NeedsMore", "it needs ['depth']"),
        ("{f}:model", "{f}:not_callable", "is a int, not a callable"),
        ("{d}/missing.py:model", "mean_field", "there is no file"),
        ("{f}:model", None, "needs a guide too"),
        ("vea", None, "unknown model 'vea'"),
    ],
)
def test_a_broken_own_pair_is_refused_before_training_with_the_reason(user_file, tmp_path, capsys, model, guide, message):
    fill = lambda s: s.format(f=user_file, d=tmp_path)  # noqa: E731
    argv = ["train", "--dataset", "digits", "--model", fill(model), *(["--guide", fill(guide)] if guide else [])]
    assert main([*argv, "--out", str(tmp_path / "run"), *COMMON]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_compare_takes_own_guides(user_file, tmp_path):
    argv = ["compare", "--dataset", "digits", "--objectives", "elbo", "--guides", f"mean_field,{user_file}:Encoder"]
    assert main([*argv, "--z-dim", "2", "--hidden", "8", "--out", str(tmp_path / "c"), *COMMON]) == 0
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_a_checkpoint_written_from_python_is_evaluated_by_the_cli(tmp_path, capsys):
    """Trainer from Python records no data, model or guide names: the CLI asks for them, then scores it."""
    x = (np.random.default_rng(0).random((120, 784)) * 255).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x[:80], x_test=x[80:])
    pyro.set_rng_seed(0)
    from ppl_vae import load_dataset

    data = load_dataset(str(tmp_path / "d.npz"))
    model = f"{EXAMPLE}:TwoLayerVAE.model"
    guide = f"{EXAMPLE}:TwoLayerVAE.guide"
    from ppl_vae.pair import build_pair

    pair = build_pair({"model": model, "guide": guide}, data.x_dim, data.image_shape)
    Trainer(*pair, TrainConfig(epochs=1, batch_size=20, eval_every=0, progress=False, out=str(tmp_path / "py"))).fit(
        data.train.x, None, dynamic=True
    )
    ckpt = str(tmp_path / "py" / "checkpoint.pt")
    assert main(["evaluate", ckpt, "--k", "3", "--no-progress", "--device", "cpu"]) == 2
    assert "pass --data PATH, --model and --guide" in capsys.readouterr().err
    argv = ["evaluate", ckpt, "--k", "3", "--data", str(tmp_path / "d.npz"), "--model", model, "--guide", guide]
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "py" / "eval-k3-data-d" / "evaluation.json").read_text())["n"] == 40


def test_sample_needs_no_data(tmp_path, capsys):
    x = (np.random.default_rng(0).random((60, 8, 8)) * 255).astype(np.uint8)
    np.save(tmp_path / "d.npy", x)
    out = tmp_path / "run"
    argv = ["train", "--data", str(tmp_path / "d.npy"), "--hidden", "8", "--z-dim", "2", "--out", str(out)]
    assert main([*argv, *COMMON]) == 0
    (tmp_path / "d.npy").unlink()
    assert main(["sample", str(out), "--n", "9", "--device", "cpu"]) == 0
    assert "samples only" in capsys.readouterr().err and (out / "sample-n9" / "samples.png").exists()
    assert not (out / "sample-n9" / "reconstructions.png").exists()


@pytest.mark.parametrize(
    "spec", ["elbo", "meanfield", "iwae:k=5", "dreg:k=3", "stl", "vr:alpha=0.5,k=3", "elbo:warmup=10", "jit_elbo"]
)
def test_every_objective_is_a_pyro_svi_loss(spec):
    pyro.set_rng_seed(0)
    model, guide = VAE(x_dim=16, z_dim=2, hidden=(8,)), MeanFieldGuide(x_dim=16, z_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((10, 16), 0.4))
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=get_objective(spec))
    before = svi.evaluate_loss(x)
    losses = [svi.step(x) for _ in range(30)]
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < before


def test_trainer_says_when_it_drops_a_users_parameters():
    pyro.param("my_scale", torch.ones(3))
    model, guide = VAE(x_dim=16, z_dim=2, hidden=(8,)), MeanFieldGuide(x_dim=16, z_dim=2, hidden=(8,))
    with pytest.warns(ParamStoreNote, match="dropped 1 parameter.*my_scale"):
        Trainer(model, guide, TrainConfig(progress=False))
    trainer = Trainer(model, guide, TrainConfig(epochs=1, progress=False, eval_every=0))
    trainer.fit(torch.bernoulli(torch.full((20, 16), 0.4)), None)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the trainers' own parameters are no user's: no note
        Trainer(model, guide, TrainConfig(progress=False))
