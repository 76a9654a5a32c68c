"""Checks made before any work: the pair runs on the data (guide, then model at the guide's samples,
then both with two importance samples at once), the observed sites hold the data and the data lie
in their support; the output folder is writable and has room. Each passes silently or raises one
error that names the input, the site and what to do, with the place in the user's own code that
raised."""

from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites

from . import param_store
from .pixels import DataError, check_data
from .sites import ContractError, SiteTerms, site_terms


def _where(err: BaseException) -> str:
    """`` (raised at file:line in fn)`` for the innermost frame outside torch, Pyro and this package."""
    frames = traceback.extract_tb(err.__traceback__)
    skip = (os.sep + "torch" + os.sep, os.sep + "pyro" + os.sep, os.sep + "ppl_vae" + os.sep, "site-packages")
    own = [f for f in frames if not any(part in f.filename for part in skip)]
    if not own:
        return ""
    f = own[-1]
    return f" (raised at {f.filename}:{f.lineno} in {f.name}: {f.line})"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"  # not Pyro's trace dump


def _run_pieces(model, guide, x: torch.Tensor, what: str, shape: tuple) -> None:
    """The guide alone, then the model at its samples, each failure named for the function that failed
    (``x``: the first points of data of ``shape``)."""
    try:
        guide_trace = poutine.trace(guide).get_trace(x)
    except Exception as err:
        raise ValueError(
            f"the guide cannot run on {what} of shape {shape}: {_first_line(err)}{_where(err)}. Does its input "
            f"size match the data's width ({x[0].numel()} values per point)?"
        ) from None
    sites = prune_subsample_sites(guide_trace).nodes.items()
    latents = {n: tuple(s["value"].shape) for n, s in sites if s["type"] == "sample"}
    try:
        poutine.replay(model, trace=guide_trace)(x)
    except Exception as err:
        raise ValueError(
            f"the model cannot run on {what} of shape {shape} at the guide's samples "
            f"({', '.join(f'{n}: {s}' for n, s in latents.items()) or 'none'}): {_first_line(err)}{_where(err)}. Do the "
            "guide's latent sizes match the model's (z_dim), and the model's output the data's width?"
        ) from None


def check_pair_on_data(
    model, guide, x: torch.Tensor, what: str = "training data", particles: bool = True, allow_global: bool = False
) -> SiteTerms:
    """Run the pair on the first points: the contract, shapes, what the observed sites hold, the
    observed support (on every point of ``x``), and, with ``particles``, two importance samples at
    once (what IWAE and log p(x) need). ``allow_global``: global latents are checked as they run,
    not refused. Returns the site terms of the one-sample run."""
    check_data(x, what, unit_interval=False, flat=False)
    first = x[:2]
    try:
        terms = _run_checked(model, guide, first, x.shape, what, particles, allow_global)
    finally:
        param_store.mark_own()  # what the check registered is the pair's, not a user's own
    _check_observed(terms, first, what, getattr(model, "observed_width", None))
    for name in terms.guide_terms:  # a layer of width 0 trains and scores without a word otherwise
        value = terms.guide_trace.nodes[name]["value"]
        if value.numel() == 0:
            raise ContractError(
                f"the guide's latent site '{name}' holds no values (shape {tuple(value.shape)}): a latent layer needs "
                "at least one dimension"
            )
    for name in terms.observed:
        support = terms.model_trace.nodes[name]["fn"].support
        ok = torch.cat([support.check(chunk).reshape(chunk.shape[0], -1).all(-1) for chunk in x.split(4096)])
        if not ok.all():
            row = int((~ok).nonzero()[0])
            raise DataError(
                f"{what} row {row} lies outside the support of the observed site '{name}' ({support}); "
                "a Bernoulli likelihood needs binary data: use dynamic or fixed binarisation, or a "
                "continuous likelihood (gaussian, continuous_bernoulli) for intensities"
            )
    return terms


def _run_checked(model, guide, first: torch.Tensor, shape, what: str, particles: bool, allow_global: bool) -> SiteTerms:
    """The one-sample run (and the two-sample one), each failure named. A pair that does not broadcast
    over a leading sample dimension is found here and runs its particles one at a time from then on
    (:func:`ppl_vae.sites.site_terms`)."""
    with pyro.validation_enabled(False):  # the support is checked after, on every point, with a clearer message
        try:
            terms = site_terms(model, guide, first, num_particles=1, allow_global=allow_global)
            if particles:
                site_terms(model, guide, first, num_particles=2)  # what IWAE and log p(x) need
        except ContractError:
            raise
        except Exception as err:
            _run_pieces(model, guide, first, what, tuple(shape))  # names the function that fails on its own
            raise ValueError(
                f"the model and guide each run on {what}, but not together (the guide's samples replayed in the model): "
                f"{_first_line(err)}{_where(err)}"
            ) from None
    return terms


def _check_observed(terms: SiteTerms, x: torch.Tensor, what: str, width: int | None = None) -> None:
    """The observed sites together hold at least the data's values per point (a model observing part
    of the data would be scored on that part only); ``width``: the values that are data where the rest
    of each row is what the model is conditioned on (:class:`ppl_vae.labels.Conditioned`)."""
    per_point = width or x[0].numel()
    held = {n: terms.model_trace.nodes[n]["value"].numel() // x.shape[0] for n in terms.observed}
    if sum(held.values()) < per_point:
        raise DataError(
            f"the model's observed sites hold {', '.join(f'{n}: {v}' for n, v in held.items())} values per point, and "
            f"{what} has {per_point}: it would be trained and scored on part of each point; observe the whole point "
            "(obs=x)"
        )


def check_output_folder(folder: str | os.PathLike, needed_bytes: int) -> Path:
    """Create ``folder`` and prove it writable with room for ``needed_bytes`` (a checkpoint, twice)."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OSError(f"output folder {path} is not writable: {err.strerror or err}") from None
    free = shutil.disk_usage(path).free
    if free < 2 * needed_bytes:
        raise OSError(
            f"output folder {path} has {free / 2**20:.1f} MiB free; checkpoints need about {2 * needed_bytes / 2**20:.1f} MiB"
        )
    return path
