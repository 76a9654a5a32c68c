"""Compare variants (objectives × guides × models, a preset, or named variants of a spec) on the same
data, networks and budget, each with one or more seeds.

Each run (a variant at a seed) trains in its own folder with :func:`train_and_report`; one that
fails or diverges is reported as such and the others still run. A variant's row holds its scores
(means over seeds, with their spread) and its paired difference from the first variant on the
same seeds and test points (:mod:`ppl_vae.compare_stats`); the reports are written by
:mod:`ppl_vae.compare_table`. The data split is the same for every run; a seed changes the
networks' initialisation, the binarisation and the sampling.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .checkpoint import load_checkpoint
from .compare_stats import summarise
from .compare_table import AGGREGATE_COLUMNS, COLUMNS, markdown_table, write_reports
from .config import TrainConfig
from .experiment import train_and_report
from .faults import TrainingError
from .run_folder import CHECKPOINT_NAME, RESULT_NAME

__all__ = ["AGGREGATE_COLUMNS", "COLUMNS", "PRESETS", "Variant", "compare", "markdown_table"]

# ``compare --preset aggregate``: the per-point KL against penalties on the aggregate posterior,
# with the same networks, budget and seed (name, objective, guide)
PRESETS = {
    "aggregate": [
        ("VAE", "elbo", "mean_field"),
        ("beta-VAE (beta=4)", "elbo:beta=4", "mean_field"),
        ("InfoVAE (MMD, lambda=1000)", "infovae", "mean_field"),
        ("WAE-MMD (lambda=10)", "wae_mmd", "deterministic"),
        ("SWAE (lambda=10)", "swae", "deterministic"),
        ("CWAE", "cwae", "deterministic"),
        ("radial (lambda=10)", "radial", "deterministic"),
        ("sparse AE (L1 0.1)", "sparse_ae", "deterministic"),
    ]
}
PER_POINT = ("log_px_per_point", "distortion_per_point")  # kept in each run's result.json, not in the table


@dataclass
class Variant:
    """One row of a comparison: ``objective`` and ``spec``, the changes to the base spec (model,
    guide, their options)."""

    name: str
    objective: str
    spec: dict = field(default_factory=dict)


@dataclass
class Run:
    variant: Variant
    seed: int
    spec: dict
    config: TrainConfig


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")


def plan_variants(spec: dict, objectives=None, guides=None, models=None, preset=None, variants=None) -> list[Variant]:
    """The comparison's variants: ``variants`` as given, a preset's, or every combination of
    ``objectives`` × ``guides`` × ``models`` (named by what varies)."""
    if variants is not None:
        names = [v.name for v in variants]
        if len(set(names)) < len(names):
            raise ValueError(f"variant names must differ: {names}")
        return list(variants)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; known: {', '.join(PRESETS)}")
        return [Variant(name, objective, {"guide": guide}) for name, objective, guide in PRESETS[preset]]
    if not objectives:
        raise ValueError("compare needs at least one objective")
    guides = guides or [spec.get("guide", "mean_field")]
    models = models or [spec.get("model", "vae")]
    vary = {name for name, values in (("guide", guides), ("model", models)) if len(values) > 1}
    out = []
    for o, g, m in itertools.product(objectives, guides, models):
        name = " | ".join([o] + ([g] if "guide" in vary else []) + ([m] if "model" in vary else []))
        out.append(Variant(name, o, {"guide": g, "model": m}))
    return out


def _runs(plan: list[Variant], spec: dict, config: TrainConfig, out: Path, seeds: int) -> list[Run]:
    runs = []
    for i, variant in enumerate(plan, start=1):
        for s in range(seeds):
            seed = config.seed + s
            folder = out / _slug(variant.name) / (f"seed-{seed}" if seeds > 1 else "")
            label = f"variant {i} of {len(plan)}: {variant.name}" + (f", seed {seed}" if seeds > 1 else "")
            cfg = replace(config, objective=variant.objective, out=str(folder), meta={}, label=label, seed=seed)
            runs.append(Run(variant, seed, {**copy.deepcopy(spec), **copy.deepcopy(variant.spec)}, cfg))
    return runs


def compare(
    spec: dict[str, Any],
    config: TrainConfig,
    objectives: list[str] | None = None,
    guides: list[str] | None = None,
    models: list[str] | None = None,
    test_k: int = 1000,
    resume: bool = False,
    preset: str | None = None,
    devices: list[str] | None = None,
    seeds: int = 1,
    variants: list[Variant] | None = None,
    q_tests: bool = False,
    data=None,
    force: bool = False,
) -> list[dict]:
    """Train and score every variant with ``seeds`` seeds (``config.seed`` on); returns one row per
    variant (see :mod:`ppl_vae.compare_table` for the columns).

    ``devices`` (two or more, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"] * jobs``) trains the runs
    concurrently, one worker process per entry; the rows and files are a sequential run's.
    With ``resume``, a run whose folder holds a finished result of this budget is read back, one
    with only a checkpoint continues from it; a folder without a comparison, or runs written
    under other settings, are refused (each change named). ``q_tests`` adds the tests of q(z)
    against the prior (the aggregate preset always has them). ``data``: a
    :class:`ppl_vae.data.Dataset` to use instead of loading ``spec["dataset"]``. Ctrl-C writes the
    table of what has finished (the rest marked) before it stops.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    out = Path(config.out or "runs/compare")
    plan = plan_variants(spec, objectives, guides, models, preset, variants)
    runs = _runs(plan, spec, config, out, seeds)
    if resume:
        check_resumable(runs, out)
    aggregate = preset == "aggregate"
    codes = preset == "collapse"
    options = {"test_k": test_k, "resume": resume, "aggregate_tests": aggregate or q_tests, "data": data, "force": force}
    results: dict[int, dict] = {}
    try:
        if devices and len(devices) > 1:
            from .compare_workers import run_concurrently

            run_concurrently(run_one, runs, devices, options, results)
        else:
            for i, run in enumerate(runs):
                if not config.progress:
                    print(run.config.label, flush=True)
                results[i] = run_one(run, **options)
    except KeyboardInterrupt:
        write_reports(rows_of(plan, runs, results, seeds, interrupted=True), out, aggregate, q_tests, codes)
        raise
    rows = rows_of(plan, runs, results, seeds)
    write_reports(rows, out, aggregate, q_tests, codes)
    return rows


def run_one(run: Run, test_k: int, resume: bool, aggregate_tests: bool, data=None, force: bool = False) -> dict:
    """Train and score one run; its result (a failure or divergence is its status)."""
    v = run.variant
    row: dict[str, Any] = {"variant": v.name, "seed": run.seed, "objective": v.objective}
    row.update(guide=run.spec.get("guide"), model=run.spec.get("model"))
    try:
        result = _finished(run.config) if resume else None
        if result is None:
            again = resume and (Path(run.config.out) / CHECKPOINT_NAME).exists()
            options = {"test_k": test_k, "resume": again, "aggregate_tests": aggregate_tests, "data": data, "force": force}
            result = train_and_report(run.spec, run.config, **options)
        keep = ("history", "pictures", "prior_match", "classification_error", "code_knn", "ordered_coding", *PER_POINT)
        row.update({k: result[k] for k, _ in [*COLUMNS, *AGGREGATE_COLUMNS] if k in result}, status="ok")
        row.update(knn_accuracy=(result.get("code_knn") or {}).get("knn_accuracy"))
        row.update(ordered_coding_cost=(result.get("ordered_coding") or {}).get("ordered_coding_cost"))
        row.update({k: result.get(k) for k in keep}, objective_resolved=result.get("objective_resolved"))
        row.update(result.get("prior_match") or {})
        if result.get("log_px_note"):
            row["log_px_note"] = "none: no density (point-mass guide)"
    except TrainingError as err:
        row.update(status="diverged", error=str(err))
    except Exception as err:  # one broken run must not stop the comparison
        row.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=3))
    return row


