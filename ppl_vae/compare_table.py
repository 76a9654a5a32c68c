"""A comparison's table and figures: ``compare.md``, ``compare.csv``, ``compare.json``, the
validation curves, the rate-distortion plane, and side-by-side samples and aggregate posteriors.

With several seeds a row's numbers are means over its seeds (``± sd`` their spread) and the
``Δ vs first`` columns are paired differences from the first variant with a 95 % interval
(:mod:`ppl_vae.compare_stats`); a ``*`` marks a variant better than the first beyond its interval.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .report_text import md_cell
from .run_folder import write_json

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
    ("mmd2", "MMD² to the prior"),
    ("p_value", "MMD p"),
    ("skewness_p_value", "Mardia skew p"),
    ("kurtosis_p_value", "Mardia kurt p"),
    ("radius_p_value", "radius p"),
    ("pairwise_p_value", "pairwise p"),
    ("seconds_per_epoch", "s/epoch"),
]

CODE_COLUMNS = [  # compare --preset collapse
    ("variant", "variant"),
    ("status", "status"),
    ("log_px", "test log p(x) (ACN: coding cost)"),
    ("log_px_se", "± SE"),
    ("k", "K"),
    ("test_rate", "KL (rate)"),
    ("test_distortion", "distortion"),
    ("active_units", "active units"),
    ("ordered_coding_cost", "ordered coding cost"),
    ("knn_accuracy", "k-NN accuracy"),
    ("seconds_per_epoch", "s/epoch"),
]
CLASSIFICATION = ("classification_error", "test classification error")  # a column where a guide has a classifier
NO_SPREAD = ("log_px_se",)  # an SE's own spread over seeds says nothing a reader needs
DELTAS = [
    ("delta_log_px", "Δ log p(x) vs first [95% interval]"),
    ("delta_test_distortion", "Δ distortion vs first [95% interval]"),
]


def columns_for(rows: list[dict], aggregate: bool = False, codes: bool = False) -> list[tuple[str, str]]:
    """The table's columns: the preset's or the default, with the paired differences where a row has them.
    ``codes``: the collapse preset's (the k-NN accuracy of the codes, ACN's ordered coding cost)."""
    base = AGGREGATE_COLUMNS if aggregate else CODE_COLUMNS if codes else COLUMNS
    classifier = [CLASSIFICATION] if any(r.get(CLASSIFICATION[0]) is not None for r in rows) else []
    extra = [c for c in DELTAS if any(c[0] in r for r in rows[1:])]
    return base + classifier + extra


def _delta(d: dict) -> str:
    mark = " *" if d["better"] else ""
    return f"{d['difference']:+.2f} ± {d['se']:.2f} [{d['low']:+.2f}, {d['high']:+.2f}]{mark}"


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if key == "status" and value != "ok":
        return f"{value}: {row.get('error', '')}"[:80]
    if key == "status" and row.get("seeds", 1) > 1:
        return f"ok ({row['seeds_ok']} of {row['seeds']} seeds)"
    if key.startswith("delta_") and value is not None:
        return _delta(value)
    spread = row.get(f"{key}_sd")
    if isinstance(value, float) and spread is not None and row.get("seeds", 1) > 1 and key not in NO_SPREAD:
        return f"{value:.2f} ± {spread:.2f}" if key != "active_units" else f"{value:.1f} ± {spread:.1f}"
    if key == "log_px" and value is None and row.get("log_px_note"):
        return row["log_px_note"]
    if value is None:
        return ""
    if key == "knn_accuracy":
        return f"{100 * value:.1f}%"
    if key.endswith("p_value") or key == "mmd2":
        return f"{value:.3g}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], columns=None) -> str:
    columns = columns or columns_for(rows)
    lines = ["| " + " | ".join(md_cell(title) for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md_cell(_cell(r, k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_reports(
    rows: list[dict], out: Path, aggregate: bool = False, q_tests: bool = False, codes: bool = False
) -> dict[str, Path]:
    """Every report of the comparison into ``out``; returns their paths by kind. The aggregate preset
    and ``q_tests`` show the tests of q(z) against the prior as columns; ``codes`` the collapse preset's."""
    columns = columns_for(rows, aggregate or q_tests, codes)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json({"rows": rows}, out / "compare.json"), "md": out / "compare.md", "csv": out / "compare.csv"}
    paths["md"].write_text(markdown_table(rows, columns) + "\n")
    flat = [_csv_row(r, columns) for r in rows]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
        writer.writeheader()
        writer.writerows(flat)
    paths.update(plot_curves(rows, out))
    if any(r.get("mmd2") is not None for r in rows):
        paths["tradeoff"] = plot_tradeoff(rows, out / "reconstruction_vs_gaussianity.png")
    if aggregate:
        paths.update(side_by_side(rows, out))
    paths["html"] = _html(rows, columns, paths, out / "compare.html")
    return paths


