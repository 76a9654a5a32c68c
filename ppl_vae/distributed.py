r"""Data parallelism under ``torchrun``: PyTorch's process group, one code path for ``nccl``
(GPUs) and ``gloo`` (CPU).

Each of the N processes (ranks) trains on its part of every global batch: the data order is
the one a single process would use at batch N·B (one shared generator), and each global batch
is split in N parts. After each rank's step, one ``all_reduce`` sums the gradients, the loss
and the ranks' stop requests:

.. math::

    \nabla L_{\text{global}} = \sum_{r=1}^{N} \nabla L_r, \quad L_r = \sum_{n \in \text{part } r} \ell_n

since the package's losses are sums over a batch's points, N ranks at batch B take the same
step as one process at batch N·B. This is the arithmetic of ``DistributedDataParallel``
(whose reducer averages) done on the gradients the step leaves in ``.grad``: DDP's reducer
cannot see gradients that a compiled step returns from its captured graph, nor Pyro
param-store tensors that are not module parameters; one flat ``all_reduce`` serves both
steps and also lets every rank agree on Ctrl-C and on a non-finite step at no extra cost.
Parameters start identical (broadcast from rank 0); rank 0 alone writes files.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str) -> str:
    """Join the process group torchrun describes (``gloo`` for CPU, ``nccl`` for CUDA) and return
    this rank's device: ``cuda:LOCAL_RANK`` for ``auto``/``cuda``, else ``device``."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if device not in ("auto", "cuda"):
            raise ValueError(f"under torchrun each process takes the GPU of its LOCAL_RANK: use --device cuda, not {device}")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def stop(together: bool = False) -> None:
    """Leave the process group; ``together`` (every rank ended the same way): wait for all first,
    so that no rank tears its connections down while another still uses them."""
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_tensors(tensors: list[torch.Tensor]) -> None:
    """Every rank takes rank 0's values (parameters at the start, as DDP's constructor does)."""
    if active():
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a history row, an output folder)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list | None:
    """Every rank's ``value`` in rank order, on rank 0 (None elsewhere)."""
    if not active():
        return [value]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(value, out, dst=0)
    return out


def all_gather_objects(value: Any) -> list:
    """Every rank's ``value`` in rank order, on every rank."""
    if not active():
        return [value]
    out: list = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any (one collective)."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def on_main(fn, *args, **kwargs):
    """``fn`` run on rank 0; its result (or its error, raised again as ValueError) on every rank."""
    if not active():
        return fn(*args, **kwargs)
    outcome: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            outcome = (True, fn(*args, **kwargs))
        except (ValueError, OSError) as err:
            outcome = (False, str(err))
    ok, value = broadcast_object(outcome)
    if not ok:
        if is_main():
            raise ValueError(value)
        raise ValueError(f"(rank 0) {value}")
    return value


def part(batch: torch.Tensor, r: int, n: int) -> torch.Tensor:
    """Rank ``r``'s part of a global batch: contiguous, sizes differing by at most one."""
    return torch.tensor_split(batch, n)[r] if n > 1 else batch


class DistributedStep:
    """Wraps a step (eager or compiled): after it, one ``all_reduce`` sums every gradient, the
    loss and the ranks' stop requests; returns the global batch's loss. A rank whose part of a
    (last, short) batch is empty contributes zeros."""

    def __init__(self, step, params: list[torch.Tensor], device: torch.device, nan_as_loss: bool = True):
        self.step, self.params, self.device, self.nan_as_loss = step, params, device, nan_as_loss
        self.compiled = step.compiled
        self.reason = f"{step.reason}, {world_size()} processes"
        self.stop_requested = lambda: False  # the trainer points this at its Ctrl-C guard
        self.stop_votes = torch.zeros((), device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        loss = None
        if x.shape[0]:
            try:
                loss = self.step(x)
            except ValueError as err:  # Pyro refusing NaN parameters on this rank: a NaN step for all
                if not self.nan_as_loss or "invalid values" not in str(err):
                    raise
                loss = torch.full((), float("nan"), device=self.device)
                for p in self.params:
                    p.grad = None
        if loss is None:
            loss = torch.zeros((), device=self.device)
            for p in self.params:
                p.grad = None
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        flags = torch.stack([loss.detach().float(), torch.tensor(float(self.stop_requested()), device=self.device)])
        flat = torch.cat([g.reshape(-1) for g in grads] + [flags])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(self.params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()
        self.stop_votes = flat[-1]  # left on the device: read by agreed_stop() where the loop reads anyway
        return flat[-2].to(loss.dtype)

    def agreed_stop(self) -> bool:
        """Whether any rank asked to stop at the last step (one host read, the same on every rank)."""
        return bool(self.stop_votes.item() > 0)
