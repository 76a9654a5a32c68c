"""Every example runs with tiny settings, in a subprocess, and none is left out."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

SMALL = ["--epochs", "1", "--n-train", "200", "--n-eval", "50", "--k", "10", "--hidden", "32", "--device", "cpu"]
TINY = {
    "custom_model.py": SMALL,
    "posterior_gap.py": [*SMALL, "--guides", "mean_field,iaf", "--seeds", "2"],
    "two_layer_tutorial.py": [*SMALL, "--objectives", "elbo,vr:alpha=0.5,k=2"],
    "compare_priors.py": [*SMALL, "--components", "5"],
    "own_model.py": ["--epochs", "1", "--n-train", "200", "--n-eval", "50", "--k", "10", "--device", "cpu"],
    "compare_aggregate.py": SMALL,
    "pyro_style_ssvae.py": [
        "--epochs",
        "1",
        "--n-train",
        "200",
        "--n-eval",
        "20",
        "--k",
        "10",
        "--hidden",
        "16",
        "--objectives",
        "elbo,vimco:k=2",
        "--device",
        "cpu",
    ],  # fmt: skip
}


def test_every_example_is_smoke_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_example_runs(name, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *TINY[name], "--json", str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    # a deterministic encoder has no log p(x) (None): every other row has one
    scored = [r for r in rows if r["log_px"] is not None]
    assert scored and all(r["log_px"] < 0 and r["k"] > 0 for r in scored)


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
BENCH_TINY = {
    "train_speed.py": ["--cases", "vae100", "--epochs", "2", "--rounds", "1", "--n", "200", "--no-pythae", "--device", "cpu"],
    "pixelcnn_sampling.py": ["--channels", "4", "--layers", "1", "--repeats", "1"],
    "log_px_speed.py": ["--n", "20", "--k", "20", "--chunk-k", "10", "--batch", "10", "--rounds", "1", "--device", "cpu"],
    "distributed_speed.py": ["--dataset", "digits", "--epochs", "2", "--rounds", "1", "--hidden", "16", "--batch", "25"],
    "reproduce_iwae.py": [
        "--cell",
        "1L-iwae5",
        "--dataset",
        "mnist5k",
        "--passes",
        "1",
        "--test-k",
        "5",
        "--test-n",
        "20",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        "{tmp}",
    ],
}


# modules the scripts import, run through them: iwae_reference.py by reproduce_iwae.py --reference and
# iwae_table.py by reproduce_iwae.py --table (tests/test_reproduce_iwae.py)
BENCH_MODULES = {"iwae_reference.py", "iwae_table.py"}


def test_every_benchmark_is_smoke_tested():
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == sorted({*BENCH_TINY, *BENCH_MODULES})


# two torchrun launches (about 40 s), and the two timing scripts (about 30 s each, timing rounds and
# a compile): in the slow tier; the default tier runs torchrun in test_distributed, and the package
# code they time in test_step and test_log_px. reproduce_iwae.py (13 s as a subprocess) runs
# in-process in tests/test_reproduce_iwae.py, in pieces, scored and tabled
SLOW_BENCH = {"distributed_speed.py", "train_speed.py", "log_px_speed.py", "reproduce_iwae.py"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BENCH else n for n in sorted(BENCH_TINY)])
def test_benchmark_runs(name, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *(a.format(tmp=tmp_path) for a in BENCH_TINY[name]), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())


# ~22 s: its cuda_tests step reruns test_capture.py (in the default tier already) in a subprocess
@pytest.mark.slow
def test_the_gpu_check_dry_runs_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh assembles the package as installed, runs its steps with their time limits
    and writes one summary; here its first two steps, on the CPU (the CUDA tests skip)."""
    script = BENCHMARKS / "gpu_check.sh"
    argv = ["bash", str(script), "--device", "cpu", "--quick", "--steps", "env,cuda_tests", "--out", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["env", "cuda_tests"] and summary["all_passed"]
    assert json.loads((tmp_path / "env.json").read_text())["device"] == "cpu"
    assert (tmp_path / "cuda_tests.xml").exists()
