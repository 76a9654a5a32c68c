"""``evaluate --html``: the evaluation report as one self-contained HTML file (tables, notes and
the pictures embedded as base64 PNG), to open, mail or archive without the folder beside it."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from .report_text import UNITS, report_rows

CAPTIONS = {
    "reconstructions": "Test images (rows labelled data) and their reconstructions below them: the mean of p(x | z) at "
    "one z ~ q(z | x).",
    "samples": "Samples: the mean of p(x | z) at z ~ p(z).",
    "traversals": "Latent traversals: each row moves one latent dimension (the most active first) from -3 to 3 with the "
    "others at 0.",
    "aggregate_posterior": "The aggregate posterior: one posterior mean per test image (first two principal components "
    "when there are more than two dimensions), coloured by label.",
    "iwae_vs_k": "The IWAE bound against the number of importance samples K, with the ELBO for reference.",
}

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 68rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.35rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.note { color: #555; font-size: 0.9em; max-width: 34rem; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
code { background: #f6f6f6; padding: 0 0.2rem; }
"""


def _e(text) -> str:
    return html.escape(str(text))


def table(header: list[str], rows: list[list[str]], note_column: int | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f'<td class="note">{_e(c)}</td>' if i == note_column else f"<td>{_e(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(name: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = CAPTIONS.get(name, name)
    return f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{data}"><figcaption>{_e(caption)}</figcaption></figure>'


def html_report(report: dict, title: str, path: str | Path) -> Path:
    """Write the report (:func:`ppl_vae.experiment.evaluate_checkpoint`'s) to ``path``."""
    rows = [list(r) for r in report_rows(report)]
    about = [
        ["data", report.get("dataset")],
        ["model / guide / objective", f"{report.get('model')} / {report.get('guide')} / {report.get('objective')}"],
        ["trained epochs", report.get("epochs")],
        ["checkpoint", report.get("checkpoint")],
        ["device", f"{report.get('device')} ({report.get('device_name')})"],
        ["versions", ", ".join(f"{k} {v}" for k, v in (report.get("versions") or {}).items())],
        ["command", " ".join(report.get("command") or [])],
        ["git commit", report.get("git_commit") or "none"],
    ]
    stages = [[name, f"{seconds:.1f} s"] for name, seconds in (report.get("stage_seconds") or {}).items()]
    figures = [figure(name, Path(p)) for name, p in (report.get("pictures") or {}).items() if Path(p).exists()]
    parts = [
        f"<p>Values in {_e(UNITS)}.</p>",
        table(["quantity", "value", "how to read it"], rows, note_column=2),
        "<h2>Pictures</h2>",
        *figures,
        "<h2>What was evaluated</h2>",
        table(["", ""], about),
        "<h2>Time per stage</h2>",
        table(["stage", "time"], stages),
    ]
    path = Path(path)
    path.write_text(page(title, parts), encoding="utf-8")
    return path


def page(title: str, body: list[str]) -> str:
    """A self-contained HTML page: ``title`` as its heading, ``body`` (HTML fragments) below it."""
    head = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{STYLE}</style></head>'
    return "\n".join([head, f"<body><h1>{_e(title)}</h1>", *body, "</body></html>"])
