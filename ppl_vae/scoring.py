"""Scoring a pair on data: one function with two levels, which every command calls.

``summary`` (what ``train`` and ``compare`` report): log p(x) by importance sampling with its
standard errors and K, the ELBO's rate and distortion, active units, and pictures; the tests of
q(z) against the prior where asked. ``full`` (``ppl-vae evaluate``): also the IWAE bound at
K = 1, 5, 50, 500, 5000 (those below K, and K) and PSIS k-hat per point from the same weights, the
tests of q(z), KL per dimension and the rate's split I(x;z) + KL(q(z)||p(z)), the posterior's
correlations, traversals, the IWAE-vs-K curve and an ArviZ export.

Each stage is one function and one entry of :data:`STAGES`. A guide with a point mass (a
deterministic encoder) has no density q(z|x): the stages that need one are reported as skipped,
with the reason, here and nowhere else. A diagnostic that does not apply to the pair (several
latent sites, say) is reported as skipped with its own reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import distributed, hooks
from .evaluate import active_units, elbo_terms, posterior_moments
from .global_latents import GlobalScaled, validation_elbo
from .importance_sampling import PSIS_MIN_K, NoDensityError, log_px, psis_too_few

LADDER = (1, 5, 50, 500, 5000)
LEVELS = ("summary", "full")
NO_DENSITY = "a point-mass guide has no density q(z|x)"


@dataclass
class Scoring:
    """What the stages read and write: the pair, the data and the options, and the report so far."""

    model: Any
    guide: Any
    x: torch.Tensor
    level: str = "summary"
    k: int = 1000
    seed: int | None = 0
    compile: str = "auto"
    progress: bool = False
    labels: torch.Tensor | None = None
    image_shape: tuple | None = None
    out: Path | None = None
    prior_tests: bool = False
    diagnostic_points: int = 500
    refine: int = 0  # Adam steps of the per-point refinement (0: no gap split)
    report: dict = field(default_factory=dict)
    estimate: Any = None  # the LogPx, None for a point mass
    codes: torch.Tensor | None = None  # one z ~ q(z|x) per diagnostic point, where a stage drew them
    moments: dict | None = None  # (E_q[z|x], sd_q[z|x]) per site on x, once a stage computed them

    @property
    def density(self) -> bool:
        return self.report.get("log_px") is not None

    def posterior_moments(self) -> dict:
        """:func:`ppl_vae.evaluate.posterior_moments` of ``x``, computed once for the stages that read them."""
        if self.moments is None:
            self.moments = posterior_moments(self.model, self.guide, self.x)
        return self.moments

    def posterior_means(self) -> dict:
        """E_q[z|x] per site on ``x``: the means of :meth:`posterior_moments`."""
        return {name: mean for name, (mean, _) in self.posterior_moments().items()}

    @property
    def sub(self) -> torch.Tensor:
        return self.x[: self.diagnostic_points]


@dataclass
class Stage:
    """One step of the scoring: ``run`` returns the report's new entries. ``when`` says whether it
    runs for a given scoring (the level, the options); ``needs_density`` stages are skipped, with
    the one reason, for a point-mass guide."""

    name: str
    run: Callable[[Scoring], dict]
    when: Callable[[Scoring], bool] = lambda s: True
    needs_density: bool = False
    skipped_keys: tuple = ()


def _try(fn, *args, **kwargs) -> dict:
    try:
        return fn(*args, **kwargs)
    except ValueError as err:  # the diagnostic does not apply to this pair: say why
        return {"skipped": str(err)}


def _log_px(s: Scoring) -> dict:
    full = s.level == "full"
    ladder = sorted({j for j in LADDER if j < s.k} | {s.k}) if full else ()
    try:
        psis = full and s.k >= PSIS_MIN_K  # fewer draws leave no tail to fit: the report says so
        s.estimate = log_px(
            s.model, s.guide, s.x, k=s.k, ladder=ladder, psis=psis, progress=s.progress, seed=s.seed, compile=s.compile
        )
    except NoDensityError as err:  # a deterministic encoder: reconstruction and q(z) tests only
        return {"log_px": None, "log_px_note": str(err), "n": s.x.shape[0], "k": None}
    report = s.estimate.as_dict()
    report["log_px_mc_se"] = report.pop("mc_se")
    report["log_px_per_point"] = s.estimate.per_point.tolist()  # for paired comparisons on the same points
    if hooks.reads_training_data(s.model):  # p(z) is conditioned on training codes: log p(x) is a code length
        report["log_px_is"] = "acn coding cost"
    if not full:
        report.pop("iwae_by_k", None)
    elif s.k < PSIS_MIN_K:
        report["k_hat"] = {"skipped": psis_too_few(s.k)}
    return report


def _elbo(s: Scoring) -> dict:
    terms = elbo_terms(s.model, s.guide, s.x)
    report = {"test_distortion": terms.distortion, "distortion_per_point": terms.distortion_per_point.tolist()}
    if not s.density:
        return {"test_elbo": None, "test_rate": None, **report}
    return {"test_elbo": terms.elbo, "test_rate": terms.rate, **report}


def _units(s: Scoring) -> dict:
    units = active_units(s.model, s.guide, s.x, moments=s.posterior_moments())
    sigma = units["sigma"]
    flat = [v for values in sigma.values() for v in values]
    summary = {"mean": sum(flat) / len(flat), "min": min(flat), "max": max(flat), "per_dimension": sigma}
    return {"active_units": units["total"], "latent_dims": units["dims"], "encoder_sigma": summary}


def _prior_match(s: Scoring) -> dict:
    from .aggregate import aggregate_samples, prior_draws, prior_match_tests

    def tests():
        s.codes = aggregate_samples(s.model, s.guide, s.sub)
        return prior_match_tests(s.codes, reference=prior_draws(s.model, s.guide, s.sub))

    return {"prior_match": _try(tests)}


def _codes(s: Scoring) -> dict:
    """k-NN accuracy of the test codes where there are labels and one latent site; the ordered
    coding cost where the prior is conditioned on another code (ACN) (:mod:`ppl_vae.codes`)."""
    from .codes import knn_accuracy, ordered_coding_cost

    out: dict = {}
    means = _try(s.posterior_means) if s.labels is not None else {}
    if len(means) == 1 and "skipped" not in means:
        (codes,) = means.values()
        out["code_knn"] = _try(knn_accuracy, codes, s.labels[: codes.shape[0]])
    prior = getattr(s.model, "prior", None)
    if s.density and hasattr(prior, "conditional") and hasattr(prior, "encode"):
        distortion = torch.tensor(s.report["distortion_per_point"], device=s.x.device)
        out["ordered_coding"] = ordered_coding_cost(prior, s.guide, s.x, distortion)
    return out


def _kl_split(s: Scoring) -> dict:
    from .aggregate import elbo_surgery
    from .objectives import latent_kl
    from .sites import site_terms

    def per_dimension():
        t = site_terms(s.model, s.guide, s.sub, num_particles=8)
        return {name: kl.mean((0, 1)).tolist() for name, kl in latent_kl(t, per="dim").items()}

    def split():
        surgery = elbo_surgery(s.model, s.guide, s.x)
        n = surgery.points
        return {
            "mutual_information": surgery.mutual_information,
            "mutual_information_se": surgery.mutual_information_se,
            "marginal_kl": s.report["test_rate"] - surgery.mutual_information,
            "points": n,
            "mutual_information_max": math.log(n),
            "joint": surgery.joint,
            # a prior conditioned on other points' codes (ACN): the rest of the rate is not KL(q(z)||p(z))
            "conditional_prior": hooks.reads_training_data(s.model),
        }

    return {"kl_per_dimension": _try(per_dimension), "surgery": _try(split)}


def _correlations(s: Scoring) -> dict:
    from .posterior import posterior_correlations

    def summary():
        x, k = s.x[: min(200, s.diagnostic_points)], min(s.k, 500)
        r = posterior_correlations(s.model, s.guide, x, k=k)
        return {
            "posterior_mean_abs_offdiag": r["posterior_mean_abs_offdiag"],
            "guide_mean_abs_offdiag": r["guide_mean_abs_offdiag"],
            "median_ess": float(r["ess"].median()),
            "k": k,
            "points": x.shape[0],
        }

    return {"posterior_correlation": _try(summary)}


def _gap_split(s: Scoring) -> dict:
    from .refine import gap_split, refine_points

    def split():
        refined = refine_points(s.model, s.guide, s.sub, steps=s.refine, seed=0 if s.seed is None else s.seed)
        return gap_split(s.estimate.per_point, refined)

    return {"gap_split": _try(split)}


def _pictures(s: Scoring) -> dict:
    from .plots import save_aggregate_view, save_iwae_curve, save_pictures, save_traversals

    out = s.out
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    if s.image_shape is not None:
        paths.update(save_pictures(s.model, s.guide, s.x, s.image_shape, out))
    labels = None if s.labels is None else s.labels
    if s.level == "full" and s.image_shape is not None:
        means = _try(lambda: {n: m[:1000] for n, m in s.posterior_means().items()})
        if "skipped" not in means and len(means) == 1:
            ((site, codes),) = means.items()
            order = codes.var(0).argsort(descending=True)[:8].tolist()  # the most active dimensions
            paths["traversals"] = str(
                save_traversals(s.model, site, codes.shape[1], order, s.x, s.image_shape, out / "traversals.png")
            )
            view = save_aggregate_view(
                codes, None if labels is None else labels[: codes.shape[0]], out / "aggregate_posterior.png"
            )
            paths["aggregate_posterior"] = str(view)
    elif s.codes is not None:
        view = save_aggregate_view(
            s.codes, None if labels is None else labels[: s.codes.shape[0]], out / "aggregate_posterior.png"
        )
        paths["aggregate_posterior"] = str(view)
    if s.estimate is not None and s.estimate.iwae_by_k:
        paths["iwae_vs_k"] = str(save_iwae_curve(s.estimate.iwae_by_k, s.report["test_elbo"], out / "iwae_vs_k.png"))
    return {"pictures": paths}


def _classification(s: Scoring) -> dict:
    from .labels import classification_error

    if s.labels is None:  # a guide with a classifier, test points without labels: say why there is no error rate
        return {"classification_note": "not measured: the test points have no labels (y_test in an .npz)"}
    return classification_error(s.guide, s.x, s.labels[: s.x.shape[0]]) or {}


def _classifies(s: Scoring) -> bool:
    from .labels import classifier

    with torch.no_grad():
        return s.labels is not None or classifier(s.guide, s.x[:2]) is not None


def _inference_data(s: Scoring) -> dict:
    from .posterior import export_inference_data

    if "skipped" in s.report.get("posterior_correlation", {"skipped": ""}):
        return {"inference_data": None}
    return {"inference_data": str(export_inference_data(s.model, s.guide, s.x[:200], s.out / "posterior.nc", k=100))}


def _full(s: Scoring) -> bool:
    return s.level == "full"


STAGES: list[Stage] = [
    Stage("log p(x) by importance sampling", _log_px),
    Stage("ELBO, rate and distortion", _elbo),
    Stage("active units", _units),
    Stage("test classification error", _classification, when=_classifies),
    Stage("k-NN accuracy of the codes; the ordered coding cost", _codes),
    Stage("tests of q(z) against the prior", _prior_match, when=lambda s: s.level == "full" or s.prior_tests),
    Stage("KL per dimension and the rate's split", _kl_split, when=_full, needs_density=True,
          skipped_keys=("kl_per_dimension", "surgery")),
    Stage("posterior correlations", _correlations, when=_full, needs_density=True, skipped_keys=("posterior_correlation",)),
    Stage("the inference gap: approximation and amortisation", _gap_split, when=lambda s: s.refine > 0,
          needs_density=True, skipped_keys=("gap_split",)),
    Stage("pictures", _pictures, when=lambda s: s.out is not None),
    Stage("the ArviZ export", _inference_data, when=lambda s: s.level == "full" and s.out is not None),
]  # fmt: skip


def score(model, guide, x: torch.Tensor, level: str = "summary", log=None, **options) -> dict | None:
    """The scores of ``model``/``guide`` on ``x`` at ``level`` (see the module docstring).

    ``options`` are :class:`Scoring`'s: ``k`` importance samples per point, ``seed`` (log p(x)
    draws each batch of points from it: the same estimate however many processes share it),
    ``compile`` (the log p(x) chunks), ``progress``, ``labels`` and ``image_shape`` (pictures),
    ``out`` (the folder for pictures; none without it), ``prior_tests`` (the q(z) tests at the
    summary level), ``diagnostic_points``, ``refine`` (Adam steps per point for the split of the
    inference gap, :mod:`ppl_vae.refine`, on the diagnostic points). ``log`` receives one line naming each stage as it
    starts. Under torchrun the ranks share the log p(x) stage and rank 0 alone does the rest and
    returns the report (None elsewhere). Numbers are in nats per data point.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got '{level}'")
    s = Scoring(model, guide, x, level=level, **options)
    start = time.perf_counter()
    stages = [stage for stage in STAGES if stage.when(s)]
    seconds = {}
    for i, stage in enumerate(stages, start=1):
        if i > 1 and not distributed.is_main():
            return None
        if stage.needs_density and not s.density:
            s.report.update({key: {"skipped": NO_DENSITY} for key in stage.skipped_keys})
            continue
        if log is not None and distributed.is_main():
            log(f"evaluate [{i}/{len(stages)}] {stage.name}")
        begun = time.perf_counter()
        s.report.update(stage.run(s))
        seconds[stage.name] = round(time.perf_counter() - begun, 3)
    s.report["stage_seconds"] = seconds
    s.report["eval_seconds"] = time.perf_counter() - start
    return s.report


