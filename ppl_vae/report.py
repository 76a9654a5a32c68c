"""The reference evaluation report behind ``ppl-vae evaluate``.

One pass of importance sampling gives log p(x) (K samples per point), its standard
errors, the IWAE bound at K = 1, 5, 50, 500, 5000 (those below K, and K) and PSIS k-hat per
point; then the rate/distortion split, per-dimension KL, active units, ELBO surgery
(mutual information and marginal KL), the aggregate posterior's tests against N(0, I),
the posterior's correlation structure, an ArviZ export and pictures. A diagnostic that
does not apply to the model (several latent sites, say) is reported as skipped, with
the reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .aggregate import aggregate_samples, elbo_surgery, prior_match_tests
from .evaluate import NoDensityError, active_units, elbo_terms, log_px, posterior_means
from .objectives import latent_kl
from .plots import save_aggregate_view, save_iwae_curve, save_pictures, save_traversals
from .posterior import export_inference_data, posterior_correlations
from .sites import site_terms

LADDER = (1, 5, 50, 500, 5000)


def _try(fn, *args, **kwargs) -> dict:
    try:
        return fn(*args, **kwargs)
    except ValueError as err:  # the diagnostic does not apply to this pair: say why
        return {"skipped": str(err)}


def per_dimension_kl(model, guide, x: torch.Tensor) -> dict:
    t = site_terms(model, guide, x, num_particles=8)
    return {name: kl.mean((0, 1)).tolist() for name, kl in latent_kl(t, per="dim").items()}


def full_report(
    model,
    guide,
    x: torch.Tensor,
    k: int = 1000,
    labels: torch.Tensor | None = None,
    image_shape=None,
    out: Path | None = None,
    diagnostic_points: int = 500,
    progress: bool = False,
) -> dict[str, Any]:
    """Every number of the evaluation report for ``x`` (see the module docstring)."""
    start = time.perf_counter()
    ladder = sorted({j for j in LADDER if j < k} | {k})
    try:
        est = log_px(model, guide, x, k=k, ladder=ladder, psis=True, progress=progress)
        report: dict[str, Any] = est.as_dict()
        report["log_px_mc_se"] = report.pop("mc_se")
    except NoDensityError as err:  # a deterministic encoder: reconstruction and q(z) tests only
        est, report = None, {"log_px": None, "log_px_note": str(err), "n": x.shape[0], "k": None}
    terms = elbo_terms(model, guide, x)
    sub = x[:diagnostic_points]
    report.update(
        {
            "test_elbo": terms.elbo if est else None,
            "test_rate": terms.rate if est else None,
            "test_distortion": terms.distortion,
            "active_units": active_units(model, guide, x)["total"],
            "prior_match": _try(lambda: prior_match_tests(aggregate_samples(model, guide, sub))),
        }
    )
    if est is None:
        no_density = {"skipped": "a point-mass guide has no density q(z|x)"}
        report.update(kl_per_dimension=no_density, surgery=no_density, posterior_correlation=no_density)
    else:
        report.update(
            kl_per_dimension=_try(per_dimension_kl, model, guide, sub),
            surgery=_try(lambda: elbo_surgery(model, guide, sub).__dict__),
            posterior_correlation=_try(_correlation_summary, model, guide, x[: min(200, diagnostic_points)], min(k, 500)),
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report["pictures"] = _pictures(model, guide, x, labels, image_shape, out, est, terms.elbo)
        report["inference_data"] = (
            str(export_inference_data(model, guide, x[:200], out / "posterior.nc", k=100))
            if "skipped" not in report["posterior_correlation"]
            else None
        )
    report["eval_seconds"] = time.perf_counter() - start
    return report


def _correlation_summary(model, guide, x, k) -> dict:
    r = posterior_correlations(model, guide, x, k=k)
    return {
        "posterior_mean_abs_offdiag": r["posterior_mean_abs_offdiag"],
        "guide_mean_abs_offdiag": r["guide_mean_abs_offdiag"],
        "median_ess": float(r["ess"].median()),
        "k": k,
        "points": x.shape[0],
    }


def _pictures(model, guide, x, labels, image_shape, out: Path, est, elbo) -> dict:
    paths = {}
    if image_shape is not None:
        paths.update(save_pictures(model, guide, x, image_shape, out))
        means = _try(lambda: posterior_means(model, guide, x[:1000]))
        if "skipped" not in means and len(means) == 1:
            ((site, codes),) = means.items()
            order = codes.var(0).argsort(descending=True)[:8].tolist()  # the most active dimensions
            paths["traversals"] = str(save_traversals(model, site, codes.shape[1], order, x, image_shape, out / "traversals.png"))
            paths["aggregate_posterior"] = str(
                save_aggregate_view(codes, None if labels is None else labels[: codes.shape[0]], out / "aggregate_posterior.png")
            )
    if est is not None and est.iwae_by_k:
        paths["iwae_vs_k"] = str(save_iwae_curve(est.iwae_by_k, elbo, out / "iwae_vs_k.png"))
    return paths


def _p(v: float) -> str:
    return f"{v:.3g}"


def report_rows(r: dict) -> list[tuple[str, str]]:
    if r["log_px"] is None:  # a point-mass guide: no density, no bound, no log p(x)
        rows = [("test log p(x)", f"none: {r['log_px_note']}"), ("test distortion", f"{r['test_distortion']:.2f}")]
        rows += [("active units", str(r["active_units"]))]
        return rows + _aggregate_rows(r)
    rows = [
        (
            "test log p(x)",
            f"{r['log_px']:.2f} ± {r['log_px_se']:.2f} (K={r['k']}, Monte Carlo SE {r['log_px_mc_se']:.3f}, {r['n']} points)",
        ),
        ("IWAE bound by K", ", ".join(f"K={k}: {v:.2f}" for k, v in r["iwae_by_k"].items())),
    ]
    if "k_hat" in r:
        kh = r["k_hat"]
        warn = "  UNRELIABLE estimates for these points" if kh["share_above_0.7"] > 0 else ""
        rows.append(
            ("PSIS k-hat", f"share > 0.7: {kh['share_above_0.7']:.1%}, median {kh['median']:.2f}, max {kh['max']:.2f}{warn}")
        )
    rows += [
        ("test ELBO", f"{r['test_elbo']:.2f} = -(rate {r['test_rate']:.2f} + distortion {r['test_distortion']:.2f})"),
        ("active units", str(r["active_units"])),
    ]
    s = r["surgery"]
    rows.append(
        (
            "rate = I(x;z) + KL(q(z)||p(z))",
            s.get("skipped") or f"{s['rate']:.2f} = {s['mutual_information']:.2f} + {s['marginal_kl']:.2f}",
        )
    )
    rows += _aggregate_rows(r)
    c = r["posterior_correlation"]
    rows.append(
        (
            "mean |corr| off-diagonal",
            c.get("skipped")
            or f"posterior {c['posterior_mean_abs_offdiag']:.3f} vs guide {c['guide_mean_abs_offdiag']:.3f} (median ESS {c['median_ess']:.0f} of {c['k']})",
        )
    )
    return rows


def _aggregate_rows(r: dict) -> list[tuple[str, str]]:
    m = r["prior_match"]
    text = (
        m.get("skipped")
        or f"MMD {_p(m['p_value'])}, Mardia skew {_p(m['skewness_p_value'])}, kurtosis {_p(m['kurtosis_p_value'])}, "
        f"radii {_p(m['radius_p_value'])}, pairwise {_p(m['pairwise_p_value'])}"
    )
    return [("q(z) vs N(0,I): p-values", text)]


def md_cell(text) -> str:
    """A table cell's text with Markdown's column separator escaped (``KL(q||p)`` would split the row)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_report(r: dict) -> str:
    lines = ["| quantity | value |", "|---|---|"] + [f"| {md_cell(k)} | {md_cell(v)} |" for k, v in report_rows(r)]
    return "\n".join(lines) + "\n"
