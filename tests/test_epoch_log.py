"""After each epoch: best.pt, early stopping, TensorBoard scalars, the one-line log."""

import csv
import json

import pyro
import pytest
import torch

from ppl_vae import TrainConfig, Trainer
from ppl_vae.checkpoint import load_checkpoint
from ppl_vae.cli import main
from ppl_vae.data import load_dataset
from ppl_vae.epoch_log import best_row, epoch_line, patience_ran_out
from ppl_vae.guides import MeanFieldGuide
from ppl_vae.models import VAE

# validation log p(x) per epoch, scripted: best at epoch 2, then worse
SCRIPT = [-100.0, -90.0, -95.0, -96.0, -97.0, -98.0]


def _digits():
    d = load_dataset("digits")
    return d.train.x[:200], d.eval_x("val")[:50]


def _trainer(out, **kw):
    pyro.set_rng_seed(0)
    model, guide = VAE(x_dim=64, z_dim=2, hidden=(8,)), MeanFieldGuide(x_dim=64, z_dim=2, hidden=(8,))
    cfg = dict(epochs=6, batch_size=50, eval_every=1, progress=False, device="cpu", out=str(out) if out else None)
    return Trainer(model, guide, TrainConfig(**{**cfg, **kw}))


def _scripted(trainer, seen):
    """Replace validation by SCRIPT, recording the parameters each epoch ended with."""

    def validate(val_x):
        seen[trainer.epoch] = trainer.state_dict()
        return {"val_elbo": SCRIPT[trainer.epoch - 1] - 5, "val_log_px": SCRIPT[trainer.epoch - 1], "val_log_px_se": 1.0}

    trainer.validate = validate


def test_the_pure_rules():
    history = [{"epoch": i + 1, "val_log_px": v} for i, v in enumerate(SCRIPT)]
    assert best_row(history, "val_log_px")["epoch"] == 2
    assert patience_ran_out(history[:3], "val_log_px", 2) is None  # one epoch after the best
    assert patience_ran_out(history[:4], "val_log_px", 2)["epoch"] == 2
    assert patience_ran_out(history, "val_log_px", 0) is None  # 0 = never
    # measured every second epoch only: the check waits for a measurement
    sparse = [{"epoch": 1, "val_log_px": -1.0}, {"epoch": 2}, {"epoch": 3}]
    assert patience_ran_out(sparse, "val_log_px", 1) is None and patience_ran_out(sparse[:1], "val_log_px", 1) is None
    assert best_row([{"epoch": 1, "val_log_px": float("nan")}], "val_log_px") is None
    line = epoch_line(
        {"epoch": 3, "train_loss": 80.0, "val_log_px": -79.5, "val_log_px_se": 1.2, "val_k": 100, "seconds": 0.5}, 9
    )
    assert line == "epoch 3/9: train_loss 80.00, val_log_px -79.50 ± 1.20 (K=100), 0.50 s"


def test_early_stop_keeps_the_best_epoch_and_a_resume_stops_where_the_run_stopped(tmp_path, capsys):
    train_x, val_x = _digits()
    trainer, seen = _trainer(tmp_path, early_stop=2), {}
    _scripted(trainer, seen)
    history = trainer.fit(train_x, val_x, dynamic=True)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # epoch 4 is 2 epochs after the best (2)
    assert trainer.stopped_early == 2 and "early stop after epoch 4" in capsys.readouterr().out
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 2
    for name, value in seen[2].items():
        assert torch.equal(best["params"][name], value)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 4
    assert trainer.restore_best() == 2
    assert all(torch.equal(trainer.params[n].detach(), v) for n, v in seen[2].items())

    again = _trainer(tmp_path, early_stop=2)  # a fresh process: nothing in memory but best.pt
    _scripted(again, {})
    assert len(again.fit(train_x, val_x, dynamic=True, resume=True)) == 4 and again.stopped_early == 2
    assert again.restore_best() == 2
    assert all(torch.equal(again.params[n].detach(), v) for n, v in seen[2].items())


def test_without_early_stop_best_pt_follows_the_best_epoch_and_training_runs_on(tmp_path):
    train_x, val_x = _digits()
    trainer, seen = _trainer(tmp_path), {}
    _scripted(trainer, seen)
    assert len(trainer.fit(train_x, val_x, dynamic=True)) == 6
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    with pytest.raises(ValueError, match="give validation data"):
        _trainer(None, early_stop=1).fit(train_x, dynamic=True)
    with pytest.raises(ValueError, match="early_stop must be 0"):
        TrainConfig(early_stop=-1)


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_holds_each_epoch_once_and_matches_metrics_csv(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--dataset", "digits", "--hidden", "8", "--z-dim", "2", "--test-k", "3", "--eval-every", "2",
            "--eval-k", "3", "--out", str(out), "--no-progress", "--device", "cpu", "--tensorboard"]  # fmt: skip
    assert main([*base, "--epochs", "2"]) == 0
    assert main([*base, "--epochs", "3", "--resume"]) == 0
    scalars = _scalars(out / "tensorboard")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]
    for (_, value), row in zip(scalars["train/loss"], rows):
        assert value == pytest.approx(float(row["train_loss"]), rel=1e-6)  # float32 in the event file
    assert [step for step, _ in scalars["val/log_px"]] == [2, 3]  # measured every 2 epochs and at the end
    assert {"val/elbo", "val/rate", "val/distortion", "time/seconds_per_epoch", "optim/lr"} <= set(scalars)
    result = json.loads((out / "result.json").read_text())
    assert result["best"]["monitor"] == "val_log_px" and result["best"]["epoch"] in (2, 3)
    assert result["scored_epoch"] == 3 and not result["stopped_early"]


def test_cli_early_stop_scores_the_best_epoch_and_evaluate_reads_best_pt(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--hidden", "8", "--z-dim", "2", "--test-k", "3", "--eval-every", "1",
            "--eval-k", "3", "--epochs", "3", "--early-stop", "1", "--out", str(out), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    best = result["best"]
    assert best["checkpoint"] == str(out / "best.pt") and load_checkpoint(out / "best.pt")["epoch"] == best["epoch"]
    assert result["scored_epoch"] == best["epoch"]
    assert "best epoch" in capsys.readouterr().out
    assert main(["evaluate", str(out / "best.pt"), "--k", "3", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((out / "eval-best-k3" / "evaluation.json").read_text())["epochs"] == best["epoch"]
    assert main([*argv[:-5], "--out", str(out), "--overwrite", "--no-progress", "--device", "cpu"]) == 0
    assert not (out / "eval-best-k3").exists()  # the old run's evaluation went with it


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--tensorboard",
            "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    assert "--tensorboard needs the tensorboard package: pip install tensorboard" in capsys.readouterr().err