def rows_of(plan: list[Variant], runs: list[Run], results: dict[int, dict], seeds: int, interrupted=False) -> list[dict]:
    """One row per variant from its runs' results; runs without one are marked interrupted or not run."""
    by_variant: dict[str, list[dict]] = {v.name: [] for v in plan}
    for i, run in enumerate(runs):
        default = {"variant": run.variant.name, "seed": run.seed, "status": "not run", "error": "Ctrl-C before it started"}
        if interrupted and i == len(results):
            default.update(status="interrupted", error="Ctrl-C; continue with --resume")
        by_variant[run.variant.name].append(results.get(i, default))
    rows, first = [], None
    for v in plan:
        variant_runs = by_variant[v.name]
        ok = [r for r in variant_runs if r["status"] == "ok"]
        row = {**(ok[0] if ok else variant_runs[0]), **summarise(variant_runs, first)}
        if seeds > 1:
            row["runs"] = [{k: r.get(k) for k in ("seed", "status", "error", "log_px", "test_distortion")} for r in variant_runs]
        for key in (*PER_POINT, "seed"):
            row.pop(key, None)
        rows.append(row)
        first = variant_runs if first is None else first
    return rows


def _finished(cfg: TrainConfig) -> dict | None:
    """A run's result.json when it finished the same number of epochs, else None."""
    path = Path(cfg.out) / RESULT_NAME
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("epochs") == cfg.epochs and result.get("objective") == cfg.objective else None


def check_resumable(runs: list[Run], out: Path) -> None:
    """Refuse to resume a folder without a comparison, or runs written under other settings (each
    change named, as ``train --resume`` names them), before anything trains."""
    from .checkpoint import CheckpointError
    from .train_state import same_run_settings

    found, changed = False, []
    for run in runs:
        folder = Path(run.config.out)
        result, ckpt = folder / RESULT_NAME, folder / CHECKPOINT_NAME
        if result.exists():
            saved = json.loads(result.read_text())["config"]
        elif ckpt.exists():
            saved = load_checkpoint(ckpt)["config"]
        else:
            continue
        found = True
        saved_cfg = TrainConfig.from_dict(saved)
        expected = replace(run.config, meta={**run.spec, "image_shape": saved_cfg.meta.get("image_shape")})
        changed += [f"{run.config.label}: {c}" for c in same_run_settings(expected, saved_cfg)]
    if not found and not (out / "compare.json").exists():
        raise CheckpointError(f"--resume: {out} holds no comparison to continue (no compare.json, no run of these variants)")
    if changed:
        raise CheckpointError(
            f"--resume: the comparison in {out} was trained with other settings ({'; '.join(changed[:6])}); resume with "
            "the same settings, or compare into another --out (or with --overwrite)"
        )
