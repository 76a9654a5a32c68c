"""torchrun data parallelism on this machine: two gloo processes on localhost (CPU only)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ppl_vae.checkpoint import load_checkpoint
from ppl_vae.cli import main

TINY = ["--dataset", "digits", "--hidden", "16", "--z-dim", "3", "--test-k", "10", "--eval-k", "5", "--compile", "off",
        "--no-progress", "--device", "cpu"]  # fmt: skip
# no random draw in the objective (a point-mass encoder, an L1 penalty, data binarised once):
# two processes at batch 25 and one at batch 50 must take the same steps up to float rounding
DETERMINISTIC = ["--guide", "deterministic", "--objective", "sparse_ae", "--binarize", "fixed", "--eval-every", "1"]


def torchrun(*args, procs=2, check=True, **popen):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m", "ppl_vae"]
    if popen:
        return subprocess.Popen([*command, *args], **popen)
    proc = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _params(folder, name="checkpoint.pt"):
    return load_checkpoint(folder / name)["params"]


def test_two_processes_take_the_steps_of_one_process_on_the_combined_batch(tmp_path, capsys):
    two, one = tmp_path / "two", tmp_path / "one"
    proc = torchrun("train", *TINY, *DETERMINISTIC, "--epochs", "2", "--batch-size", "25", "--out", str(two))
    assert proc.stdout.count("epoch 2/2:") == 1  # rank 0 alone prints, writes and reports
    assert main(["train", *TINY, *DETERMINISTIC, "--epochs", "2", "--batch-size", "50", "--out", str(one)]) == 0
    a, b = _params(one), _params(two)
    assert load_checkpoint(two / "checkpoint.pt")["step"] == load_checkpoint(one / "checkpoint.pt")["step"] == 56
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-5), name
    ra, rb = json.loads((one / "result.json").read_text()), json.loads((two / "result.json").read_text())
    assert rb["step"] == "compile off, 2 processes"
    for x, y in zip(ra["history"], rb["history"]):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["val_distortion"] == pytest.approx(y["val_distortion"], rel=1e-5)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """A stochastic pair (mean-field guide, dynamic binarisation, validation log p(x) each epoch):
    two epochs at once, and one epoch then --resume to two."""
    root = tmp_path_factory.mktemp("ddp")
    args = ["train", *TINY, "--eval-every", "1", "--batch-size", "25"]
    torchrun(*args, "--epochs", "2", "--out", str(root / "whole"))
    torchrun(*args, "--epochs", "1", "--out", str(root / "split"))
    torchrun(*args, "--epochs", "2", "--out", str(root / "split"), "--resume")
    return root


# three two-process launches (~50 s with the next test): slow tier, beside the kill-and-resume one;
# the default tier keeps two processes against one on the combined batch
@pytest.mark.slow
def test_a_resumed_two_process_run_matches_an_uninterrupted_one(two_process_runs, capsys):
    whole, split = two_process_runs / "whole", two_process_runs / "split"
    a, b = _params(whole), _params(split)
    assert all(torch.equal(a[n], b[n]) for n in a)  # each rank's own draws resumed from its own RNG state
    state = load_checkpoint(split / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    ra, rb = json.loads((whole / "result.json").read_text()), json.loads((split / "result.json").read_text())
    assert ra["log_px"] == rb["log_px"] and [r["val_log_px"] for r in ra["history"]] == [r["val_log_px"] for r in rb["history"]]
    # one process cannot continue a two-process run: the global batch would change
    assert main(["train", *TINY, "--batch-size", "25", "--epochs", "3", "--out", str(split), "--resume"]) == 2
    assert "written by 2 process(es)" in capsys.readouterr().err


@pytest.mark.slow  # shares the three launches above
def test_distributed_evaluation_equals_single_process_evaluation(two_process_runs, tmp_path, capsys):
    run = two_process_runs / "whole"
    assert main(["evaluate", str(run), "--k", "30", "--out", str(tmp_path / "one"), "--no-progress", "--device", "cpu"]) == 0
    torchrun("evaluate", str(run), "--k", "30", "--out", str(tmp_path / "two"), "--no-progress", "--device", "cpu")
    a = json.loads((tmp_path / "one" / "evaluation.json").read_text())
    b = json.loads((tmp_path / "two" / "evaluation.json").read_text())
    for key in ("log_px", "log_px_se", "log_px_mc_se", "iwae_by_k", "k_hat", "n", "k", "active_units"):
        assert a[key] == b[key], key
    for key in ("test_elbo", "test_rate", "test_distortion"):
        assert a[key] == pytest.approx(b[key], rel=1e-6)
    assert a["prior_match"]["mmd2"] == pytest.approx(b["prior_match"]["mmd2"], rel=1e-6)


def _log_px_on_two_ranks(rank, init_file, queue):
    import torch.distributed as dist

    from ppl_vae import log_px

    from helpers import ShiftedPosteriorGuide, correlated_linear_gaussian

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    lg = correlated_linear_gaussian()
    x = lg.sample_data(40, seed=1)
    torch.manual_seed(100 + rank)  # the ranks' global generators differ: the estimate must not care
    est = log_px(lg, ShiftedPosteriorGuide(lg), x, k=22, chunk_k=7, batch_size=7, ladder=(1, 5), psis=True, seed=3)
    if rank == 0:
        queue.put((est.per_point.tolist(), est.k_hat.tolist(), est.iwae_by_k, est.mc_se))  # plain numbers: the child exits
    dist.destroy_process_group()


def test_log_px_deals_batches_to_the_ranks_and_gathers_the_single_process_estimate(tmp_path):
    import torch.multiprocessing as mp

    from ppl_vae import log_px

    from helpers import ShiftedPosteriorGuide, correlated_linear_gaussian

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_log_px_on_two_ranks, args=(r, tmp_path / "init", queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    per_point, k_hat, by_k, mc_se = queue.get(timeout=5)
    lg = correlated_linear_gaussian()
    x = lg.sample_data(40, seed=1)
    single = log_px(lg, ShiftedPosteriorGuide(lg), x, k=22, chunk_k=7, batch_size=7, ladder=(1, 5), psis=True, seed=3)
    assert single.per_point.tolist() == per_point and single.k_hat.tolist() == k_hat  # 6 batches, 3 per rank
    assert single.iwae_by_k == by_k and single.mc_se == mc_se


@pytest.mark.slow  # two worker processes (about 16 s); compare --jobs is also run by the slow tier only
def test_compare_jobs_2_writes_the_table_of_jobs_1(tmp_path, capsys):
    args = [
        "compare",
        *TINY,
        "--eval-every",
        "0",
        "--epochs",
        "2",
        "--objectives",
        "elbo,iwae:k=3",
        "--guides",
        "mean_field,full_cov",
    ]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    a = json.loads((tmp_path / "one" / "compare.json").read_text())["rows"]
    b = json.loads((tmp_path / "two" / "compare.json").read_text())["rows"]
    assert [r["variant"] for r in a] == [r["variant"] for r in b] and all(r["status"] == "ok" for r in b)
    for x, y in zip(a, b):  # the worker processes run on one thread each: float rounding only
        for key in ("log_px", "log_px_se", "test_elbo", "test_rate", "test_distortion"):
            assert x[key] == pytest.approx(y[key], abs=1e-3), (x["variant"], key)
        assert x["active_units"] == y["active_units"]
    from ppl_vae.cli_options import build_parser
    from ppl_vae.run_spec import _compare_devices

    with pytest.raises(ValueError, match="not both"):
        _compare_devices(build_parser().parse_args([*args, "--jobs", "2", "--devices", "cpu,cpu"]))
    assert main([*args, "--devices", "cpu,cuda:3", "--out", str(tmp_path / "three")]) == 2
    assert "cuda" in capsys.readouterr().err


def _wait_for(path, seconds=120):
    end = time.time() + seconds
    while not path.exists():
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.slow  # three two-process launches killed and resumed (about 40 s)
def test_ctrl_c_and_a_killed_rank_leave_a_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--eval-every", "0", "--batch-size", "5", "--epochs", "200", "--out", str(out)]
    # Ctrl-C: the terminal signals the whole process group; the ranks agree on a step and rank 0 saves
    proc = torchrun(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(out / "metrics.csv")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "interrupted; checkpoint saved" in err
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] > 0 and state["world_size"] == 2
    # SIGKILL of rank 1: torchrun ends the run; the checkpoint is rank 0's last complete one
    proc = torchrun(*args, "--resume", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    before = (out / "metrics.csv").stat().st_mtime
    while (out / "metrics.csv").stat().st_mtime == before:
        time.sleep(0.2)
    ranks = [
        int(p)
        for p in subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "ppl_vae"], capture_output=True, text=True).stdout.split()
    ]
    assert len(ranks) == 2
    os.kill(max(ranks), signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    after = load_checkpoint(out / "checkpoint.pt")  # loads: never half-written
    assert after["step"] >= state["step"]
    done = torchrun(*args[:-4], "--epochs", str(after["epoch"] + 1), "--out", str(out), "--resume")
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == after["epoch"] + 1 and done.returncode == 0


def _train_on_two_ranks(rank, init_file, queue):
    """A pair with a module registered by pyro.module and a bare pyro.param, each rank
    initialised differently: after training every rank holds rank 0's start, moved alike."""
    import pyro
    import pyro.distributions as dist
    import torch.distributed as tdist
    from torch import nn

    from ppl_vae import TrainConfig, Trainer
    from ppl_vae.data import load_dataset

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    pyro.set_rng_seed(rank)  # different initial weights on each rank
    decoder = nn.Linear(2, 64)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        w = pyro.param("w", lambda: 0.01 * torch.randn(64, 2))
        scale = pyro.param("scale", lambda: torch.ones(2), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ w, scale).to_event(1))

    data = load_dataset("digits")
    trainer = Trainer(model, guide, TrainConfig(epochs=1, batch_size=20, eval_every=0, progress=False, device="cpu"))
    trainer.fit(data.train.x[:200], dynamic=True)
    params = {name: p.detach().clone() for name, p in trainer.params.items()}
    everyone = [None, None]
    tdist.all_gather_object(everyone, params)
    if rank == 0:
        same = all(torch.equal(everyone[0][n], everyone[1][n]) for n in params)
        queue.put((sorted(params), same, trainer.step))
    tdist.destroy_process_group()


def test_every_rank_holds_the_same_parameters_pyro_module_and_pyro_param_alike(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_train_on_two_ranks, args=(r, tmp_path / "init", queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    names, same, steps = queue.get(timeout=5)
    assert names == ["decoder$$$bias", "decoder$$$weight", "scale", "w"] and same and steps == 5