def validation(model, guide, x: torch.Tensor, config, epoch: int, monitor: str = "val_log_px", objective=None) -> dict:
    """A training epoch's validation row: ELBO, rate and distortion (distortion only for a point-mass
    guide), and log p(x) with ``config.eval_k`` samples every ``config.eval_every`` epochs and at the
    last, drawn from its own seed (the same however many ranks share the points), in full float32.
    ``monitor``: what the trainer follows (``val_distortion``: a point-mass guide, no density).
    A model with global latents (``objective`` a :class:`GlobalScaled`) has no per-point estimate:
    its row is the ELBO per point, the global sites' share included."""
    from .device import tf32_matmul

    if isinstance(objective, GlobalScaled):
        return {"val_elbo": validation_elbo(model, guide, x, objective.n_points)}

    with tf32_matmul(False):
        terms = elbo_terms(model, guide, x)
        if monitor == "val_distortion":  # a point mass has no density: no ELBO, no log p(x)
            return {"val_distortion": terms.distortion}
        row = {"val_elbo": terms.elbo, "val_rate": terms.rate, "val_distortion": terms.distortion}
        every = config.eval_every
        if every and (epoch % every == 0 or epoch == config.epochs):
            try:
                est = log_px(model, guide, x, k=config.eval_k, seed=config.seed + epoch, compile=config.compile)
            except NoDensityError:
                return row
            row.update(val_log_px=est.log_px, val_log_px_se=est.log_px_se, val_k=est.k)
    return row
