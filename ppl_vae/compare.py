"""Compare variants (objectives × guides × models) on the same data, seed, networks and budget.

Each variant trains in its own subfolder with :func:`train_and_report`; one that
fails or diverges is reported as such in its row and the others still run. The
table goes to ``compare.md``, ``compare.csv`` and ``compare.json``; the validation
curves to ``validation_curves.png`` and the rate–distortion plane to
``rate_distortion.png``.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import re
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from .experiment import train_and_report, write_json
from .report_text import md_cell
from .train import TrainConfig, TrainingError

COLUMNS = [
    ("variant", "variant"),
    ("status", "status"),
    ("log_px", "test log p(x)"),
    ("log_px_se", "± SE"),
    ("k", "K"),
    ("test_elbo", "test ELBO"),
    ("test_rate", "KL (rate)"),
    ("test_distortion", "distortion"),
    ("active_units", "active units"),
    ("seconds_per_epoch", "s/epoch"),
]


AGGREGATE_COLUMNS = [
    ("variant", "variant"),
    ("status", "status"),
    ("test_distortion", "reconstruction error"),
    ("log_px", "test log p(x)"),
    ("log_px_se", "± SE"),
    ("active_units", "active units"),
    ("mmd2", "MMD² to N(0,I)"),
    ("p_value", "MMD p"),
    ("skewness_p_value", "Mardia skew p"),
    ("kurtosis_p_value", "Mardia kurt p"),
    ("radius_p_value", "radius p"),
    ("pairwise_p_value", "pairwise p"),
    ("seconds_per_epoch", "s/epoch"),
]

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
        ("sparse AE (L1 0.1)", "sparse_ae", "deterministic"),
    ]
}


def variant_name(objective: str, guide: str, model: str, vary: set[str]) -> str:
    parts = [objective] + ([guide] if "guide" in vary else []) + ([model] if "model" in vary else [])
    return " | ".join(parts)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")


def compare(
    spec: dict[str, Any],
    config: TrainConfig,
    objectives: list[str],
    guides: list[str] | None = None,
    models: list[str] | None = None,
    test_k: int = 1000,
    resume: bool = False,
    preset: str | None = None,
    devices: list[str] | None = None,
) -> list[dict]:
    """Train and score every combination; returns one row per variant (see :data:`COLUMNS`).

    ``devices`` (two or more, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"] * jobs``) trains the
    variants concurrently, one worker process per entry; the rows and files are the same as a
    sequential run's (each variant seeds itself).

    With ``resume``, a variant whose folder holds a finished result of this budget is read back
    instead of trained, and one with only a checkpoint continues from it. Ctrl-C writes the
    table of what has finished (the rest marked) before it stops.
    """
    out = Path(config.out or "runs/compare")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; known: {', '.join(PRESETS)}")
        model = spec.get("model", "vae")
        variants = [(name, objective, guide, model) for name, objective, guide in PRESETS[preset]]
    else:
        if not objectives:
            raise ValueError("compare needs at least one objective")
        guides = guides or [spec.get("guide", "mean_field")]
        models = models or [spec.get("model", "vae")]
        vary = {name for name, values in (("guide", guides), ("model", models)) if len(values) > 1}
        variants = [(variant_name(o, g, m, vary), o, g, m) for o, g, m in itertools.product(objectives, guides, models)]
    aggregate = preset == "aggregate"
    tasks = []
    for i, (name, objective, guide, model) in enumerate(variants, start=1):
        label = f"variant {i} of {len(variants)}: {name}"
        variant_spec = {**copy.deepcopy(spec), "guide": guide, "model": model, "progress_label": label}
        cfg = replace(config, objective=objective, out=str(out / _slug(name)), meta={})
        tasks.append((label, name, variant_spec, cfg))
    devices = list(devices or [])
    if len(devices) > 1:
        rows = _run_concurrently(tasks, devices, test_k, resume, aggregate, out, variants)
    else:
        rows = []
        for j, (label, name, variant_spec, cfg) in enumerate(tasks):
            if not config.progress:
                print(label, flush=True)
            try:
                rows.append(run_variant(name, variant_spec, cfg, test_k, resume, aggregate))
            except KeyboardInterrupt:
                rows.append({"variant": name, "status": "interrupted", "error": "Ctrl-C; continue with --resume"})
                rows += [{"variant": v[0], "status": "not run", "error": "Ctrl-C before it started"} for v in variants[j + 1 :]]
                write_reports(rows, out, aggregate)
                raise
    write_reports(rows, out, aggregate)
    return rows


def run_variant(name: str, spec: dict, cfg: TrainConfig, test_k: int, resume: bool, aggregate: bool) -> dict:
    """Train and score one variant; its table row (a failure or divergence is the row's status)."""
    row: dict[str, Any] = {"variant": name, "objective": cfg.objective, "guide": spec["guide"], "model": spec["model"]}
    try:
        result = _finished(cfg) if resume else None
        if result is None:
            result = train_and_report(spec, cfg, test_k=test_k, resume=resume and _has_checkpoint(cfg), aggregate_tests=aggregate)
        row.update({k: result[k] for k, _ in COLUMNS if k in result}, status="ok", history=result["history"])
        row.update(result.get("prior_match", {}), pictures=result.get("pictures", {}))
        if result.get("log_px_note"):
            row["log_px_note"] = "none: no density (point-mass guide)"
    except TrainingError as err:
        row.update(status="diverged", error=str(err))
    except Exception as err:  # one broken variant must not stop the comparison
        row.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=3))
    return row


