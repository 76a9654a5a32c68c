"""What the trainer does when something goes wrong while it trains: Ctrl-C and SIGTERM, the time
limit, and non-finite losses or gradients (the NaN guard, per step or deferred on the device).

Each stop or refusal raises one error whose message names the step or the site at fault, what
happened to the checkpoint, and what to do.
"""

from __future__ import annotations

import math
import signal
import threading
import time

import pyro
import torch

from .sites import site_terms

DEFERRED_READ_EVERY = 100


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message says where it stopped."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (or at ``TrainConfig.time_limit``) after saving a checkpoint (``path``)."""

    def __init__(self, path, why: str = "interrupted"):
        super().__init__(f"{why}; checkpoint saved at {path}" if path else f"{why} (no output folder: nothing saved)")
        self.path = path


# --------------------------------------------------------------------------- Ctrl-C


class InterruptGuard:
    """Turn the first SIGINT into a flag the loop reads at the next step boundary (so it can
    save a checkpoint); a second SIGINT interrupts at once. A no-op outside the main thread.

    ``sigterm``: SIGTERM sets the flag too (and never interrupts at once). torchrun answers
    Ctrl-C by sending its workers SIGTERM after the terminal's SIGINT; the ranks must still
    agree on a step and save, not die in a collective.
    """

    def __init__(self, sigterm: bool = False):
        self.requested = False
        self.sigterm = sigterm
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM) if self.sigterm else (signal.SIGINT,):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False


# --------------------------------------------------------------------------- NaN / Inf


def all_finite(loss: torch.Tensor, params) -> torch.Tensor:
    """One device boolean: the loss and every gradient are finite."""
    grads = [p.grad for p in params if p.grad is not None]
    flags = [torch.isfinite(loss)]
    if grads:
        flags.append(torch.isfinite(torch.stack([torch.linalg.vector_norm(g) for g in grads])).all())
    return torch.stack(flags).all()


class DeferredGuard:
    """The NaN guard without a host read per step: each step's finiteness stays on the device.

    :meth:`update` steps the optimizer and then, where the loss or a gradient was not finite,
    puts every parameter and optimizer state back as it was (an on-device select): a bad
    step is never applied, exactly as if it had been skipped. Counts of bad steps, the first
    bad step and its batch stay on the device until :meth:`read`, which the loop calls every
    few steps, before each checkpoint and at epoch ends (one host read each).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]):
        self.optimizer, self.params = optimizer, params
        device = params[0].device
        self.bad = torch.zeros((), dtype=torch.long, device=device)
        self.epoch_bad = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_x: torch.Tensor | None = None

    def _snapshot(self) -> list[tuple[torch.Tensor, dict]]:
        state = self.optimizer.state
        return [
            (p.detach().clone(), {k: v.clone() for k, v in state.get(p, {}).items() if isinstance(v, torch.Tensor)})
            for p in self.params
        ]

    def update(self, loss: torch.Tensor, step: int, x: torch.Tensor) -> torch.Tensor:
        """Apply this step's update where it is finite; returns the device flag."""
        ok = all_finite(loss, self.params)
        before = self._snapshot()
        self.optimizer.step()
        with torch.no_grad():
            for p, (old_p, old_state) in zip(self.params, before):
                p.copy_(torch.where(ok, p, old_p))
                for key, value in self.optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor):
                        # state this step created goes back to zeros, which is Adam's fresh state
                        old = old_state.get(key)
                        value.copy_(torch.where(ok, value, old if old is not None else torch.zeros_like(value)))
            first_now = ~ok & (self.first_bad < 0)
            self.first_bad = torch.where(first_now, torch.full_like(self.first_bad, step), self.first_bad)
            if self.bad_x is None:
                self.bad_x = torch.zeros_like(x)
            if self.bad_x.shape == x.shape:
                self.bad_x = torch.where(first_now, x, self.bad_x)
            self.bad += (~ok).long()
            self.epoch_bad += (~ok).long()
        return ok

    def read(self) -> tuple[int, int, int]:
        """``(bad steps in all, bad steps this epoch, first bad step or -1)``: one host read."""
        bad, epoch_bad, first = torch.stack([self.bad, self.epoch_bad, self.first_bad]).tolist()
        return bad, epoch_bad, first

    def new_epoch(self) -> None:
        self.epoch_bad.zero_()


def _named(names: list[str], what: str) -> list[str]:
    """``["<what> 'first' is not finite (and n more)"]``, or nothing when ``names`` is empty."""
    if not names:
        return []
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return [f"{what} '{names[0]}' is not finite{more}"]


def _first_bad_site(model, guide, x: torch.Tensor) -> str | None:
    with pyro.validation_enabled(False):  # let NaN parameters through to the log-densities
        terms = site_terms(model, guide, x, num_particles=1)
    for where, group in (("guide", terms.guide_terms), ("model", terms.model_terms)):
        for name, log_p in group.items():
            if not torch.isfinite(log_p).all():
                row = int((~torch.isfinite(log_p)).any(0).nonzero()[0])
                return f"the log-density of {where} site '{name}' is {log_p[0, row].item()} at batch row {row}"
    return None


