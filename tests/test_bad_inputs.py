"""Inputs that used to exit 0 with a wrong or lost result, or fail only after the work, or fail with a
message no user could act on: each is refused up front, warned about, or done right."""

import json

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import TrainConfig, Trainer, get_objective, load_dataset, log_px
from ppl_vae.cli import main
from ppl_vae.pixels import DataError

RNG = np.random.default_rng(0)
TINY = ["--epochs", "1", "--hidden", "8", "--test-k", "4", "--eval-every", "0", "--no-progress", "--device", "cpu"]


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_images_are_read_as_images(tmp_path, channels):
    x = RNG.integers(0, 256, (30, 12, 12, channels), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x)
    data = load_dataset(str(tmp_path / "d.npz"), binarize="none")
    assert data.image_shape == ((12, 12) if channels == 1 else (3, 12, 12))
    first = torch.cat([data.train.x, data.val.x, data.test.x])  # every split, in some order: compare as sets of rows
    expected = torch.from_numpy(np.moveaxis(x, -1, 1).reshape(30, -1) / 255.0).float()
    assert {tuple(r.tolist()) for r in first} == {tuple(r.tolist()) for r in expected}


def test_a_layout_that_cannot_be_told_is_refused_and_layout_says_it(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x_train=RNG.integers(0, 256, (30, 3, 9, 3), dtype=np.uint8))
    code, out = _run(["train", "--data", str(tmp_path / "d.npz"), *TINY, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "cannot tell whether its channels come first" in out and "--layout" in out
    assert load_dataset(str(tmp_path / "d.npz"), binarize="none", layout="nhwc").image_shape == (3, 3, 9)


def test_scale_255_on_data_already_in_the_unit_interval_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x_train=RNG.random((40, 16)).astype(np.float32))
    code, out = _run(["train", "--data", str(tmp_path / "d.npz"), "--scale", "255", *TINY, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "already in [0, 1]" in out and "blank" in out
    binary = (RNG.random((40, 16)) > 0.5).astype(np.uint8)  # 0/1 bytes are pixels already, not 0..255
    np.savez(tmp_path / "b.npz", x_train=binary)
    assert load_dataset(str(tmp_path / "b.npz")).train.x.max() == 1.0


def test_too_few_points_to_split_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=RNG.random((3, 16)).astype(np.float32))
    with pytest.raises(DataError, match="too few to hold out"):
        load_dataset(str(tmp_path / "d.npz"))


def test_nan_is_reported_with_its_file_split_and_row(tmp_path):
    x = RNG.random((40, 16)).astype(np.float32)
    x[17, 3] = np.nan
    np.savez(tmp_path / "d.npz", x_train=x)
    with pytest.raises(DataError, match="d.npz x_train row 17 holds NaN"):
        load_dataset(str(tmp_path / "d.npz"))


@pytest.mark.parametrize("content", [b"\x00\x01garbage" * 10, "truncated"])
def test_an_unreadable_npz_is_one_clean_message(tmp_path, content):
    path = tmp_path / "d.npz"
    if content == "truncated":
        np.savez(path, x_train=RNG.random((40, 16)))
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="cannot read .* it is truncated, or not a NumPy file") as info:
        load_dataset(str(path))
    assert "allow_pickle" not in str(info.value) and "unsafe" not in str(info.value)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--dataset", "digits", "--data", "{npz}"], "give --data (your own file or folder) or --dataset digits, not both"),
        (["--dataset", "digits", "--data-dir", "{tmp}"], "--data-dir is read by the data sets kept in local files"),
        (["--dataset", "digits", "--z-dims", "5,3"], "--z-dims: not an option of the vae model"),
        (
            ["--dataset", "digits", "--model", "linear_gaussian", "--prior", "vamp"],
            "--prior: not an option of the linear_gaussian",
        ),
        (["--dataset", "digits", "--model", "hierarchical", "--z-dim", "4"], "--z-dim: not an option of the hierarchical model"),
        (["--dataset", "digits", "--objective", "iwae:k=5,k=50"], "objective parameter 'k' is given twice"),
        (["--dataset", "digits", "--objective", "elbo:beta=nan"], "beta='nan' in 'elbo:beta=nan' must be a finite number"),
        (["--dataset", "digits", "--time-limit", "-1"], "--time-limit must be 0 (no limit) or a positive number of minutes"),
        (["--dataset", "digits", "--time-limit", "nan"], "--time-limit must be 0 (no limit) or a positive number of minutes"),
        (["--dataset", "digits", "--guide", "deterministic"], "a MAP-like objective"),
    ],
)
def test_options_that_would_be_ignored_or_misread_are_refused(tmp_path, capsys, argv, words):
    np.savez(tmp_path / "d.npz", x_train=RNG.random((40, 16)).astype(np.float32))
    argv = [a.format(npz=tmp_path / "d.npz", tmp=tmp_path) for a in argv]
    code, out = _run(["train", *argv, *TINY, "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and words in out, out
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_a_seed_out_of_range_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--seed", "99999999999999999999"])
    assert "--seed must be an integer in [0, 4294967295]" in capsys.readouterr().err


# --------------------------------------------------------------------------- what a report says


def test_the_report_records_the_objective_with_its_defaults(tmp_path, capsys):
    code, out = _run(
        ["train", "--dataset", "digits", "--z-dim", "2", "--objective", "iwae", *TINY, "--out", str(tmp_path)], capsys
    )
    assert code == 0 and "objective iwae (iwae:k=5)" in out
    assert json.loads((tmp_path / "result.json").read_text())["objective_resolved"] == "iwae:k=5"


def test_a_point_mass_guide_is_followed_by_its_reconstruction_error_not_an_elbo(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--z-dim", "2", "--guide", "deterministic", "--objective", "wae_mmd", "--epochs", "2"]
    code, out = _run([*argv, *TINY[2:], "--out", str(tmp_path)], capsys)
    assert code == 0 and "val_distortion" in out and "val_elbo" not in out
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["best"]["monitor"] == "val_distortion" and "val_elbo" not in result["history"][-1]


def test_resume_to_fewer_epochs_than_trained_is_refused(tmp_path, capsys):
    base = ["train", "--dataset", "digits", "--z-dim", "2", *TINY[2:], "--out", str(tmp_path)]
    assert main([*base, "--epochs", "2"]) == 0
    assert main(["evaluate", str(tmp_path), "--k", "3", "--no-progress", "--device", "cpu"]) == 0
    assert main(["sample", str(tmp_path), "--n", "4", "--device", "cpu"]) == 0
    assert main(["sample", str(tmp_path / "epoch2.pt"), "--n", "4", "--device", "cpu"]) == 2  # not there: no folder
    kept = (tmp_path / "eval-k3" / "evaluation.json", tmp_path / "sample-n4" / "samples.png")
    (tmp_path / "mine.pt").write_bytes((tmp_path / "checkpoint.pt").read_bytes())  # a user's copy of epoch 2
    assert main(["sample", str(tmp_path / "mine.pt"), "--n", "4", "--device", "cpu"]) == 0
    (tmp_path / "eval-notes").mkdir()
    (tmp_path / "eval-notes" / "mine.py").write_text("# a user's folder, named as evaluations are")
    capsys.readouterr()
    code, out = _run([*base, "--epochs", "1", "--resume"], capsys)
    assert code == 2 and "has trained 2 epochs, more than the 1 asked for" in out
    assert json.loads((tmp_path / "result.json").read_text())["epochs"] == 2  # the result is as it was
    code, out = _run([*base, "--epochs", "3", "--resume", "--z-dim", "3"], capsys)
    assert code == 2 and "meta.model_kwargs.z_dim: 2 -> 3" in out and "meta.guide_kwargs.z_dim: 2 -> 3" in out
    assert all(path.exists() for path in kept)  # a refused resume wrote no checkpoint: its reports stand (were removed)
    code, out = _run([*base, "--epochs", "3", "--resume"], capsys)
    assert code == 0 and "removed from" in out and not any(path.exists() for path in kept)
    assert (tmp_path / "eval-notes" / "mine.py").exists() and (tmp_path / "sample-mine-n4" / "samples.png").exists()


def test_an_evaluation_is_never_replaced_silently_and_changed_data_are_noticed(tmp_path, capsys):
    x = (RNG.random((60, 16)) > 0.5).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x)
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--z-dim", "2", *TINY, "--out", str(run)]) == 0
    evaluate = ["evaluate", str(run), "--no-progress", "--device", "cpu"]
    assert main([*evaluate, "--k", "20"]) == 0
    assert main([*evaluate, "--k", "20", "--n-points", "5"]) == 0  # a quick check: its own folder
    assert (run / "eval-k20" / "evaluation.json").exists() and (run / "eval-k20-n5" / "evaluation.json").exists()
    capsys.readouterr()
    code, out = _run([*evaluate, "--k", "20"], capsys)
    assert code == 2 and "already holds an evaluation" in out and "--overwrite" in out
    assert main([*evaluate, "--k", "20", "--overwrite"]) == 0
    capsys.readouterr()
    np.savez(tmp_path / "d.npz", x_train=1 - x)  # other contents at the recorded path
    assert main([*evaluate, "--k", "7"]) == 0
    assert "differ from the data the model was trained on" in capsys.readouterr().err
    assert any("differ" in note for note in json.loads((run / "eval-k7" / "evaluation.json").read_text())["notes"])


def test_sampling_never_replaces_the_training_runs_pictures(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--z-dim", "2", *TINY, "--out", str(run)]) == 0
    trained = {name: (run / name).read_bytes() for name in ("samples.png", "reconstructions.png")}
    sample = ["sample", str(run), "--n", "4", "--device", "cpu"]
    assert main(sample) == 0 and main(sample) == 0  # its own folder; the same setting simply redraws
    assert (run / "sample-n4" / "samples.png").exists() and (run / "sample-n4" / "reconstructions.png").exists()
    capsys.readouterr()
    code, out = _run([*sample, "--out", str(run)], capsys)  # was: the run's pictures replaced
    assert code == 2 and "already holds reconstructions.png and samples.png" in out and "--overwrite" in out
    assert {name: (run / name).read_bytes() for name in trained} == trained
    assert main([*sample, "--out", str(run), "--overwrite"]) == 0
    assert (run / "samples.png").read_bytes() != trained["samples.png"]


def test_a_checkpoint_of_random_bytes_is_one_message_without_torch_advice(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x02garbage" * 50)
    code, out = _run(["evaluate", str(tmp_path), "--no-progress", "--device", "cpu"], capsys)
    assert code == 2 and "truncated or not a ppl_vae checkpoint" in out and "weights_only" not in out
    assert not list(tmp_path.glob("eval-*"))  # a refused command leaves no empty folder behind


def test_a_missing_checkpoint_names_the_runs_of_a_comparison_and_leaves_no_folders(tmp_path, capsys):
    for run in ("elbo", "iwae_k=5"):  # a comparison's folder holds one run folder per variant
        (tmp_path / run).mkdir()
        (tmp_path / run / "checkpoint.pt").write_bytes(b"")
    code, out = _run(["evaluate", str(tmp_path), "--no-progress", "--device", "cpu"], capsys)
    assert code == 2 and f"holds the runs {tmp_path / 'elbo'}, {tmp_path / 'iwae_k=5'}; name one of them" in out
    code, out = _run(["sample", str(tmp_path / "not" / "there.pt"), "--device", "cpu"], capsys)
    assert code == 2 and "does not exist" in out
    run = tmp_path / "elbo"
    assert main(["train", "--dataset", "digits", "--z-dim", "2", *TINY, "--out", str(run), "--overwrite"]) == 0
    code, out = _run(["sample", str(run), "--data-dir", str(tmp_path)], capsys)  # was: a note, and the folder unread
    assert code == 2 and "this checkpoint's data (digits) are not one of them: drop --data-dir" in out
    assert not (run / "sample-n64").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elbo", "iwae_k=5"]  # no eval-k1000/, no not/sample-n64/


# --------------------------------------------------------------------------- failing before the work, not after


def _encoder_guide(x_dim: int):
    encoder = nn.Linear(x_dim, 4)

    def guide(x):
        pyro.module("encoder", encoder)
        loc, raw = encoder(x).split(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    return guide


def _user_pair(decoder: nn.Module, decode, x_dim=64):
    """A user's model (``decode(decoder, z, x)`` gives the logits and what they observe) with a plain encoder."""

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            logits, observed = decode(decoder, z, x)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=observed)

    return model, _encoder_guide(x_dim)


def _partial_pair(x_dim=64, observed=10):
    """A user's pair whose model observes only the first ``observed`` features."""
    return _user_pair(nn.Linear(2, observed), lambda dec, z, x: (dec(z), x[..., :observed]), x_dim)


def _flat_pair(x_dim=64):
    """A user's pair whose networks concatenate [z, x] without broadcasting over a sample dimension."""
    return _user_pair(nn.Linear(2 + x_dim, x_dim), lambda dec, z, x: (dec(torch.cat([z, x * 0], -1)), x), x_dim)


def test_a_model_observing_part_of_each_point_is_refused_before_training():
    x = torch.bernoulli(torch.full((40, 64), 0.3))
    with pytest.raises(DataError, match="observed sites hold x: 10 values per point, and training data has 64"):
        Trainer(*_partial_pair(), TrainConfig(epochs=1, progress=False, eval_every=0)).fit(x)


@pytest.mark.parametrize("objective", ["elbo", "iwae:k=5"])
def test_a_pair_that_does_not_broadcast_trains_one_particle_at_a_time_and_says_so(objective):
    """Pyro's Trace_ELBO runs such a pair one sample at a time; here it is found before the first step,
    said once with the fix, and its particles run one at a time (tests/test_one_at_a_time.py)."""
    from ppl_vae.particles import SequentialParticles

    x = torch.bernoulli(torch.full((40, 64), 0.3))
    with pytest.warns(SequentialParticles, match="do not broadcast.*one at a time.*expand inputs"):
        Trainer(*_flat_pair(), TrainConfig(epochs=1, progress=False, eval_every=0, objective=objective)).fit(x)
    with pytest.warns(SequentialParticles):
        assert log_px(*_flat_pair(), x, k=10).log_px < 0


@pytest.mark.parametrize(
    "x, words",
    [
        (torch.randint(0, 256, (5, 64), dtype=torch.uint8), "holds uint8 pixels"),
        (torch.full((5, 64), float("nan")), "NaN"),
        (torch.ones(64), "a batch of points"),
        (torch.full((5, 64), 3.0), "outside the support"),
    ],
)
def test_log_px_from_python_checks_its_input_as_fit_does(x, words):
    from ppl_vae.guides import MeanFieldGuide
    from ppl_vae.models import VAE

    with pytest.raises(ValueError, match=words):
        log_px(VAE(x_dim=64, z_dim=2, hidden=(8,)), MeanFieldGuide(x_dim=64, z_dim=2, hidden=(8,)), x, k=3)


def test_memory_that_cannot_fit_is_refused_up_front_and_log_px_shrinks_its_chunks(monkeypatch):
    from ppl_vae import budget
    from ppl_vae.guides import MeanFieldGuide
    from ppl_vae.models import VAE

    x = torch.bernoulli(torch.full((40, 64), 0.3))
    pair = lambda: (VAE(x_dim=64, z_dim=2, hidden=(8,)), MeanFieldGuide(x_dim=64, z_dim=2, hidden=(8,)))  # noqa: E731
    pyro.set_rng_seed(0)
    model, guide = pair()
    ample = log_px(model, guide, x, k=50, seed=1)
    monkeypatch.setattr(budget, "available_bytes", lambda device: 20_000)  # 20 kB free
    small = log_px(model, guide, x, k=50, seed=1)  # chunks of a few samples x points: slower, not a crash
    assert abs(small.log_px - ample.log_px) < 4 * (small.mc_se + ample.mc_se) + 0.5
    # 20 kB at 3 x 4 bytes x 200 numbers a sample: a quarter of it holds 2 samples of one point
    assert budget.scoring_chunk(500, 100, 200, torch.device("cpu")) == (1, 2)
    with pytest.raises(ValueError, match=r"training needs about .* GiB .* has 0.00 GiB free: use a smaller --z-dim"):
        Trainer(*pair(), TrainConfig(epochs=1, progress=False, eval_every=0)).fit(x)


def test_scoring_that_would_take_days_is_refused_before_training_unless_forced(tmp_path, capsys):
    from ppl_vae.importance_sampling import check_scoring_time

    argv = ["train", "--dataset", "digits", "--z-dim", "2", "--hidden", "8", "--test-k", "100000000", "--epochs", "1"]
    code, out = _run([*argv, "--no-progress", "--device", "cpu", "--out", str(tmp_path)], capsys)
    assert code == 2 and "far beyond what log p(x) needs" in out and "hours" in out and "--force" in out
    assert not (tmp_path / "checkpoint.pt").exists()
    from ppl_vae.guides import MeanFieldGuide
    from ppl_vae.models import VAE

    x = torch.bernoulli(torch.full((200, 64), 0.3))
    model, guide = VAE(x_dim=64, z_dim=2, hidden=(8,)), MeanFieldGuide(x_dim=64, z_dim=2, hidden=(8,))
    assert check_scoring_time(model, guide, x, 10**12, force=True) > 12 * 3600  # timed on one chunk, not run
    from ppl_vae.budget import refuse_long_scoring

    with pytest.raises(ValueError, match="would take about 14 hours"):  # a K below the cap, but more than half a day
        refuse_long_scoring(14 * 3600, 5000, 10**7, force=False)
    refuse_long_scoring(14 * 3600, 5000, 10**7, force=True)


# --------------------------------------------------------------------------- objectives under plain Pyro


def test_a_warm_up_counts_its_own_steps_under_plain_svi():
    from helpers import AffineGuide, correlated_linear_gaussian

    lg = correlated_linear_gaussian()
    x = lg.sample_data(20, seed=0)
    guide = AffineGuide(lg.x_dim, lg.z_dim)
    objective = get_objective("elbo:warmup=10")
    svi = pyro.infer.SVI(lg, guide, pyro.optim.Adam({"lr": 1e-2}), loss=objective)
    for _ in range(5):
        svi.step(x)
    assert objective.step == 5 and objective.current_beta == pytest.approx(0.5)
    svi.evaluate_loss(x)  # no gradient: not a step
    assert objective.step == 5
    with pytest.raises(ValueError, match="warmup_epochs counts epochs, which only a trainer knows"):
        pyro.infer.SVI(lg, guide, pyro.optim.Adam({"lr": 1e-2}), loss=get_objective("elbo:warmup_epochs=2")).step(x)
