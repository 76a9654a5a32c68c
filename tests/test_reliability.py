"""Reliability: kills, interrupts, full disks, NaNs and bad input cost at most the work since
the last checkpoint and end with one clear message. Kill tests use real subprocesses."""

import errno
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae import TrainConfig, Trainer
from ppl_vae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ppl_vae.cli import main
from ppl_vae.data import DataError, load_dataset
from ppl_vae.faults import diagnose
from ppl_vae.guides import MeanFieldGuide
from ppl_vae.models import VAE
from ppl_vae.sites import ContractError

from helpers import PoisonedDecoderVAE

TRAIN = [
    sys.executable,
    "-m",
    "ppl_vae.cli",
    "train",
    "--dataset",
    "digits",
    "--hidden",
    "48",
    "--z-dim",
    "3",
    "--batch-size",
    "50",
]
TRAIN += ["--eval-every", "0", "--test-k", "5", "--no-progress", "--device", "cpu", "--checkpoint-every", "7"]
EPOCHS = 30  # long enough to be killed four times at random moments (the slow test)
SHORT = 6  # long enough to be interrupted after its first checkpoint (step 7)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _train(out, epochs, *extra):
    return subprocess.Popen(
        [*TRAIN, "--epochs", str(epochs), "--out", str(out), *extra],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _straight(tmp_path_factory, epochs):
    out = tmp_path_factory.mktemp("straight")
    code, _, err = _finish(_train(out, epochs))
    assert code == 0, err
    return load_checkpoint(out / "checkpoint.pt")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    return _straight(tmp_path_factory, EPOCHS)


@pytest.fixture(scope="module")
def short_straight_run(tmp_path_factory):
    return _straight(tmp_path_factory, SHORT)


def _same_run(a, b):
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    for name, p in a["params"].items():
        assert torch.equal(p, b["params"][name]), name


@pytest.mark.slow  # five training processes killed and resumed (about a minute); the default tier kills during checkpoint writes and on Ctrl-C
def test_sigkill_at_random_moments_then_resume_gives_the_straight_run_bit_for_bit(tmp_path, straight_run):
    """Kill the training process with SIGKILL at random times, several times in a row; after each
    kill the checkpoint on disk loads, and resuming to the end reproduces the run that was never
    stopped: the same parameters, bit for bit, and the same logged losses."""
    rng = random.Random(7)
    out, ckpt = tmp_path / "killed", tmp_path / "killed" / "checkpoint.pt"
    kills, resumes, last_step = 0, 0, -1
    for _ in range(4):
        resumed = ckpt.exists()
        launched = time.time()
        proc = _train(out, EPOCHS, *(["--resume"] if resumed else []))
        resumes += int(resumed)
        # wait for this process's first checkpoint, then kill at a random moment after it
        while proc.poll() is None and not (ckpt.exists() and ckpt.stat().st_mtime > launched):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
        state = load_checkpoint(ckpt)  # never corrupt
        assert state["step"] >= last_step  # and never older than what was there
        last_step = state["step"]
    assert kills >= 3 and resumes >= 3, "the runs ended before they could be killed: lengthen them"
    code, _, err = _finish(_train(out, EPOCHS, "--resume"))
    assert code == 0, err
    _same_run(load_checkpoint(ckpt), straight_run)
    print(f"kills {kills}, resumes {resumes + 1}, last killed at step {last_step} of {straight_run['step']}")


def test_sigint_saves_a_checkpoint_mid_epoch_and_exits_cleanly(tmp_path, short_straight_run):
    out = tmp_path / "interrupted"
    proc = _train(out, SHORT)
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code, _, err = _finish(proc)
    assert code == 130, err
    assert "checkpoint saved at" in err and "--resume" in err and "Traceback" not in err
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] < short_straight_run["step"]
    code, _, err = _finish(_train(out, SHORT, "--resume"))
    assert code == 0, err
    _same_run(load_checkpoint(out / "checkpoint.pt"), short_straight_run)


