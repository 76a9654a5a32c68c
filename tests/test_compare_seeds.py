"""Comparisons a reviewer would accept: several seeds, paired differences with their uncertainty, and a
resume that refuses to mix runs trained under other settings."""

import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from ppl_vae.cli import main
from ppl_vae.compare import compare
from ppl_vae.compare_stats import paired_difference, summarise
from ppl_vae.config import TrainConfig

SPEC = {
    "dataset": "digits",
    "model": "vae",
    "guide": "mean_field",
    "model_kwargs": {"z_dim": 2, "hidden": [16]},
    "guide_kwargs": {"z_dim": 2, "hidden": [16]},
}
TINY = ["--dataset", "digits", "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--test-k", "4", "--eval-every", "0"]
TINY += ["--no-progress", "--device", "cpu"]


def test_the_paired_difference_is_its_formula():
    """Two seeds of three points each: D, its SE (seed and point terms) and the t interval, by hand."""
    first = [[-10.0, -20.0, -30.0], [-11.0, -19.0, -31.0]]
    variant = [[-9.0, -19.5, -29.0], [-10.5, -18.0, -30.0]]
    d = np.array(variant) - np.array(first)  # [[1, .5, 1], [.5, 1, 1]]
    by_seed, by_point = d.mean(1), d.mean(0)
    se = math.sqrt(by_seed.var(ddof=1) / 2 + by_point.var(ddof=1) / 3)
    r = paired_difference(variant, first, sign=1.0)
    assert r["difference"] == pytest.approx(d.mean()) and r["se"] == pytest.approx(se)
    assert r["high"] - r["difference"] == pytest.approx(stats.t.ppf(0.975, 1) * se)  # one degree of freedom
    assert r["seeds"] == 2 and r["better"] == (r["low"] > 0)
    # one seed: only the points' term, the normal quantile
    one = paired_difference(variant[:1], first[:1], sign=1.0)
    assert one["se"] == pytest.approx(d[0].std(ddof=1) / math.sqrt(3)) and one["high"] - one["difference"] == pytest.approx(
        1.96 * one["se"], rel=1e-3
    )
    # lower is better (a reconstruction error): better when the whole interval is below 0
    assert paired_difference([[1.0, 1.1, 0.9, 1.0]], [[2.0, 2.1, 2.0, 1.9]], sign=-1.0)["better"]
    with pytest.raises(ValueError, match="other test points"):
        paired_difference([[1.0, 2.0]], [[1.0]], sign=1.0)
    # one test point has no spread: no interval and no verdict (was: SE 0, a zero-width interval, 'better')
    single = paired_difference([[-5.0]], [[-26.3]], sign=1.0)
    assert single["difference"] == pytest.approx(21.3) and math.isnan(single["se"]) and not single["better"]


def test_the_interval_covers_the_true_difference_at_its_nominal_rate():
    """Simulated comparisons with a known difference of 0.3 nats: seed effects (sd 0.5) and point noise
    (sd 2, shared by both variants' same points) must be covered 95 % of the time."""
    rng = np.random.default_rng(0)
    covered, reps = 0, 400
    for _ in range(reps):
        points = rng.normal(-100, 10, size=40)
        first = [points + rng.normal(0, 0.5) + rng.normal(0, 2, 40) for _ in range(4)]
        variant = [points + 0.3 + rng.normal(0, 0.5) + rng.normal(0, 2, 40) for _ in range(4)]
        r = paired_difference(variant, first, sign=1.0)
        covered += r["low"] <= 0.3 <= r["high"]
    # binomial(400, 0.95): below 0.92 with probability < 0.3 %
    assert covered / reps >= 0.92, covered / reps


