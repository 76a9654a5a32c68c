"""Runs are never lost or mixed: new folders per run, non-empty folders refused, evaluations in
their own folder, the silent inputs now refused, honest NaN messages, strict JSON."""

import json
import math
import os
from pathlib import Path

import pyro
import pytest

from ppl_vae import TrainConfig, Trainer, TrainingError
from ppl_vae.cli import main
from ppl_vae.data import load_dataset
from ppl_vae.guides import MeanFieldGuide
from ppl_vae.models import VAE
from ppl_vae.run_folder import write_json

from helpers import PoisonedDecoderVAE

TINY = ["--dataset", "digits", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--test-k", "3", "--eval-every", "0",
        "--no-progress", "--device", "cpu"]  # fmt: skip


def _digits():
    d = load_dataset("digits")
    return d.train.x[:200], d.eval_x("val")[:50]


def _err(capsys):
    return capsys.readouterr().err


def test_a_non_empty_output_folder_is_refused_then_resumed_or_replaced(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    first = (out / "result.json").stat().st_mtime_ns
    (out / "my_notes.txt").write_text("mine")
    assert main(["train", *TINY, "--out", str(out)]) == 2
    err = _err(capsys)
    assert "is not empty" in err and "--resume" in err and "--overwrite" in err
    assert (out / "result.json").stat().st_mtime_ns == first  # nothing was touched
    assert main(["train", *TINY, "--out", str(out), "--overwrite"]) == 0
    assert (out / "result.json").stat().st_mtime_ns != first and (out / "my_notes.txt").read_text() == "mine"
    assert main(["train", *TINY, "--out", str(out), "--overwrite", "--resume"]) == 2
    assert "give one of them" in _err(capsys)


def test_each_run_gets_a_new_folder_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY]) == 0
    assert main(["train", *TINY]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all(r.startswith("digits-vae-mean_field-elbo-") for r in runs)
    assert all((tmp_path / "runs" / r / "checkpoint.pt").exists() for r in runs)
    assert main(["train", *TINY, "--resume"]) == 2
    assert "--resume needs --out" in _err(capsys)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--hidden", "0"], "--hidden widths must be positive"),
        (["--z-dim", "0"], "--z-dim must be at least 1"),
        (["--objective", "elbo:k=0"], "must be a positive integer, got 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_silent_training_inputs_are_refused(tmp_path, capsys, extra, message):
    assert main(["train", *TINY, "--out", str(tmp_path / "run"), *extra]) == 2
    assert message in _err(capsys)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_an_empty_width_is_a_typo_not_a_missing_layer(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # '8,,8' was read as two layers of 8
        main(["train", *TINY, "--out", str(tmp_path / "run"), "--hidden", "8,,8"])
    assert stop.value.code == 2 and "expected comma-separated integers like 400,200, got '8,,8'" in _err(capsys)


def test_paths_that_name_the_wrong_kind_of_thing_are_refused(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["train", *TINY, "--out", str(a_file)]) == 2
    assert "is a file" in _err(capsys)
    argv = ["train", "--dataset", "mnist", "--data-dir", str(a_file), "--epochs", "1", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "--data-dir" in _err(capsys)


def test_evaluate_writes_its_own_folder_and_checks_its_output_first(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    pictures = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    base = ["evaluate", str(out), "--k", "4", "--no-progress", "--device", "cpu"]
    assert main(base) == 0
    assert (out / "eval-k4" / "evaluation.json").exists()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == pictures  # training pictures untouched
    for bad in ("-1", "1"):
        assert main([*base, "--n-points", bad]) == 2
        assert f"--n-points must be 0 (all) or at least 2 (points to score), got {bad}" in _err(capsys)
    assert main([*base, "--n-points", "3", "--k", "1"]) == 0  # too few codes for 5 neighbours, one draw for PSIS: said
    report = json.loads((out / "eval-k1-n3" / "evaluation.json").read_text())
    assert "needs more than 5 codes" in report["code_knn"]["skipped"] and "K = 1" in report["k_hat"]["skipped"]
    (tmp_path / "f").write_text("")
    assert main([*base, "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in _err(capsys)
    assert main([*base, "--out", str(tmp_path / "f" / "sub")]) == 2  # cannot be created: before any work
    assert "not writable" in _err(capsys)


def test_compare_checks_every_name_before_the_first_variant(tmp_path, capsys):
    for flag, value, what in (("--guides", "mean_field,ful_cov", "guide"), ("--models", "vae,vea", "model")):
        assert main(["compare", *TINY, "--objectives", "elbo", flag, value, "--out", str(tmp_path / "c")]) == 2
        assert f"unknown {what}" in _err(capsys)
    assert main(["compare", *TINY, "--objectives", "elbo,iwea:k=2", "--out", str(tmp_path / "c")]) == 2
    assert "unknown objective 'iwea'" in _err(capsys)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_the_nan_guard_names_only_a_checkpoint_that_exists(tmp_path):
    train_x, val_x = _digits()
    pyro.set_rng_seed(0)
    model, guide = PoisonedDecoderVAE(bad_step=2), MeanFieldGuide(x_dim=64, z_dim=3, hidden=(16,))
    with pytest.raises(TrainingError) as info:
        Trainer(model, guide, TrainConfig(epochs=2, batch_size=50, out=str(tmp_path), progress=False, eval_every=0)).fit(
            train_x, val_x, dynamic=True
        )
    assert "no checkpoint was written yet" in str(info.value) and "last good checkpoint" not in str(info.value)


def test_skip_fails_when_every_batch_of_an_epoch_is_skipped(tmp_path):
    train_x, val_x = _digits()
    pyro.set_rng_seed(0)
    model, guide = PoisonedDecoderVAE(bad_step=1, persistent=True), MeanFieldGuide(x_dim=64, z_dim=3, hidden=(16,))
    config = TrainConfig(epochs=2, batch_size=50, progress=False, eval_every=0, nan_policy="skip", out=str(tmp_path))
    with pytest.raises(TrainingError, match="every batch of epoch 1 .* was skipped"):
        Trainer(model, guide, config).fit(train_x, val_x, dynamic=True)


def test_a_new_run_from_python_does_not_write_over_another_runs_checkpoint(tmp_path):
    train_x, val_x = _digits()
    config = TrainConfig(epochs=1, batch_size=50, out=str(tmp_path), progress=False, eval_every=0)
    pair = (VAE(x_dim=64, z_dim=3, hidden=(16,)), MeanFieldGuide(x_dim=64, z_dim=3, hidden=(16,)))
    Trainer(*pair, config).fit(train_x, val_x, dynamic=True)
    first = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="holds another run's checkpoint.pt: fit\\(resume=True\\) continues it"):
        Trainer(*pair, config).fit(train_x, val_x, dynamic=True)  # was: the first run's checkpoint replaced
    assert (tmp_path / "checkpoint.pt").read_bytes() == first
    Trainer(*pair, TrainConfig(**{**config.__dict__, "epochs": 2})).fit(train_x, val_x, dynamic=True, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() != first


def test_json_output_is_strict(tmp_path):
    path = write_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf}, "e": 2.5}, tmp_path / "r.json")

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    assert json.loads(Path(path).read_text(), parse_constant=refuse) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2.5}
    assert os.listdir(tmp_path) == ["r.json"]


def test_compare_resume_reads_finished_variants_back_and_continues_the_rest(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["compare", *TINY, "--objectives", "elbo,iwae:k=2", "--out", str(out)]
    assert main(argv) == 0
    assert "variant 1 of 2: elbo" in capsys.readouterr().out
    finished = (out / "elbo" / "result.json").stat().st_mtime_ns
    (out / "iwae_k=2" / "result.json").unlink()  # as if stopped after its checkpoint
    assert main(argv) == 2  # a non-empty comparison folder needs --resume or --overwrite
    assert main([*argv, "--resume"]) == 0
    assert (out / "elbo" / "result.json").stat().st_mtime_ns == finished
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_ctrl_c_in_compare_writes_the_partial_table(tmp_path, monkeypatch):
    import ppl_vae.compare

    real = ppl_vae.compare.train_and_report

    def interrupted_on_the_second(spec, cfg, **kw):
        if cfg.objective != "elbo":
            raise KeyboardInterrupt
        return real(spec, cfg, **kw)

    monkeypatch.setattr(ppl_vae.compare, "train_and_report", interrupted_on_the_second)
    argv = ["compare", *TINY, "--objectives", "elbo,iwae:k=2,stl", "--out", str(tmp_path / "c")]
    assert main(argv) == 130
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "interrupted", "not run"]
    assert "interrupted" in (tmp_path / "c" / "compare.md").read_text()


def test_metrics_csv_holds_each_epoch_once_across_a_resume_and_results_say_what_made_them(tmp_path, capsys):
    import csv

    out = tmp_path / "run"
    base = ["train", "--dataset", "digits", "--hidden", "8", "--z-dim", "2", "--test-k", "3", "--eval-every", "2"]
    assert main([*base, "--epochs", "2", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/2: train_loss" in printed and "epoch 2/2:" in printed  # one line per epoch without a bar
    assert main([*base, "--epochs", "4", "--out", str(out), "--resume", "--no-progress", "--device", "cpu"]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows] == [14, 28, 42, 56] and all(float(r["lr"]) == 1e-3 for r in rows)
    assert [bool(r["val_log_px"]) for r in rows] == [False, True, False, True] and all(r["val_elbo"] for r in rows)
    result = json.loads((out / "result.json").read_text())
    assert set(result["versions"]) == {"ppl_vae", "torch", "pyro", "arviz", "python"}
    assert result["command"][1:3] == ["train", "--dataset"] and result["device_name"]
    assert main(["evaluate", str(out), "--k", "3", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((out / "eval-k3" / "evaluation.json").read_text())["versions"]["pyro"]


def _cells(line: str) -> int:
    import re

    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_tables_parse_back_with_as_many_cells_as_their_header(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["compare", *TINY, "--objectives", "elbo", "--guides", "mean_field,full_cov", "--out", str(out)]
    assert main(argv) == 0
    table = (out / "compare.md").read_text().strip().splitlines()
    assert "elbo \\| mean_field" in table[2]  # the variant's own '|' is escaped
    assert len({_cells(line) for line in table}) == 1
    assert main(["evaluate", str(out / "elbo_mean_field"), "--k", "3", "--no-progress", "--device", "cpu"]) == 0
    report = (out / "elbo_mean_field" / "eval-k3" / "evaluation.md").read_text().strip().splitlines()
    assert any("KL(q(z)\\|\\|p(z))" in line for line in report)
    assert len({_cells(line) for line in report if line.startswith("|")}) == 1


def test_a_new_checkpoint_removes_its_own_reports_and_no_others(tmp_path):
    from ppl_vae.run_folder import remove_stale_outputs

    names = ["eval-k3", "eval-k3-n5", "sample-n4", "eval-best-k3", "sample-best-n4", "eval-mine-k3", "eval-notes"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / ("mine.py" if name == "eval-notes" else "evaluation.json")).write_text("{}")
    note = remove_stale_outputs(tmp_path, "checkpoint.pt")
    assert "eval-k3/, eval-k3-n5/, sample-n4/" in note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval-best-k3", "eval-mine-k3", "eval-notes", "sample-best-n4"]
    assert "eval-best-k3/, sample-best-n4/" in remove_stale_outputs(tmp_path, "best.pt")  # a new best epoch
    assert remove_stale_outputs(tmp_path, "best.pt") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval-mine-k3", "eval-notes"]  # another checkpoint's; the user's
