"""What the trainer does when something goes wrong: bad input, a full disk, Ctrl-C, NaNs.

Each check either passes silently or raises one error whose message names the input,
the step or the site at fault and what to do.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import pyro
import torch

from .data import DataError, check_data
from .sites import ContractError, site_terms

# --------------------------------------------------------------------------- input


def check_pair_on_data(model, guide, x: torch.Tensor, what: str = "training data") -> None:
    """Run the pair once on the first points: shapes, the contract and the observed support.

    The observed site's support (Bernoulli: {0, 1}) is then checked on every point of ``x``.
    """
    check_data(x, what, unit_interval=False, flat=False)
    try:
        with pyro.validation_enabled(False):  # the support is checked below, on every point, with a clearer message
            terms = site_terms(model, guide, x[:2], num_particles=1)
    except ContractError:
        raise
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__  # not Pyro's trace dump
        raise ValueError(
            f"the model and guide cannot run on {what} of shape {tuple(x.shape)}: {type(err).__name__}: {first}. "
            "Check that the data dimension matches the model's (x_dim)"
        ) from None
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