def test_sigkill_during_checkpoint_writes_never_leaves_an_unreadable_file(tmp_path):
    """A process writing 16 MB checkpoints in a loop, killed at random moments five times: what is
    on disk always loads and is one whole checkpoint, never a mix or a truncation."""
    script = (
        "import sys, torch\n"
        "from ppl_vae.checkpoint import save_checkpoint\n"
        "i = int(sys.argv[2])\n"
        "while True:\n"
        "    save_checkpoint({'i': i, 'w': torch.full((4_000_000,), float(i))}, sys.argv[1])\n"
        "    i += 1\n"
    )
    path = tmp_path / "ckpt.pt"
    rng = random.Random(3)
    seen = -1
    for _ in range(5):
        launched = time.time()
        proc = subprocess.Popen([sys.executable, "-c", script, str(path), str(seen + 1)], env=ENV)
        while not (path.exists() and path.stat().st_mtime > launched):  # this process has written one
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))  # then a random moment, most likely inside a write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(path)
        assert torch.equal(state["w"], torch.full((4_000_000,), float(state["i"])))
        assert state["i"] >= seen
        seen = state["i"]
    assert seen >= 2  # several writes completed and were killed between


def _digits():
    d = load_dataset("digits")
    return d.train.x[:200], d.eval_x("val")[:50]


def _pair(likelihood="bernoulli"):
    pyro.set_rng_seed(0)
    return VAE(x_dim=64, z_dim=3, hidden=(16,), likelihood=likelihood), MeanFieldGuide(x_dim=64, z_dim=3, hidden=(16,))


def test_a_nan_stops_training_naming_the_step_and_site_and_keeps_the_last_good_checkpoint(tmp_path):
    train_x, val_x = _digits()
    pyro.set_rng_seed(0)
    model, guide = (
        PoisonedDecoderVAE(bad_step=4 + 3, persistent=True),
        MeanFieldGuide(x_dim=64, z_dim=3, hidden=(16,)),
    )  # 4 steps an epoch
    config = TrainConfig(epochs=3, batch_size=50, out=str(tmp_path), progress=False, eval_every=0)
    with pytest.raises(Exception) as info:
        Trainer(model, guide, config).fit(train_x, val_x, dynamic=True)
    message = str(info.value)
    assert "non-finite loss or gradient at step 7 (epoch 2, batch 3)" in message
    assert "model site 'x'" in message and "last good checkpoint" in message
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["epoch"] == 1 and all(torch.isfinite(p).all() for p in kept["params"].values())


def test_nan_policy_skip_skips_the_batch_and_counts_it():
    train_x, val_x = _digits()
    pyro.set_rng_seed(0)
    model, guide = PoisonedDecoderVAE(bad_step=3), MeanFieldGuide(x_dim=64, z_dim=3, hidden=(16,))
    history = Trainer(model, guide, TrainConfig(epochs=2, batch_size=50, progress=False, eval_every=0, nan_policy="skip")).fit(
        train_x, val_x, dynamic=True
    )
    assert history[0]["skipped_batches"] == 1 and "skipped_batches" not in history[1]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_elbo"]) for h in history)


def test_diagnose_names_a_bad_parameter():
    model, guide = _pair()
    x = torch.bernoulli(torch.full((4, 64), 0.3))
    trainer = Trainer(model, guide, TrainConfig(progress=False))
    trainer._capture_params(x)
    with torch.no_grad():
        guide.encoder.net[0].weight[0, 0] = float("inf")
    message = diagnose(model, guide, x, trainer.params)
    assert "parameter 'guide$$$encoder.net.0.weight' is not finite" in message
    assert "guide site 'z'" in message


def test_scales_are_bounded_so_extreme_encoder_outputs_stay_finite():
    from ppl_vae.nn import bounded_scale

    s = bounded_scale(torch.tensor([-1e4, 0.0, 1e4]))
    assert torch.isfinite(s.log()).all() and s.min() > 0 and s.max() <= 100


