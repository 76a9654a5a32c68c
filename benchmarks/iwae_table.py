r"""The table of ``reproduce_iwae.py --table``: paper, ppl_vae and its plain-PyTorch reference side
by side, with the paired difference over the test images (and over seeds, one folder each).

For seed s and test image x, with :math:`\ell` the per-image log p(x) estimate,

.. math::

    d_s = \frac1n \sum_x \big(\ell_{\mathrm{ref},s}(x) - \ell_{\mathrm{ppl\_vae},s}(x)\big), \qquad D = \frac1S \sum_s d_s,

ppl_vae's -log p(x) minus the reference's, with the SE of ``ppl_vae.compare_stats.paired_difference``:
the test images' noise alone for one seed, the training's randomness added for several.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def paired(folders: list[Path], cell: str, runs: list[tuple], budget: tuple[int, int]) -> str:
    """ppl_vae's -log p(x) minus its reference's, mean ± SE over the test images both scored; over
    several seeds (one folder each) the SE counts the training's randomness too
    (``ppl_vae.compare_stats.paired_difference``). Only runs of ``budget`` (passes, K) are paired:
    not a reference still at an earlier pass, nor another seed's run at another budget."""
    import torch

    from ppl_vae.compare_stats import paired_difference

    ours, theirs, why = [], [], ""
    for first, out, (r, ref) in zip([True] + [False] * len(runs), folders, runs):
        if r and ref and not (r["passes"], r["k"]) == (ref["passes"], ref["k"]) == budget:  # other images: shape check
            if first:
                why = f"not paired: ppl_vae {r['passes']} passes, K {r['k']}; reference {ref['passes']} passes, K {ref['k']}"
            continue
        a, b = out / cell / "per_point.pt", out / "reference" / cell / "per_point.pt"
        if not (r and ref and a.exists() and b.exists()):
            continue
        a, b = torch.load(a), torch.load(b)
        if a.shape != b.shape or (ours and a.shape != ours[0].shape):
            why = why or "scored on other test images"
            continue
        ours.append(a.double().numpy())
        theirs.append(b.double().numpy())
    if not ours:
        return why
    d = paired_difference(theirs, ours, sign=-1.0)  # log p(x) per image: reference's minus ppl_vae's
    return f"{d['difference']:+.2f} ± {d['se']:.2f}" + (f" ({d['seeds']} seeds)" if d["seeds"] > 1 else "")


def nll_over_seeds(runs: list[dict]) -> str:
    """One run's -log p(x) ± SE; several seeds' mean and each seed's value."""
    if not runs:
        return "—"
    if len(runs) == 1:
        return f"{runs[0]['nll']:.2f} ± {runs[0]['nll_se']:.2f}"
    mean = sum(r["nll"] for r in runs) / len(runs)
    each = ", ".join(f"{r['nll']:.2f}" for r in runs)
    return f"{mean:.2f} (seeds: {each})"


def read_folder(out: Path) -> tuple[dict, dict]:
    """The finished cells under ``out``, trained by ppl_vae and by the reference, by cell."""
    mine = {r["cell"]: r for r in (json.loads(p.read_text()) for p in sorted(out.glob("*/result.json")))}
    plain = {r["cell"]: r for r in (json.loads(p.read_text()) for p in out.glob("reference/*/result.json"))}
    return mine, plain


def table(out: Path, seeds_out: list[Path], cells: list[str], table_md: str | None = None) -> int:
    """Print (and with ``table_md`` write) the table of the cells finished under ``out``, in the
    order of ``cells``; ``seeds_out``: folders of the same cells trained with other seeds."""
    folders = [out, *seeds_out]
    read = [read_folder(f) for f in folders]
    if not read[0][0] and not read[0][1]:
        print(f"no finished cell under {out}", file=sys.stderr)
        return 2
    lines = [
        "| cell | objective | paper −log p(x) | ppl_vae −log p(x) ± SE | gap | plain PyTorch −log p(x) ± SE | ppl_vae − plain (paired) "
        "| passes | K × test images | active units | init | train time (ppl_vae / plain) | eval time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = {name: i for i, name in enumerate(cells)}
    for cell in sorted(set(read[0][0]) | set(read[0][1]), key=lambda c: order.get(c, 99)):
        runs = [(mine.get(cell), plain.get(cell)) for mine, plain in read]
        r, ref = runs[0]
        shown = r or ref
        ours = [m for m, _ in runs if m and m["passes"] == shown["passes"] and m["k"] == shown["k"]]
        theirs = [p for _, p in runs if p and p["passes"] == shown["passes"] and p["k"] == shown["k"]]
        paper = shown.get("paper_nll")
        gap = f"{sum(m['nll'] for m in ours) / len(ours) - paper:+.2f}" if paper and ours and r else ""
        units = ", ".join(f"{k} {v}" for k, v in shown["active_units"].items() if k != "total")
        times = " / ".join(f"{x['train_seconds'] / 60:.1f} min" if x else "—" for x in (r, ref))
        init = "data" if not shown.get("data_init", "off").startswith("off") else "default"
        lines.append(
            f"| {cell} | {shown['objective']} | {paper or '—'} | {nll_over_seeds(ours if r else [])} | {gap} | "
            f"{nll_over_seeds(theirs if ref else [])} | {paired(folders, cell, runs, (shown['passes'], shown['k']))} | "
            f"{shown['passes']} of {shown['full_passes']} | {shown['k']} × {shown['n_test']} | {units} | {init} | {times} | "
            f"{shown['eval_seconds']:.0f} s |"
        )
    text = "\n".join(lines)
    print(text)
    if table_md:
        Path(table_md).write_text(text + "\n")
    return 0
