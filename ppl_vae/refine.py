r"""The inference gap split into approximation and amortisation (Cremer, Li & Duvenaud 2018).

.. math::

    \underbrace{\log p(x) - \mathcal{L}[q_\phi(z|x)]}_{\text{inference gap}}
    = \underbrace{\log p(x) - \mathcal{L}[q^*_x]}_{\text{approximation}}
    + \underbrace{\mathcal{L}[q^*_x] - \mathcal{L}[q_\phi(z|x)]}_{\text{amortisation}}

where :math:`q^*_x` is the best member of the guide's family for the one point x, found here by
optimising that point's local parameters (the output of the guide's ``local_head``: everything
q(z|x) reads from x) with Adam from the encoder's own output, the decoder and any global guide
parameters (a flow's steps) held fixed. The gaps are differences on the same points; each is
reported as a mean with its standard error over the points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .hooks import HasLocalHead, HasPosterior
from .sites import site_terms


@dataclass
class Refined:
    """ELBO per point under the encoder and after refinement, on fresh draws (``particles`` each)."""

    elbo_encoder: torch.Tensor
    elbo_refined: torch.Tensor
    steps: int
    particles: int


def _free(output):
    """A leaf copy of a head's output (a tensor or a tuple of them) to optimise."""
    if isinstance(output, torch.Tensor):
        return output.detach().clone().requires_grad_(True)
    return tuple(o.detach().clone().requires_grad_(True) for o in output)


def _same_points(inputs: tuple, x: torch.Tensor) -> bool:
    first = inputs[0] if inputs else None
    return isinstance(first, torch.Tensor) and first.data_ptr() == x.data_ptr() and first.shape[0] == x.shape[0]


def _leaves(values) -> list[torch.Tensor]:
    return [values] if isinstance(values, torch.Tensor) else list(values)


def _elbo_per_point(model, guide, x: torch.Tensor, particles: int) -> torch.Tensor:
    return site_terms(model, guide, x, num_particles=particles).log_weights().mean(0)


def refine_points(
    model,
    guide,
    x: torch.Tensor,
    steps: int = 200,
    lr: float = 1e-2,
    particles: int = 10,
    eval_particles: int = 100,
    batch: int = 250,
    seed: int = 0,
) -> Refined:
    """Optimise each point's local parameters for ``steps`` Adam steps on its ELBO (``particles``
    draws per step), starting from the encoder's output; return both ELBOs per point on fresh draws."""
    if not isinstance(guide, HasLocalHead):
        raise ValueError(
            "refinement needs the guide's local_head (the module whose output per point is all q(z|x) reads from x; "
            "see ppl_vae.hooks.HasLocalHead); this guide has none"
        )
    if steps < 1:
        raise ValueError(f"--refine must be at least 1 step, got {steps}")
    torch.manual_seed(seed)
    head = guide.local_head
    encoder, refined = [], []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        with torch.no_grad():
            encoder.append(_elbo_per_point(model, guide, xb, eval_particles))
            captured = []
            handle = head.register_forward_hook(
                lambda m, i, out, xb=xb, c=captured: c.append(out) if _same_points(i, xb) else None
            )
            guide.posterior(xb) if isinstance(guide, HasPosterior) else guide(xb)
            handle.remove()
        values = _free(captured[0])
        # only the guide's own call on these points: a prior that reads the guide (VampPrior) keeps its encoder
        handle = head.register_forward_hook(lambda m, i, out, xb=xb, v=values: v if _same_points(i, xb) else out)
        try:
            optimiser = torch.optim.Adam(_leaves(values), lr=lr)
            for _ in range(steps):
                loss = -_elbo_per_point(model, guide, xb, particles).sum()
                grads = torch.autograd.grad(loss, _leaves(values))
                for leaf, g in zip(_leaves(values), grads):
                    leaf.grad = g
                optimiser.step()
            with torch.no_grad():
                refined.append(_elbo_per_point(model, guide, xb, eval_particles))
        finally:
            handle.remove()
    return Refined(torch.cat(encoder), torch.cat(refined), steps, eval_particles)


def _mean_se(v: torch.Tensor) -> tuple[float, float]:
    se = float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else float("nan")
    return float(v.mean()), se


def gap_split(log_px_per_point: torch.Tensor, refined: Refined) -> dict:
    """The inference gap, its approximation and amortisation parts, each mean ± SE over the points."""
    lp = log_px_per_point[: refined.elbo_encoder.shape[0]].to(refined.elbo_encoder)
    parts = {
        "inference_gap": lp - refined.elbo_encoder,
        "approximation_gap": lp - refined.elbo_refined,
        "amortisation_gap": refined.elbo_refined - refined.elbo_encoder,
    }
    out = {}
    for name, values in parts.items():
        out[name], out[f"{name}_se"] = _mean_se(values)
    out.update(points=int(lp.numel()), steps=refined.steps, particles=refined.particles)
    out["elbo_encoder"], out["elbo_refined"] = float(refined.elbo_encoder.mean()), float(refined.elbo_refined.mean())
    return out