BAD_INPUTS = {
    "intensities for a Bernoulli likelihood": (lambda x: x * 0.5 + 0.25, "outside the support of the observed site 'x'"),
    "NaN in the data": (
        lambda x: x.index_put_((torch.tensor([3]), torch.tensor([5])), torch.tensor(float("nan"))),
        "NaN or infinite values (first at row 3)",
    ),
    "wrong data dimension": (lambda x: x[:, :50], "cannot run on training data of shape (200, 50)"),
    "empty data set": (lambda x: x[:0], "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_training_data_is_refused_with_its_name(case):
    transform, message = BAD_INPUTS[case]
    x = torch.bernoulli(_digits()[0])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(*_pair(), TrainConfig(progress=False)).fit(transform(x.clone()), None)


def test_intensities_outside_the_unit_interval_are_refused_for_dynamic_binarisation():
    x = _digits()[0] * 2.0
    with pytest.raises(DataError, match=r"intensities for dynamic binarisation\) has values in \[0, 2\]"):
        Trainer(*_pair(), TrainConfig(progress=False)).fit(x, None, dynamic=True)


def test_mismatched_sites_and_a_missing_data_plate_are_contract_errors():
    x = torch.bernoulli(_digits()[0])
    model, _ = _pair()

    def other_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("w", dist.Normal(x.new_zeros(3), 1.0).to_event(1))

    with pytest.raises(ContractError, match="'z' has no matching site"):
        Trainer(model, other_guide, TrainConfig(progress=False)).fit(x, None)

    def no_plate_model(x):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 3), 1.0).to_event(2))
        pyro.sample("x", dist.Bernoulli(logits=z.sum(-1, keepdim=True) + x.new_zeros(x.shape)).to_event(2), obs=x)

    def no_plate_guide(x):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 3), 1.0).to_event(2))

    with pytest.raises(ContractError, match="not inside pyro.plate\\('data'\\)"):
        Trainer(no_plate_model, no_plate_guide, TrainConfig(progress=False)).fit(x, None)

    def empty_model(x):  # a layer of width 0 (a typo'd --z1 0 in a tutorial) trained without a word before
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 0), 1.0).to_event(1))
            logits = z.sum(-1, keepdim=True) + x.new_zeros(x.shape)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def empty_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 0), 1.0).to_event(1))

    with pytest.raises(ContractError, match="the guide's latent site 'z' holds no values .* at least one dimension"):
        Trainer(empty_model, empty_guide, TrainConfig(progress=False)).fit(x, None)


def test_unwritable_output_and_full_disk_are_refused_before_training(tmp_path, monkeypatch):
    x = torch.bernoulli(_digits()[0])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="not writable"):
        Trainer(*_pair(), TrainConfig(progress=False, out=str(blocker / "run"))).fit(x, None)
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match="MiB free"):
        Trainer(*_pair(), TrainConfig(progress=False, out=str(tmp_path / "full"))).fit(x, None)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"i": 1, "w": torch.ones(3)}, path)

    def no_space(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint is kept"):
        save_checkpoint({"i": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["i"] == 1 and not list(tmp_path.glob("*.tmp"))


def test_checkpoints_load_without_running_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"format": "ppl_vae-checkpoint-1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


CLI_ERRORS = [
    (["train", "--model", "nope"], "unknown model 'nope'"),
    (["train", "--model", "vae", "--guide", "hierarchical_iaf"], "guide 'hierarchical_iaf' does not fit model 'vae'"),
    (["train", "--model", "hierarchical", "--guide", "iaf"], "guide 'iaf' does not fit model 'hierarchical'"),
    (["train", "--dataset", "mnist", "--data-dir", "{tmp}"], "no mnist.npz and no IDX files"),
    (["train", "--dataset", "mnist", "--data-dir", "{tmp}/nan"], "holds NaN or infinite values"),
    (["train", "--dataset", "digits", "--out", "{tmp}/file/run"], "not writable"),
    (["train", "--dataset", "digits", "--guide", "full_cov", "--objective", "meanfield", "--epochs", "1"], "closed-form KL"),
    (["evaluate", "{tmp}/truncated.pt"], "truncated or not a ppl_vae checkpoint"),
    (["train", "--nan-policy", "sometimes"], "invalid choice: 'sometimes'"),
]


@pytest.mark.parametrize("argv, message", CLI_ERRORS)
def test_cli_errors_are_one_line_without_a_traceback(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 cut short")
    (tmp_path / "nan").mkdir()
    bad = np.zeros((12, 28, 28), dtype=np.float32)
    bad[2, 3, 4] = np.nan
    np.savez(tmp_path / "nan" / "mnist.npz", x_train=bad, y_train=np.zeros(12), x_test=bad[:3], y_test=np.zeros(3))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    try:
        code = main([*argv, "--no-progress"])
    except SystemExit as exit_:  # argparse refuses unknown names itself
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