def test_summarise_means_spreads_and_failed_seeds():
    runs = [
        {"seed": 0, "status": "ok", "log_px": -10.0, "log_px_per_point": [-9.0, -11.0], "test_distortion": 5.0},
        {"seed": 1, "status": "ok", "log_px": -12.0, "log_px_per_point": [-11.0, -13.0], "test_distortion": 6.0},
        {"seed": 2, "status": "diverged"},
    ]
    row = summarise(runs, None)
    assert row["seeds_ok"] == 2 and row["seeds"] == 3 and row["log_px"] == -11.0
    assert row["log_px_sd"] == pytest.approx(math.sqrt(2.0)) and "delta_log_px" not in row
    better = [{**r, "log_px_per_point": [v + 1 for v in r["log_px_per_point"]]} for r in runs[:2]]
    assert summarise(better, runs)["delta_log_px"]["difference"] == pytest.approx(1.0)


def test_compare_with_seeds_writes_every_output(tmp_path):
    config = TrainConfig(epochs=1, eval_every=0, progress=False, device="cpu", out=str(tmp_path), seed=3)
    rows = compare(SPEC, config, ["elbo", "iwae:k=2"], test_k=4, seeds=2)
    first, second = rows
    assert first["seeds_ok"] == second["seeds_ok"] == 2 and "delta_log_px" not in first
    assert [r["seed"] for r in second["runs"]] == [3, 4]
    delta = second["delta_log_px"]
    assert delta["seeds"] == 2 and delta["low"] < delta["difference"] < delta["high"]
    by_seed = [second["by_seed"][s]["log_px"] for s in ("3", "4")]
    assert second["log_px"] == pytest.approx(np.mean(by_seed)) and second["log_px_sd"] == pytest.approx(np.std(by_seed, ddof=1))
    for seed in (3, 4):  # each seed its own resumable run folder
        result = json.loads((tmp_path / "iwae_k=2" / f"seed-{seed}" / "result.json").read_text())
        assert result["config"]["seed"] == seed and result["objective_resolved"] == "iwae:k=2"
    with open(tmp_path / "compare.csv") as f:
        table = list(csv.DictReader(f))
    assert float(table[1]["delta_log_px"]) == pytest.approx(delta["difference"]) and table[1]["log_px_sd"]
    md = (tmp_path / "compare.md").read_text()
    assert "Δ log p(x) vs first" in md and "ok (2 of 2 seeds)" in md and "±" in md
    assert "<table>" in (tmp_path / "compare.html").read_text()
    assert json.loads((tmp_path / "compare.json").read_text())["rows"][1]["delta_log_px"]["seeds"] == 2


def test_compare_resume_refuses_what_train_resume_refuses(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    assert main(["compare", "--objectives", "elbo", *TINY, "--out", out, "--resume"]) == 2  # no folder yet
    assert "holds no comparison to continue" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", "--objectives", "elbo", *TINY, "--out", str(empty), "--resume"]) == 2
    assert "holds no comparison to continue" in capsys.readouterr().err
    assert main(["compare", "--objectives", "elbo", *TINY, "--out", out]) == 0
    capsys.readouterr()
    for changed, words in ((["--lr", "0.01"], "lr: 0.001 -> 0.01"), (["--seed", "5"], "seed: 0 -> 5")):
        assert main(["compare", "--objectives", "elbo", *TINY, *changed, "--out", out, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "trained with other settings" in err and words in err, err
    assert main(["compare", "--objectives", "elbo", *TINY, "--out", out, "--resume"]) == 0  # the same settings: read back


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--objectives", "elbo,elbo"], "names elbo more than once"),
        (["--objectives", "elbo", "--guides", "iaf,iaf"], "--guides names iaf more than once"),
        (["--objective", "iwae:k=5", "--objectives", "elbo"], "--objective is train's"),
        (["--objectives", "elbo", "--seeds", "0"], "--seeds must be at least 1"),
    ],
)
def test_compare_refuses_what_it_would_ignore(tmp_path, capsys, argv, words):
    assert main(["compare", *argv, *TINY, "--out", str(tmp_path / "c")]) == 2
    assert words in capsys.readouterr().err
