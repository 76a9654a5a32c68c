"""Scores as text, the one renderer for every command: one row per quantity (in nats per data
point unless the row says otherwise), each with how to read it and what to do, for the terminal,
Markdown and HTML; a training run's rows (losses, best epoch, time) go above its scores.

A row is shown for each quantity the report holds (:func:`ppl_vae.scoring.score`'s summary level
holds fewer than its full level). Each diagnostic's note is written from its value: a PSIS k-hat
row with points above 0.7 says what that does to the log p(x) figure and what to change, one
without says the estimate holds.
"""

from __future__ import annotations

import math
from typing import NamedTuple

UNITS = "nats per data point unless stated"


class Row(NamedTuple):
    quantity: str
    value: str
    note: str


def _p(v: float) -> str:
    return f"{v:.3g}"


def report_rows(r: dict) -> list[Row]:
    """The report's rows; ``r`` is :func:`ppl_vae.scoring.score`'s dict (either level)."""
    if r["log_px"] is None:  # a point-mass guide: no density, no bound, no log p(x)
        rows = [
            Row(
                "test log p(x)", f"none: {r['log_px_note']}", "a deterministic encoder defines no q(z|x), so no bound on log p(x)"
            ),
            Row("test distortion", f"{r['test_distortion']:.2f}", "-E log p(x|z): the reconstruction error, nats per point"),
            _units_row(r),
        ]
        rows += [_sigma_row(r)] if "encoder_sigma" in r else []
        return rows + ([_prior_match_row(r)] if "prior_match" in r else [])
    optional = (("iwae_by_k", _ladder_row), ("k_hat", _k_hat_row))
    rows = [_log_px_row(r)] + [row(r) for key, row in optional if key in r] + [_elbo_row(r), _units_row(r)]
    rows += [_sigma_row(r)] if "encoder_sigma" in r else []
    later = (
        ("classification_error", _classification_row),
        ("classification_note", lambda r: Row("test classification error", r["classification_note"], "")),
        ("code_knn", _knn_row),
        ("ordered_coding", _ordered_row),
        ("surgery", _split_row),
        ("prior_match", _prior_match_row),
        ("posterior_correlation", _correlation_row),
        ("gap_split", _gap_row),
    )
    return rows + [row(r) for key, row in later if key in r]


def run_rows(result: dict) -> list[tuple[str, str]]:
    """A training run's rows above its scores: data, pair, losses, best epoch, time, the step."""
    rows = [
        ("dataset", f"{result['dataset']} ({result['n']} test points)"),
        ("model / guide", f"{result['model']} / {result['guide']}, objective {_objective(result)}"),
        ("device", result["device"]),
    ]
    if "train_loss" in result:
        rows.append(("train loss (nats/point)", f"{result['train_loss']:.2f}"))
        last = (result.get("history") or [{}])[-1]
        if "val_elbo" in last:
            rows.append(("validation ELBO", f"{last['val_elbo']:.2f}"))
        elif "val_distortion" in last:  # a point-mass guide: no ELBO
            rows.append(("validation distortion", f"{last['val_distortion']:.2f}"))
    best = result.get("best")
    if best:
        stop = f"; training stopped early after epoch {result['epochs']}" if result.get("stopped_early") else ""
        rows.append(
            (
                "best epoch",
                f"{best['epoch']} ({best['monitor']} {best['value']:.2f}){stop}; test scores are of epoch {result['scored_epoch']}",
            )
        )
    if "seconds_per_epoch" in result:
        rows.append(("time per epoch", f"{result['seconds_per_epoch']:.2f} s over {result['epochs']} epochs"))
    if "step" in result:
        rows.append(("training step", result["step"]))
    return rows


def _objective(result: dict) -> str:
    """The objective as given, with every default written out where that says more (``iwae (iwae:k=5)``)."""
    given, resolved = result["objective"], result.get("objective_resolved")
    return given if not resolved or resolved == given else f"{given} ({resolved})"


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _log_px_row(r: dict) -> Row:
    value = f"{r['log_px']:.2f} ± {r['log_px_se']:.2f} (K={r['k']}, Monte Carlo SE {r['log_px_mc_se']:.3f}, {r['n']} points)"
    note = (
        "mean over the test points of the importance-sampled log p(x); ± is its standard error over the points, the "
        "Monte Carlo SE the estimator's own noise at this K. It is a stochastic lower bound: a larger K can only raise it "
        "on average"
    )
    if r.get("log_px_is") == "acn coding cost":
        note = (
            "the same estimator under the prior conditioned on each point's nearest training codes (ACN): a code length "
            "per point given the training set's codes, not a log-likelihood; compare it with other ACN runs, not with a "
            "VAE's log p(x). " + note
        )
        return Row("test coding cost (ACN)", value, note)
    return Row("test log p(x)", value, note)


