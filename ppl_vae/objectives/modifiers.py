r"""Modifiers that combine with any objective: beta and KL warm-up, as scales on latent sites.

.. math::

    \mathcal{L}_\beta(x) = \mathbb{E}_q[\log p(x \mid z)] - \beta_t\,\mathrm{KL}(q(z \mid x) \| p(z)),
    \qquad \beta_t = \beta \min(1, t / T)

In Pyro terms ``beta_t`` is a ``poutine.scale`` of every latent site, in the model and
in the guide, and of no observed site: one messenger serves every objective. For an
importance-weighted bound it weights ``log p(z) - log q(z|x)`` inside each log-weight.
``t`` counts optimizer steps (``warmup``) or epochs (``warmup_epochs``); the trainer
reports progress through :meth:`LatentScaled.set_progress`. Used as a plain Pyro loss
(``SVI(..., loss=objective)``), with no trainer to report progress, the objective counts the
steps itself: each call with gradients enabled is one step (``warmup_epochs`` needs a trainer).
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger


class _ScaleLatents(Messenger):
    def __init__(self, scale: float | torch.Tensor):
        super().__init__()
        self.scale = scale

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


def scale_latents(fn, scale: float | torch.Tensor):
    """``fn`` with every latent (unobserved) sample site's log-density multiplied by ``scale``."""

    def scaled(*args, **kwargs):
        with _ScaleLatents(scale):
            return fn(*args, **kwargs)

    return scaled


class LatentScaled:
    """Wrap an objective so the KL / latent terms carry weight ``beta_t`` (see module docstring).

    ``loss`` and ``differentiable_loss`` are those of the wrapped objective on the
    scaled pair; with ``beta=1`` and no warm-up it is the objective itself.
    """

    def __init__(self, objective, beta: float = 1.0, warmup: int = 0, warmup_epochs: int = 0):
        if beta < 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if warmup < 0 or warmup_epochs < 0:
            raise ValueError("warmup and warmup_epochs must be non-negative")
        if warmup and warmup_epochs:
            raise ValueError("give warmup (steps) or warmup_epochs, not both")
        self.objective, self.beta = objective, float(beta)
        self.warmup, self.warmup_epochs = int(warmup), int(warmup_epochs)
        self.step = self.epoch = 0
        self.driven = False  # a trainer reports progress; without one, each training call is a step
        # under a schedule beta_t changes every step: it is a tensor, so a compiled step reads it as an input
        self._beta_t: torch.Tensor | None = None

    def set_progress(self, step: int, epoch: int) -> None:
        """Optimizer steps and whole epochs done so far (called by the trainer before each step)."""
        self.driven = True
        self.step, self.epoch = step, epoch
        if self._beta_t is not None:
            self._beta_t.fill_(self.current_beta)

    def _count_own_step(self) -> None:
        """Without a trainer: this call is the next step (a plain SVI loop)."""
        if self.driven or not (self.warmup or self.warmup_epochs):
            return
        if self.warmup_epochs:
            raise ValueError(
                "warmup_epochs counts epochs, which only a trainer knows (ppl_vae.Trainer, ppl-vae train); in a plain "
                "SVI loop give the warm-up in steps: warmup=STEPS"
            )
        if self._beta_t is not None:
            self._beta_t.fill_(self.current_beta)

    def state_tensors(self) -> list[torch.Tensor]:
        """Tensors whose values change between steps (a compiled step takes them as inputs)."""
        return [self._beta_t] if self._beta_t is not None else []

    @property
    def current_beta(self) -> float:
        if self.warmup:
            return self.beta * min(1.0, self.step / self.warmup)
        if self.warmup_epochs:
            return self.beta * min(1.0, self.epoch / self.warmup_epochs)
        return self.beta

    def _pair(self, model, guide, args):
        b: float | torch.Tensor = self.current_beta
        if self.warmup or self.warmup_epochs:
            if self._beta_t is None:
                device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
                self._beta_t = torch.tensor(b, device=device)
            b = self._beta_t
        return scale_latents(model, b), scale_latents(guide, b)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        self._count_own_step()
        loss = self.objective.differentiable_loss(*self._pair(model, guide, args), *args, **kwargs)
        if not self.driven and torch.is_grad_enabled():
            self.step += 1
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        return self.objective.loss(*self._pair(model, guide, args), *args, **kwargs)

    def __call__(self, model, guide, *args, **kwargs):
        """The differentiable loss, so ``pyro.infer.SVI`` takes this object as its ``loss``."""
        return self.differentiable_loss(model, guide, *args, **kwargs)

    def __repr__(self) -> str:
        return f"LatentScaled({self.objective!r}, beta={self.beta}, warmup={self.warmup}, warmup_epochs={self.warmup_epochs})"


class Wrapping:
    """An objective around ``self.objective``: called as ``pyro.infer.SVI`` calls its loss, and what it
    does not define itself (``num_particles``, schedules) is the wrapped objective's. ``_own``: the
    attributes that are its own (never looked up in the wrapped one while it is being built)."""

    _own: tuple = ("objective",)

    def __call__(self, model, guide, *args, **kwargs):
        return self.differentiable_loss(model, guide, *args, **kwargs)

    def __getattr__(self, name):
        if name in self._own or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.objective, name)
