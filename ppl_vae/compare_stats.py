r"""What a comparison over seeds reports: each variant's mean and spread over seeds, and its paired
difference from the first variant with a standard error and a 95 % interval.

For a metric m measured per test point (log p(x), the reconstruction error) and seed s, the
paired difference of variant v from the first variant 0 on the same seed and test points is

.. math::

    d_s = \frac1n \sum_x \big(m_{v,s}(x) - m_{0,s}(x)\big), \qquad D = \frac1S \sum_s d_s,
    \qquad \mathrm{SE}(D)^2 = \frac{\mathrm{Var}_s(d_s)}{S} + \frac{\mathrm{Var}_x(\bar d(x))}{n},

the first term the training's randomness (seeds: initialisation, binarisation, sampling), the
second the test points' (:math:`\bar d(x)` is the per-point difference averaged over seeds).
With one seed only the second term is known, and the interval says nothing about training
noise. The 95 % interval is :math:`D \pm q\,\mathrm{SE}` with q the t quantile on S - 1 degrees
of freedom (the normal's 1.96 for one seed).
"""

from __future__ import annotations

import math

import numpy as np

# metric -> (per-point key in a run's result, +1 if higher is better, -1 if lower is)
PAIRED = {"log_px": ("log_px_per_point", 1.0), "test_distortion": ("distortion_per_point", -1.0)}
SUMMED = ("log_px", "log_px_se", "test_elbo", "test_rate", "test_distortion", "active_units", "seconds_per_epoch",
          "knn_accuracy", "ordered_coding_cost")  # fmt: skip


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for one value)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def quantile(seeds: int) -> float:
    """The two-sided 95 % quantile: t on ``seeds - 1`` degrees of freedom, the normal's for one seed."""
    if seeds < 2:
        return 1.959963984540054
    from scipy import stats

    return float(stats.t.ppf(0.975, seeds - 1))


def paired_difference(variant: list[list[float]], first: list[list[float]], sign: float) -> dict:
    """The paired difference (see the module docstring) of per-point values ``variant[s][x]`` from
    ``first[s][x]``, seed by seed: ``difference``, ``se``, ``low``, ``high``, ``seeds`` and
    ``better`` (the interval lies on the better side of 0, with ``sign`` +1 when higher is better)."""
    a, b = np.asarray(variant, dtype=float), np.asarray(first, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired runs differ in shape: {a.shape} vs {b.shape} (other test points?)")
    per_point = a - b  # (seeds, points)
    seeds, n = per_point.shape
    by_seed = per_point.mean(1)
    var = per_point.mean(0).var(ddof=1) / n if n > 1 else math.nan  # one point: no spread to measure, no interval
    if seeds > 1:
        var += by_seed.var(ddof=1) / seeds
    diff, se = float(by_seed.mean()), math.sqrt(var)
    half = quantile(seeds) * se
    low, high = diff - half, diff + half
    better = bool(low > 0) if sign > 0 else bool(high < 0)  # False when the interval is unknown (nan)
    return {"difference": diff, "se": se, "low": low, "high": high, "seeds": seeds, "better": better}


def summarise(runs: list[dict], first_runs: list[dict] | None) -> dict:
    """One variant's row from its runs (one per seed): means over the seeds that finished, their
    standard deviations (``<key>_sd``), the per-seed values (``by_seed``) and the paired differences
    from the first variant's runs of the same seeds (``delta_<metric>``)."""
    ok = [r for r in runs if r.get("status") == "ok"]
    row: dict = {"seeds_ok": len(ok), "seeds": len(runs)}
    if not ok:
        return row
    for key in SUMMED:
        values = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
        if len(values) == len(ok):
            row[key], row[f"{key}_sd"] = spread(values)
    row["by_seed"] = {str(r["seed"]): {k: r.get(k) for k in ("log_px", "test_distortion")} for r in ok}
    if first_runs is None:
        return row
    paired = {r["seed"]: r for r in first_runs if r.get("status") == "ok"}
    common = [r for r in ok if r["seed"] in paired]
    for metric, (key, sign) in PAIRED.items():
        if common and all(r.get(key) is not None and paired[r["seed"]].get(key) is not None for r in common):
            row[f"delta_{metric}"] = paired_difference([r[key] for r in common], [paired[r["seed"]][key] for r in common], sign)
    return row