def _csv_row(row: dict, columns) -> dict:
    """A row for the CSV: each column's value, a seed spread as ``<key>_sd``, a paired difference as
    ``<key>``, ``<key>_se``, ``<key>_low``, ``<key>_high`` and ``<key>_better``."""
    out = {}
    for key, _ in columns:
        value = row.get(key)
        if key.startswith("delta_"):
            for part in ("difference", "se", "low", "high", "better"):
                out[key if part == "difference" else f"{key}_{part}"] = None if value is None else value[part]
            continue
        out[key] = value
        if f"{key}_sd" in row:
            out[f"{key}_sd"] = row[f"{key}_sd"]
    out["seeds"], out["error"] = row.get("seeds", 1), row.get("error", "")
    return out


def _html(rows: list[dict], columns, paths: dict, path: Path) -> Path:
    """``compare.html``: the table and the figures in one self-contained file."""
    from .html_report import figure, page, table

    body = [table([title for _, title in columns], [[_cell(r, k) for k, _ in columns] for r in rows])]
    body += [figure(name, Path(p)) for name, p in paths.items() if str(p).endswith(".png") and Path(p).exists()]
    path.write_text(page("comparison", body))
    return path


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
        elbo = [(h["epoch"], h["val_elbo"]) for h in r["history"] if "val_elbo" in h]  # none for a point-mass guide
        if elbo:
            ax.plot(*zip(*elbo), color=color, label=f"{r['variant']} ELBO")
        else:  # a point-mass guide: its reconstruction error (minus, to read upward like the ELBO)
            rec = [(h["epoch"], -h["val_distortion"]) for h in r["history"] if "val_distortion" in h]
            if rec:
                ax.plot(*zip(*rec), ":", color=color, label=f"{r['variant']} -distortion")
        lp = [(h["epoch"], h["val_log_px"]) for h in r["history"] if "val_log_px" in h]
        if lp:
            ax.plot(*zip(*lp), "o--", color=color, label=f"{r['variant']} log p(x)")
    ax.set(xlabel="epoch", ylabel="nats per point", title="validation")
    if ax.get_legend_handles_labels()[0]:  # every variant may have failed
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


def plot_tradeoff(rows: list[dict], path: Path) -> Path:
    """Reconstruction error against the MMD² of q(z) to N(0, I), one point per variant: a penalty
    weight sweep's trade-off between reconstruction and Gaussian codes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.get("status") == "ok" and r.get("mmd2") is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, r in enumerate(shown):
        ax.scatter(r["test_distortion"], max(r["mmd2"], 1e-6), color=f"C{i % 10}")
        ax.annotate(
            r["variant"], (r["test_distortion"], max(r["mmd2"], 1e-6)), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_yscale("log")
    ax.set(
        xlabel="reconstruction error: -E log p(x|z) (nats)",
        ylabel="MMD² of q(z) to N(0, I) (lower: more Gaussian)",
        title="reconstruction vs Gaussianity (test)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
