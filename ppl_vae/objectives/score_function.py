r"""Objectives for guides with discrete (non-reparameterisable) sites.

- :class:`TraceGraphELBO`: Pyro's ``TraceGraph_ELBO`` (the score function of each
  non-reparameterised site times its Rao-Blackwellised downstream cost), with a baseline for
  every such site that has none: a decaying average of the per-point ELBO (beta 0.9).
- :class:`VIMCO` (Mnih & Rezende 2016): the K-sample bound
  :math:`\hat L = \log \frac1K \sum_k w_k`, with the gradient
  :math:`\sum_k (\hat L - \hat L_{-k}) \nabla \log q(z_k) + \sum_k \tilde w_k \nabla \log w_k`,
  where :math:`\hat L_{-k}` replaces :math:`w_k` by the geometric mean of the others (the
  leave-one-out control variate); reparameterised sites keep their path gradients.
- :class:`RWS` (Bornschein & Bengio 2015): the model follows the K-sample bound's gradient
  (wake phase); the guide maximises :math:`\sum_k \tilde w_k \log q(z_k \mid x)` at fixed samples
  (wake) and, with weight ``1 - insomnia``, :math:`\log q(z \mid x)` at draws
  :math:`(z, x) \sim p` of the model (sleep). Its value is the K-sample bound.
"""

from __future__ import annotations

import pyro
import pyro.infer
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from ..sites import DATA_PLATE, SiteTerms
from .importance import PerPointObjective, log_mean_exp
from .pyro_elbos import particles_as_needed, pyro_elbo_options


def non_reparameterised(terms: SiteTerms) -> list[str]:
    return list(terms.not_reparameterized)


class TraceGraphELBO:
    """``TraceGraph_ELBO`` with ``k`` particles and a decaying-average baseline (see the module)."""

    def __init__(self, num_particles: int = 1, max_plate_nesting: int | None = None, baseline_beta: float = 0.9):
        self.elbo = particles_as_needed(pyro.infer.TraceGraph_ELBO)(**pyro_elbo_options(num_particles, max_plate_nesting))
        self.num_particles = num_particles
        self.beta = baseline_beta
        self.average: float | None = None  # the per-point ELBO's decaying average: the baseline
        self._points = 0

    def _with_baselines(self, guide):
        def config(msg):
            if msg["type"] != "sample" or site_is_subsample(msg):
                return {}
            frames = [f for f in msg["cond_indep_stack"] if f.name == DATA_PLATE]
            self._points = frames[0].size if frames else self._points
            fn = msg["fn"]
            if self.average is None or getattr(fn, "has_rsample", False) or "baseline" in msg["infer"]:
                return {}
            return {"baseline": {"baseline_value": torch.full(fn.batch_shape, self.average)}}

        return poutine.infer_config(guide, config)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the ELBO; its gradient is the Rao-Blackwellised score-function estimator's."""
        elbo, surrogate = self.elbo._loss_and_surrogate_loss(model, self._with_baselines(guide), args, kwargs)
        elbo = torch.as_tensor(elbo)
        if self._points:
            per_point = float(elbo.detach()) / self._points
            self.average = per_point if self.average is None else self.beta * self.average + (1 - self.beta) * per_point
        return -elbo.detach() + (surrogate - surrogate.detach())

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def __call__(self, model, guide, *args, **kwargs):
        return self.differentiable_loss(model, guide, *args, **kwargs)

    def __repr__(self):
        return f"TraceGraphELBO(k={self.num_particles})"


