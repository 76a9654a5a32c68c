r"""Global latents: sample sites outside ``pyro.plate("data")``, shared by every data point.

The package's losses are per minibatch, summed over its B points; the data set's ELBO is

.. math::

    \mathcal{L} = \sum_{n=1}^{N} \mathbb{E}_q[\log p(x_n, z_n \mid \theta) - \log q(z_n)]
                + \mathbb{E}_q[\log p(\theta) - \log q(\theta)],

so a minibatch's sum over its points plus the global sites' terms weighted B / N is B / N of an
unbiased estimate of it: the same optimum as the whole data set's ELBO. :class:`GlobalScaled`
applies that weight to any objective that is right with global sites (Pyro's ELBOs: ``elbo``,
``meanfield``, ``enum``, ``tracegraph``); the per-point objectives (importance weighting, VIMCO,
RWS, the aggregate penalties) and log p(x) refuse such a model (:mod:`ppl_vae.sites`).
"""

from __future__ import annotations

import pyro.infer
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites

from .objectives.modifiers import Wrapping
from .objectives.pyro_elbos import AnalyticKLELBO, JitTraceELBO
from .objectives.score_function import TraceGraphELBO
from .sites import in_data_plate, outside_data_plate


class _ScaleOutsideData(Messenger):
    """Multiply every sample site outside the data plate by ``factor``."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def _process_message(self, msg):
        if msg["type"] == "sample" and not in_data_plate(msg):
            msg["scale"] = self.factor * msg["scale"]


def global_sites(model, guide, x: torch.Tensor) -> list[str]:
    """Latent sites of the pair outside ``pyro.plate("data")``, found by running it once on ``x``
    (the random state is left as it was); none where the pair fails on ``x``: the checks of the pair
    on the data (:func:`ppl_vae.checks.check_pair_on_data`) then say what is wrong."""
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with poutine.block(), torch.random.fork_rng(devices=cuda), pyro.validation_enabled(False):
            guide_trace = poutine.trace(guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    except Exception:  # a user's code on data it does not fit: named by the checks that follow
        return []
    return outside_data_plate(prune_subsample_sites(model_trace))


def accepts_global(objective) -> bool:
    """Whether ``objective`` is right for a model with global latents (Pyro's ELBOs and their wrappers)."""
    return isinstance(objective, (pyro.infer.ELBO, AnalyticKLELBO, TraceGraphELBO, JitTraceELBO, GlobalScaled))


def refuse(objective_name: str, names: list[str]) -> ValueError:
    return ValueError(
        f"the model has global latent site(s) {names} (outside pyro.plate('data'), shared by every point), and "
        f"'{objective_name}' weights each point's own samples, which is not right with them: train with elbo, "
        "meanfield, enum or tracegraph (a global site's terms are then weighted B/N per minibatch of B of N points)"
    )


class GlobalScaled(Wrapping):
    """``objective`` with the global sites' terms weighted ``B / n_points`` for a minibatch of B points
    (``sites``: their names, for the record)."""

    _own = ("objective", "n_points", "sites")

    def __init__(self, objective, n_points: int, sites: list[str] | tuple = ()):
        self.objective, self.n_points, self.sites = objective, int(n_points), list(sites)

    def _factor(self, x: torch.Tensor) -> float:
        return x.shape[0] / self.n_points

    def differentiable_loss(self, model, guide, x, *args, **kwargs) -> torch.Tensor:
        with _ScaleOutsideData(self._factor(x)):
            return self.objective.differentiable_loss(model, guide, x, *args, **kwargs)

    def loss(self, model, guide, x, *args, **kwargs) -> float:
        with _ScaleOutsideData(self._factor(x)):
            return self.objective.loss(model, guide, x, *args, **kwargs)

    def __repr__(self) -> str:
        return f"GlobalScaled({self.objective!r}, n_points={self.n_points})"


@torch.no_grad()
def validation_elbo(model, guide, x: torch.Tensor, n_train: int, num_particles: int = 10) -> float:
    """The ELBO per held-out point, the global sites weighted as one point's share of the training set
    (len(x) / n_train of their terms over len(x) points): a Monte Carlo estimate with ``num_particles``."""
    elbo = pyro.infer.Trace_ELBO(num_particles=num_particles)
    return -GlobalScaled(elbo, n_train).loss(model, guide, x) / x.shape[0]