@torch.no_grad()
def diagnose(model, guide, x: torch.Tensor, params: dict[str, torch.Tensor]) -> str:
    """Name what went bad: parameters that are not finite, gradients that are not, and the first
    sample site (guide, then model) whose log-density is not finite on this batch."""
    parts = _named([n for n, p in params.items() if not torch.isfinite(p).all()], "parameter")
    parts += _named([n for n, p in params.items() if p.grad is not None and not torch.isfinite(p.grad).all()], "the gradient of")
    try:
        site = _first_bad_site(model, guide, x)
    except Exception as err:  # the forward pass itself fails on these values
        site = f"re-running the pair on the batch fails: {err}"
    parts += [site] if site else []
    return "; ".join(parts) or "no site or parameter is non-finite on re-evaluation (a transient overflow)"


class NanGuard:
    """The NaN guard of one run: each step's loss and gradients checked before the update is
    applied, with one host read per step, or ``deferred`` on the device (:class:`DeferredGuard`,
    read by :meth:`read`). ``policy``: ``"stop"`` (a :class:`TrainingError` naming the step and
    site), ``"skip"`` (the batch is counted in :attr:`skipped`), ``"off"``. ``kept_checkpoint``
    says what the error can truthfully say of the checkpoint."""

    def __init__(self, policy: str, deferred: bool, optimizer, params: dict, model, guide, kept_checkpoint):
        self.policy, self.optimizer, self.params = policy, optimizer, params
        self.model, self.guide, self.kept_checkpoint = model, guide, kept_checkpoint
        self.deferred = DeferredGuard(optimizer, list(params.values())) if deferred and policy != "off" else None
        self.skipped = 0  # bad steps in the epoch in progress

    def new_epoch(self, skipped: int = 0) -> None:
        """Start counting an epoch (a resumed one keeps the count it had)."""
        self.skipped = skipped
        if self.deferred is not None:
            self.deferred.epoch_bad.fill_(skipped)

    def apply(self, loss: torch.Tensor | None, x: torch.Tensor, step: int, where: str) -> torch.Tensor:
        """Step the optimizer unless step ``step`` (on batch ``x``; ``where`` in the epoch) is bad;
        ``loss`` None means Pyro refused the step's NaN parameters. Returns what the step adds to
        the epoch's loss (on the device)."""
        if self.deferred is not None:  # no host read: a bad step is undone on the device
            loss = torch.full((), math.nan, device=x.device) if loss is None else loss
            ok = self.deferred.update(loss, step, x)
            return torch.where(ok, loss, torch.zeros_like(loss))
        if loss is not None and (self.policy == "off" or bool(all_finite(loss, self.params.values()))):
            self.optimizer.step()
            return loss
        if self.policy == "stop":
            raise TrainingError(
                f"non-finite loss or gradient at step {step} ({where}): {diagnose(self.model, self.guide, x, self.params)}. "
                f"Nothing from this step was applied; {self.kept_checkpoint()} (nan_policy='skip' skips such batches)"
            )
        self.skipped += 1
        return torch.zeros((), device=x.device)

    def read(self, step: int) -> None:
        """Read the deferred guard (one host read): stop on a bad step, or count the skipped ones."""
        if self.deferred is None:
            return
        bad, epoch_bad, first = self.deferred.read()
        self.skipped = epoch_bad
        if bad and self.policy == "stop":
            x = self.deferred.bad_x
            where = diagnose(self.model, self.guide, x, self.params) if x is not None else "its batch was not kept"
            raise TrainingError(
                f"non-finite loss or gradient at step {first} (found at step {step}: with nan_check='deferred' the "
                f"guard is read every {DEFERRED_READ_EVERY} steps and before checkpoints): {where}. No non-finite step "
                f"was applied (each was undone on the device); the finite steps after it were; {self.kept_checkpoint()} "
                "(nan_policy='skip' skips such batches; nan_check='step' stops at once)"
            )


class Stops:
    """When a run stops at a step boundary: Ctrl-C (and SIGTERM under torchrun), the time limit
    (``time_limit`` seconds on ``clock``), and under torchrun the ranks' agreed answer, read where
    the NaN guard reads anyway (every step, or every :data:`DEFERRED_READ_EVERY` when deferred)."""

    def __init__(self, time_limit: float = 0.0, distributed_step=None, deferred: bool = False, clock=time.monotonic):
        self.clock, self.deferred, self.distributed_step = clock, deferred, distributed_step
        self.deadline = clock() + time_limit if time_limit else None
        self.time_limit = time_limit
        self.guard = InterruptGuard(sigterm=distributed_step is not None)
        if distributed_step is not None:
            distributed_step.stop_requested = self.requested

    def __enter__(self):
        self.guard.__enter__()
        return self

    def __exit__(self, *exc):
        return self.guard.__exit__(*exc)

    def past_deadline(self) -> bool:
        return self.deadline is not None and self.clock() >= self.deadline

    def requested(self) -> bool:
        return self.guard.requested or self.past_deadline()

    def now(self, step: int) -> bool:
        """Whether to stop after step ``step`` (the same answer on every rank)."""
        if self.distributed_step is None:
            return self.requested()
        if self.deferred and step % DEFERRED_READ_EVERY:
            return False
        return self.distributed_step.agreed_stop()

    def why(self) -> str:
        if self.past_deadline() and not self.guard.requested:
            return f"stopped at the time limit ({self.time_limit:g} s)"
        return "interrupted"