class VIMCO(PerPointObjective):
    """The K-sample bound with VIMCO's leave-one-out control variate for non-reparameterised sites."""

    requires_reparam = False

    def __init__(self, num_particles: int = 5, max_plate_nesting: int | None = None):
        if num_particles < 2:
            raise ValueError(
                f"vimco needs k >= 2: the control variate of each sample is built from the other k - 1, and k={num_particles} "
                "leaves none (use tracegraph for one sample)"
            )
        super().__init__(num_particles, max_plate_nesting)

    def point_surrogate(self, terms: SiteTerms):
        log_w = terms.log_weights()
        bound = log_mean_exp(log_w)
        names = non_reparameterised(terms)
        if not names:
            return bound, bound
        k = log_w.shape[0]
        lw = log_w.detach()
        others = (lw.sum(0, keepdim=True) - lw) / (k - 1)  # log of the geometric mean of the other k - 1
        # row j: the k weights with w_j replaced by that geometric mean
        swapped = torch.where(torch.eye(k, dtype=torch.bool, device=lw.device)[..., None], others[None], lw[None])
        signal = bound.detach() - log_mean_exp(swapped, dim=1)  # (K, B): L - L_{-k}
        score = sum(terms.guide_terms[n] for n in names)
        return bound, bound + (signal * score).sum(0)


class RWS(PerPointObjective):
    """Reweighted wake-sleep (see the module): the model's wake gradient, the guide's wake and
    sleep gradients mixed by ``insomnia`` (1: wake only, Pyro's default)."""

    requires_reparam = False

    def __init__(self, num_particles: int = 5, max_plate_nesting: int | None = None, insomnia: float = 1.0):
        if not 0 <= insomnia <= 1:
            raise ValueError(f"insomnia (the wake phase's share of the guide's update) must be in [0, 1], got {insomnia}")
        super().__init__(num_particles, max_plate_nesting)
        self.insomnia = float(insomnia)

    def point_surrogate(self, terms: SiteTerms):
        log_w = terms.log_weights()
        bound = log_mean_exp(log_w)
        w = torch.softmax(log_w.detach(), dim=0)
        model_fixed, guide_fixed = self._at_detached_samples(terms)
        wake_model = log_mean_exp(model_fixed - guide_fixed.detach())  # gradient: the model's only
        wake_guide = (w * guide_fixed).sum(0)  # gradient: the guide's only
        return bound, wake_model + self.insomnia * wake_guide

    @staticmethod
    def _at_detached_samples(terms: SiteTerms) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x, sg z) and log q(sg z | x), per particle and point."""
        out = []
        for guide, names in ((False, terms.model_terms), (True, terms.guide_terms)):
            trace = terms.replay_at_detached_samples(guide=guide)
            total = 0.0
            for name in names:
                site = trace.nodes[name]
                total = total + terms.reduce_site(site, site["fn"].log_prob(site["value"]), "guide" if guide else "model")
            out.append(total)
        return out[0], out[1]

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        if self.insomnia < 1:  # the sleep phase moves the guide; the value stays the bound
            sleep = (1 - self.insomnia) * sleep_log_q(model, guide, *args, **kwargs)
            loss = loss - (sleep - sleep.detach())
        return loss

    def __repr__(self):
        return f"RWS(k={self.num_particles}, insomnia={self.insomnia:g})"


def sleep_log_q(model, guide, x, *args, **kwargs) -> torch.Tensor:
    """The sleep phase: log q(z | x) summed over one draw (z, x) ~ p per data point, gradient to
    the guide only. The model is run with its observations released (``poutine.uncondition``)."""
    with torch.no_grad(), poutine.block():
        dream = poutine.trace(poutine.uncondition(model)).get_trace(x, *args, **kwargs)
    sites = [s for s in dream.nodes.values() if s["type"] == "sample"]
    released = [s for s in sites if s["infer"].get("was_observed")]
    if len(released) != 1:
        raise ValueError(f"rws's sleep phase dreams one observed site, and the model has {len(released)}")
    x_dream = released[0]["value"].reshape(x.shape).to(x.dtype)
    latents = {s["name"]: s["value"] for s in sites if not s["infer"].get("was_observed")}
    trace = poutine.trace(poutine.condition(guide, data=latents)).get_trace(x_dream, *args, **kwargs)
    trace.compute_log_prob()
    return sum(s["log_prob_sum"] for s in trace.nodes.values() if s["type"] == "sample" and s["name"] in latents)