def _ladder_row(r: dict) -> Row:
    by_k = {int(k): v for k, v in r["iwae_by_k"].items()}
    value = ", ".join(f"K={k}: {v:.2f}" for k, v in sorted(by_k.items()))
    ks = sorted(by_k)
    if len(ks) < 2:
        return Row("IWAE bound by K", value, "the bound at each K; with one K there is no trend to read")
    gain = by_k[ks[-1]] - by_k[ks[-2]]
    verdict = (
        f"still rising ({gain:+.2f} nats from K={ks[-2]} to K={ks[-1]}): log p(x) is not converged, raise --k"
        if gain > 0.1
        else f"flat at the top ({gain:+.2f} nats from K={ks[-2]} to K={ks[-1]}): K is large enough for this guide"
    )
    return Row("IWAE bound by K", value, f"the bound on the same draws at each K; {verdict}")


def _k_hat_row(r: dict) -> Row:
    kh = r["k_hat"]
    if "skipped" in kh:
        return Row("PSIS k-hat", kh["skipped"], "run with a larger --k to know whether log p(x) can be trusted")
    share = kh["share_above_0.7"]
    value = f"share > 0.7: {share:.1%}, share > 0.5: {kh['share_above_0.5']:.1%}, median {kh['median']:.2f}, max {kh['max']:.2f}"
    if not math.isfinite(kh["median"]):
        note = "the Pareto fit failed (too few samples per point?): run with a larger --k before trusting log p(x)"
    elif share > 0:
        note = (
            f"UNRELIABLE for {share:.1%} of the points: with k-hat > 0.7 their importance weights have (nearly) infinite "
            "variance, so their log p(x) is likely underestimated and the mean is a loose lower bound. Remedy: a larger "
            "--k, or a guide closer to the posterior (full_cov, iaf; training with iwae or dreg)"
        )
    else:
        note = (
            "Pareto k-hat of each point's importance weights (Vehtari et al.): below 0.5 good, 0.5-0.7 usable, above 0.7 "
            "unreliable; no point is above 0.7, so the estimates hold"
        )
    return Row("PSIS k-hat", value, note)


def _elbo_row(r: dict) -> Row:
    value = f"{r['test_elbo']:.2f} = -(rate {r['test_rate']:.2f} + distortion {r['test_distortion']:.2f})"
    gap = r["log_px"] - r["test_elbo"]
    note = (
        "rate = E KL(q(z|x) || p(z)), the nats the code carries about each point; distortion = -E log p(x|z), the "
        f"reconstruction error (one draw per point). log p(x) - ELBO = {gap:.2f} nats is what the guide gives away"
    )
    return Row("test ELBO", value, note)


def _knn_row(r: dict) -> Row:
    c = r["code_knn"]
    if "skipped" in c:
        return Row("k-NN accuracy of the codes", c["skipped"], "")
    value = f"{100 * c['knn_accuracy']:.2f}% ± {100 * c['knn_accuracy_se']:.2f}% ({c['k']}-NN over {c['points']} test codes)"
    note = f"each code (posterior mean) labelled by its {c['k']} nearest other test codes; the majority class is {100 * c['majority_class']:.1f}%"
    return Row("k-NN accuracy of the codes", value, note)


def _ordered_row(r: dict) -> Row:
    o = r["ordered_coding"]
    value = f"{o['ordered_coding_cost']:.2f} nats/image (rate {o['ordered_rate']:.2f} + distortion {o['distortion']:.2f})"
    note = (
        f"the test set sent in one tour ({o['tour']}); the first code costs {o['first_code_nats']:.2f} nats under N(0, I), "
        "included"
    )
    return Row("ordered coding cost (ACN)", value, note)


def _classification_row(r: dict) -> Row:
    value = f"{100 * r['classification_error']:.2f}% ± {100 * r['classification_error_se']:.2f}% ({r['classification_n']} points)"
    note = "the guide's classifier q(y|x) (its site 'y'), its most probable class against the test labels; SE binomial"
    return Row("test classification error", value, note)


def _units_row(r: dict) -> Row:
    dims = r.get("latent_dims")
    value = f"{r['active_units']} of {dims}" if dims else str(r["active_units"])
    note = "dimensions u with Cov_x E_q[u|x] > 0.01 (Burda et al. 2016): the others carry no information about x"
    if dims and r["active_units"] < dims:
        note += "; many inactive units is posterior collapse (KL warm-up or free bits keep units alive, or use a smaller z)"
    return Row("active units", value, note)


def _sigma_row(r: dict) -> Row:
    s = r["encoder_sigma"]
    value = f"mean {s['mean']:.3g} (from {s['min']:.3g} to {s['max']:.3g} over {r.get('latent_dims')} dimensions)"
    note = (
        "E_x sd_q(z_u|x) per latent dimension u, in the units of z (the prior's sd is 1): near 1 on an inactive unit, "
        "near 0 on a near-point-mass code, which a small or absent KL term lets the encoder use"
    )
    return Row("encoder σ per dimension", value, note)


