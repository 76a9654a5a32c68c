"""--model-from: several guides trained against one fixed decoder (the inference gap on a shared model)."""

import json

import pytest
import torch

from ppl_vae.checkpoint import load_checkpoint
from ppl_vae.cli import main

RUN = ["--dataset", "digits", "--epochs", "2", "--z-dim", "3", "--hidden", "16", "--test-k", "5", "--eval-every", "0"]
RUN += ["--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shared") / "mean_field"
    assert main(["train", *RUN, "--out", str(out)]) == 0
    return out


def test_the_model_is_taken_from_the_run_and_held_fixed_while_the_guide_trains(decoder_run, tmp_path, capsys):
    first = load_checkpoint(decoder_run)["params"]
    out = tmp_path / "full_cov"
    assert main(["train", *RUN, "--guide", "full_cov", "--model-from", str(decoder_run), "--out", str(out)]) == 0
    saved = load_checkpoint(out)
    model = [n for n in first if n.startswith("model$$$")]
    assert model and all(torch.equal(saved["params"][n], first[n]) for n in model)
    assert saved["config"]["model_from"] == str(decoder_run)
    assert saved["data_init"].startswith("not applied: the model's parameters come from")  # not re-initialised
    guide = [n for n in saved["params"] if n.startswith("guide$$$")]
    assert guide
    # resume and evaluate read the fixed parameters back with the rest
    assert main(["train", *RUN[:2], *RUN[4:], "--epochs", "3", "--guide", "full_cov", "--model-from", str(decoder_run),
                 "--out", str(out), "--resume"]) == 0  # fmt: skip
    resumed = load_checkpoint(out)
    assert resumed["epoch"] == 3 and all(torch.equal(resumed["params"][n], first[n]) for n in model)
    assert any(not torch.equal(resumed["params"][n], saved["params"][n]) for n in guide)  # the guide kept training
    assert main(["evaluate", str(out), "--k", "10", "--n-points", "20", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((out / "eval-k10-n20" / "evaluation.json").read_text())["log_px"] < 0
    capsys.readouterr()


def test_a_model_that_does_not_match_is_refused_with_the_names(decoder_run, tmp_path, capsys):
    argv = ["train", *RUN, "--hidden", "8", "--model-from", str(decoder_run), "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "its model or data differ from this run's (model_kwargs.hidden: [16] -> [8])" in capsys.readouterr().err
    # the same shapes, another p(x|z): was trained on silently as a continuous Bernoulli decoder
    argv = ["train", *RUN, "--likelihood", "continuous_bernoulli", "--model-from", str(decoder_run), "--out", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "model_kwargs.likelihood: 'bernoulli' -> 'continuous_bernoulli'" in capsys.readouterr().err
    assert main(["train", *RUN, "--model-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "--model-from: checkpoint" in err and "does not exist" in err


def test_from_python_without_a_recorded_spec_the_parameter_shapes_are_checked(decoder_run, tmp_path):
    from ppl_vae import TrainConfig, Trainer
    from ppl_vae.checkpoint import CheckpointError
    from ppl_vae.data import load_dataset
    from ppl_vae.guides import MeanFieldGuide
    from ppl_vae.models import VAE

    x = load_dataset("digits").train.x[:100]
    config = TrainConfig(epochs=1, progress=False, eval_every=0, model_from=str(decoder_run), out=str(tmp_path))
    trainer = Trainer(VAE(x_dim=64, z_dim=3, hidden=(8,)), MeanFieldGuide(x_dim=64, z_dim=3, hidden=(8,)), config)
    with pytest.raises(CheckpointError, match=r"does not match this one .*decoder.0.weight \(16, 3\) vs \(8, 3\)"):
        trainer.fit(torch.bernoulli(x), dynamic=False)