def _variant_in_worker(name, spec, cfg, test_k, resume, aggregate, threads) -> dict:
    """:func:`run_variant` in a worker process of ``--jobs``/``--devices``, with its share of the CPU threads."""
    import torch

    torch.set_num_threads(threads)
    try:
        return run_variant(name, spec, cfg, test_k, resume, aggregate)
    except KeyboardInterrupt:  # the checkpoint is saved; the parent marks the row
        return {"variant": name, "status": "interrupted", "error": "Ctrl-C; continue with --resume"}


def _run_concurrently(tasks, devices: list[str], test_k, resume, aggregate, out: Path, variants) -> list[dict]:
    """One worker process per entry of ``devices`` (a device runs one variant at a time); the rows
    come back in the variants' order, so the table is the one a sequential run writes."""
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // len(devices)) if all(d == "cpu" for d in devices) else 1
    results: dict[int, dict] = {}
    free, running, pending = list(devices), {}, list(enumerate(tasks))
    pool = ProcessPoolExecutor(max_workers=len(devices), mp_context=multiprocessing.get_context("spawn"))
    try:
        while pending or running:
            while pending and free:
                i, (label, name, spec, cfg) = pending.pop(0)
                device = free.pop(0)
                print(f"{label} (on {device})", flush=True)
                cfg = replace(cfg, device=device, progress=False)
                running[pool.submit(_variant_in_worker, name, spec, cfg, test_k, resume, aggregate, threads)] = (i, device)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i, device = running.pop(future)
                free.append(device)
                try:
                    results[i] = future.result()
                except Exception as err:  # the worker itself died (killed, out of memory)
                    results[i] = {"variant": tasks[i][1], "status": "failed", "error": f"worker process: {err}"}
                print(f"finished {tasks[i][0]}: {results[i]['status']}", flush=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)  # the workers save their checkpoints on the same Ctrl-C
        rows = [results.get(i) or {"variant": v[0], "status": "not run", "error": "Ctrl-C before it started"}
                for i, v in enumerate(variants)]  # fmt: skip
        write_reports(rows, out, aggregate)
        raise
    pool.shutdown()
    return [results[i] for i in range(len(tasks))]


def _has_checkpoint(cfg: TrainConfig) -> bool:
    return (Path(cfg.out) / "checkpoint.pt").exists()


def _finished(cfg: TrainConfig) -> dict | None:
    """A variant's result.json when it finished the same number of epochs, else None."""
    path = Path(cfg.out) / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.get("epochs") == cfg.epochs and result.get("objective") == cfg.objective else None


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if key == "status" and value != "ok":
        return f"{value}: {row.get('error', '')}"[:80]
    if key == "log_px" and value is None and row.get("log_px_note"):
        return row["log_px_note"]
    if value is None:
        return ""
    if key.endswith("p_value") or key == "mmd2":
        return f"{value:.3g}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], columns=None) -> str:
    columns = columns or COLUMNS
    lines = ["| " + " | ".join(md_cell(title) for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md_cell(_cell(r, k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_reports(rows: list[dict], out: Path, aggregate: bool = False) -> dict[str, Path]:
    columns = AGGREGATE_COLUMNS if aggregate else COLUMNS
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json({"rows": rows}, out / "compare.json"), "md": out / "compare.md", "csv": out / "compare.csv"}
    paths["md"].write_text(markdown_table(rows, columns) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k, _ in columns] + ["error"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    paths.update(plot_curves(rows, out))
    if aggregate:
        paths.update(side_by_side(rows, out))
    return paths


def side_by_side(rows: list[dict], out: Path) -> dict[str, Path]:
    """One figure with every variant's sample grid, one with every 2-D aggregate posterior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    paths = {}
    for key, filename, title in (
        ("samples", "samples_side_by_side.png", "samples"),
        ("aggregate_posterior", "aggregate_posteriors.png", "aggregate posterior q(z), 2-D"),
    ):
        shown = [r for r in rows if r.get("status") == "ok" and Path(r.get("pictures", {}).get(key, "")).is_file()]
        if not shown:
            continue
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.6), squeeze=False)
        for ax, r in zip(axes[0], shown):
            ax.imshow(mpimg.imread(r["pictures"][key]))
            ax.set_title(r["variant"], fontsize=8)
            ax.axis("off")
        fig.suptitle(title)
        fig.tight_layout()
        paths[key] = out / filename
        fig.savefig(paths[key], dpi=120)
        plt.close(fig)
    return paths


def plot_curves(rows: list[dict], out: Path) -> dict[str, Path]:
    """Validation ELBO (and log p(x) where estimated) per epoch, and the rate–distortion plane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(ok):
        color = f"C{i % 10}"
        epochs = [h["epoch"] for h in r["history"]]
        ax.plot(epochs, [h["val_elbo"] for h in r["history"]], color=color, label=f"{r['variant']} ELBO")
        lp = [(h["epoch"], h["val_log_px"]) for h in r["history"] if "val_log_px" in h]
        if lp:
            ax.plot(*zip(*lp), "o--", color=color, label=f"{r['variant']} log p(x)")
    ax.set(xlabel="epoch", ylabel="nats per point", title="validation")
    if ok:  # every variant may have failed
        ax.legend(fontsize=7)
    fig.tight_layout()
    curves = out / "validation_curves.png"
    fig.savefig(curves, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, r in enumerate(ok):
        if r.get("test_rate") is None:  # a point-mass guide has no rate
            continue
        ax.scatter(r["test_rate"], r["test_distortion"], color=f"C{i % 10}")
        ax.annotate(r["variant"], (r["test_rate"], r["test_distortion"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="rate: KL(q(z|x) || p(z)) (nats)", ylabel="distortion: -E log p(x|z) (nats)", title="rate–distortion (test)")
    fig.tight_layout()
    plane = out / "rate_distortion.png"
    fig.savefig(plane, dpi=110)
    plt.close(fig)
    return {"curves": curves, "rate_distortion": plane}