def _split_row(r: dict) -> Row:
    s = r["surgery"]
    if "skipped" in s:
        return Row("rate split: I(x;z) + KL(q(z)||p(z))", s["skipped"], "")
    se = s.get("mutual_information_se")
    value = f"{s['mutual_information']:.2f}" + (f" ± {se:.2f}" if se is not None and math.isfinite(se) else "")
    value += f" + {s['marginal_kl']:.2f} (the rate {r['test_rate']:.2f} of the ELBO row)"
    whose = "of the joint code of every latent site " if s.get("joint") else ""
    if s.get("conditional_prior"):
        note = (
            f"I(x;z) {whose}estimated on {s['points']} points (at most log {s['points']} = {s['mutual_information_max']:.2f}); "
            "this model's prior is conditioned on other points' codes (ACN), so the rest of the rate is not "
            "KL(q(z)||p(z)) and can be negative: the code costs less than the information it carries"
        )
        return Row("rate split: I(x;z) + rest of the rate", value, note)
    note = (
        f"I(x;z) {whose}estimated on {s['points']} points (it cannot exceed log {s['points']} = "
        f"{s['mutual_information_max']:.2f}; ± its SE over the points); "
        "KL(q(z)||p(z)) is the rest of the rate: how far the aggregate posterior is from the prior. A large one means "
        "prior samples land where no data point is encoded (try --prior vamp or an aggregate objective such as infovae)"
    )
    return Row("rate split: I(x;z) + KL(q(z)||p(z))", value, note)


def _prior_match_row(r: dict) -> Row:
    m = r["prior_match"]
    against = m.get("against", "N(0, I)")
    label = "q(z) vs N(0,I): p-values" if against == "N(0, I)" else "q(z) vs its prior: p-values"
    if "skipped" in m:
        return Row(label, m["skipped"], "")
    tests = [("MMD", "p_value"), ("Mardia skew", "skewness_p_value"), ("kurtosis", "kurtosis_p_value"),
             ("radii", "radius_p_value"), ("pairwise", "pairwise_p_value")]  # fmt: skip
    ps = [(name, m[key]) for name, key in tests if key in m]
    parts = [f"{name} {_p(p)}" + (f" (MMD² {_p(m['mmd2'])})" if name == "MMD" else "") for name, p in ps]
    value = ", ".join(parts) + f" ({m['n']} points)"
    rejected = sum(p < 0.05 for _, p in ps)
    prior = "N(0, I)" if against == "N(0, I)" else "the prior"
    verdict = (
        f"{rejected} of {len(ps)} tests reject {prior} at 5%: samples drawn from the prior will decode from regions the "
        "decoder rarely saw"
        if rejected
        else f"no test rejects {prior} at 5%"
    )
    note = f"tests of one z ~ q(z|x) per point against {against}; {verdict}. With many points tiny mismatches are rejected too"
    return Row(label, value, note)


def _correlation_row(r: dict) -> Row:
    c = r["posterior_correlation"]
    if "skipped" in c:
        return Row("mean |corr| off-diagonal", c["skipped"], "")
    value = (
        f"posterior {c['posterior_mean_abs_offdiag']:.3f} vs guide {c['guide_mean_abs_offdiag']:.3f} "
        f"(median ESS {c['median_ess']:.0f} of {c['k']})"
    )
    note = (
        "correlations between latent dimensions in the importance-weighted posterior and in the guide; a posterior value "
        "well above the guide's is structure the guide cannot express (full_cov or iaf can). ESS is the effective number "
        f"of the {c['k']} importance samples: far below K means q(z|x) is a poor proposal for p(z|x)"
    )
    return Row("mean |corr| off-diagonal", value, note)


def _gap_row(r: dict) -> Row:
    g = r["gap_split"]
    if "skipped" in g:
        return Row("inference gap split", g["skipped"], "")
    pm = lambda key: f"{g[key]:.2f} ± {g[key + '_se']:.2f}"  # noqa: E731
    value = (
        f"inference {pm('inference_gap')} = approximation {pm('approximation_gap')} + amortisation "
        f"{pm('amortisation_gap')} ({g['points']} points, {g['steps']} refinement steps)"
    )
    note = (
        "log p(x) - ELBO split as in Cremer et al. 2018: approximation = log p(x) - ELBO of the best q in the guide's family "
        "for each point (its encoder output optimised, the decoder fixed), amortisation = what the shared encoder loses "
        "against that; ± SEs over the points (ELBOs on fresh draws). A large amortisation gap calls for a bigger encoder "
        "or more training; a large approximation gap for a richer family (full_cov, iaf)"
    )
    return Row("inference gap split", value, note)


def md_cell(text) -> str:
    """A table cell's text with Markdown's column separator escaped (``KL(q||p)`` would split the row)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_report(r: dict) -> str:
    lines = [f"Values in {UNITS}.", "", "| quantity | value | how to read it |", "|---|---|---|"]
    lines += [f"| {md_cell(q)} | {md_cell(v)} | {md_cell(n)} |" for q, v, n in report_rows(r)]
    return "\n".join(lines) + "\n"


def terminal_report(r: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """The table's (quantity, value) pairs and, below it, one note per quantity."""
    rows = report_rows(r)
    return [(q, v) for q, v, _ in rows], [f"- {q}: {n}" for q, _, n in rows if n]
