"""The reference evaluation report behind ``ppl-vae evaluate``.

One pass of importance sampling gives log p(x) (K samples per point), its standard
errors, the IWAE bound at K = 1, 5, 50, 500, 5000 (those below K, and K) and PSIS k-hat per
point; then the rate/distortion split, per-dimension KL, active units, ELBO surgery
(mutual information and marginal KL), the aggregate posterior's tests against N(0, I),
the posterior's correlation structure, an ArviZ export and pictures. A diagnostic that
does not apply to the model (several latent sites, say) is reported as skipped, with
the reason. Each stage is named as it starts (``log``); :mod:`ppl_vae.report_text` turns the
numbers into rows with how to read them.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import distributed
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


class Stages:
    """Names each stage of the report as it starts (``log``: a function taking one line, or None)
    and keeps how long each took."""

    def __init__(self, names: list[str], log=None):
        self.names, self.log, self.seconds = names, log, {}

    @contextmanager
    def __call__(self, name: str):
        if self.log is not None and distributed.is_main():
            self.log(f"evaluate [{self.names.index(name) + 1}/{len(self.names)}] {name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)


STAGES = [
    "log p(x) by importance sampling",
    "ELBO, rate and distortion",
    "active units",
    "tests of q(z) against N(0, I)",
    "KL per dimension and the rate's split",
    "posterior correlations",
    "pictures and the ArviZ export",
]


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
    log=None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Every number of the evaluation report for ``x`` (see the module docstring); ``log``
    receives one line naming each stage as it starts. ``seed``: log p(x) draws each batch of
    points from it (see :func:`ppl_vae.evaluate.log_px`); under torchrun the ranks share that
    stage and rank 0 alone does the rest (the others return the log p(x) numbers only)."""
    start = time.perf_counter()
    stage = Stages(STAGES if out is not None else STAGES[:-1], log)
    ladder = sorted({j for j in LADDER if j < k} | {k})
    with stage(STAGES[0]):
        try:
            est = log_px(model, guide, x, k=k, ladder=ladder, psis=True, progress=progress, seed=seed)
            report: dict[str, Any] = est.as_dict()
            report["log_px_mc_se"] = report.pop("mc_se")
        except NoDensityError as err:  # a deterministic encoder: reconstruction and q(z) tests only
            est, report = None, {"log_px": None, "log_px_note": str(err), "n": x.shape[0], "k": None}
    if not distributed.is_main():
        return report
    with stage(STAGES[1]):
        terms = elbo_terms(model, guide, x)
    sub = x[:diagnostic_points]
    report.update(test_elbo=terms.elbo if est else None, test_rate=terms.rate if est else None, test_distortion=terms.distortion)
    with stage(STAGES[2]):
        units = active_units(model, guide, x)
        report.update(active_units=units["total"], latent_dims=units["dims"])
    with stage(STAGES[3]):
        report["prior_match"] = _try(lambda: prior_match_tests(aggregate_samples(model, guide, sub)))
    if est is None:
        no_density = {"skipped": "a point-mass guide has no density q(z|x)"}
        report.update(kl_per_dimension=no_density, surgery=no_density, posterior_correlation=no_density)
    else:
        with stage(STAGES[4]):
            report["kl_per_dimension"] = _try(per_dimension_kl, model, guide, sub)
            report["surgery"] = _try(_rate_split, model, guide, sub, terms.rate)
        with stage(STAGES[5]):
            report["posterior_correlation"] = _try(
                _correlation_summary, model, guide, x[: min(200, diagnostic_points)], min(k, 500)
            )
    if out is not None:
        with stage(STAGES[6]):
            out.mkdir(parents=True, exist_ok=True)
            report["pictures"] = _pictures(model, guide, x, labels, image_shape, out, est, terms.elbo)
            report["inference_data"] = (
                str(export_inference_data(model, guide, x[:200], out / "posterior.nc", k=100))
                if "skipped" not in report["posterior_correlation"]
                else None
            )
    report["stage_seconds"] = stage.seconds
    report["eval_seconds"] = time.perf_counter() - start
    return report


def _rate_split(model, guide, x, rate: float) -> dict:
    """The report's one rate split as I(x;z) + KL(q(z)||p(z)): I estimated on ``x`` (at most
    log N), the marginal KL as the rest of the rate (the ELBO row's, over every test point)."""
    s = elbo_surgery(model, guide, x)
    return {
        "mutual_information": s.mutual_information,
        "marginal_kl": rate - s.mutual_information,
        "points": x.shape[0],
        "mutual_information_max": math.log(x.shape[0]),
    }


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
