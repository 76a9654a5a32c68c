"""The training loop for any (model, guide, objective) triple that follows the contract.

The loop knows no objective: it calls ``objective.differentiable_loss(model, guide, x)``
and steps a torch Adam optimizer over the parameters the pair registers. Losses
accumulate on the device and are read once per epoch, and the data stay on the device
(see :class:`DeviceBatches`); the one per-step read is the NaN guard's boolean
(``nan_policy="off"`` removes it).

Checkpoints (atomic, see :mod:`ppl_vae.checkpoint`) are written at every epoch end, every
``checkpoint_every`` steps, and on Ctrl-C; each holds what an exact resume needs,
including the data order of the epoch in progress and its partial loss.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import DeviceBatches, as_data_tensor, check_data
from .device import resolve_device, rng_state, seed_everything, set_rng_state
from .epoch_log import BEST_NAME, MONITOR_NAMES, TensorBoardLog, best_row, epoch_line, keep_as_best, monitored, patience_ran_out
from .evaluate import NoDensityError, elbo_terms, log_px
from .faults import DeferredGuard, InterruptGuard, all_finite, check_output_folder, check_pair_on_data, diagnose
from .objectives import get_objective
from .run_folder import write_metrics
from .step import COMPILE_MODES, buffers_of, make_step, module_of

CHECKPOINT_NAME = "checkpoint.pt"
NAN_POLICIES = ("stop", "skip", "off")
# "step" reads the guard's flag every step; "deferred" keeps it on the device (faults.DeferredGuard) and
# reads it every DEFERRED_READ_EVERY steps, at checkpoints and epoch ends; "auto" defers for a compiled
# step on CUDA, where a host read each step would stall the replayed graphs
NAN_CHECKS = ("auto", "step", "deferred")
DEFERRED_READ_EVERY = 100


def stage_lr(stages: list, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under ``[[epochs, lr], ...]`` (the last rate after the last stage)."""
    end = 0
    for epochs, lr in stages:
        end += epochs
        if epoch < end:
            return lr
    return stages[-1][1]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message says where it stopped."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C (or at ``TrainConfig.time_limit``) after saving a checkpoint (``path``)."""

    def __init__(self, path, why: str = "interrupted"):
        super().__init__(f"{why}; checkpoint saved at {path}" if path else f"{why} (no output folder: nothing saved)")
        self.path = path


@dataclass
class TrainConfig:
    """How to train; everything a resumed run must agree on except ``epochs``.

    ``eval_every``: estimate validation log p(x) with ``eval_k`` importance samples every
    that many epochs (0: never). ``out``: folder for the checkpoint. ``lr_decay``: the
    learning rate's factor per epoch (an exponential schedule). ``checkpoint_every``: also
    checkpoint every that many steps (0: at epoch ends only). ``nan_policy``: on a
    non-finite loss or gradient, ``"stop"`` with a message naming the step and the bad
    site, ``"skip"`` the batch and count it, or ``"off"`` (no check). ``early_stop``: end
    training once that many epochs have passed since the best validation log p(x) (the
    validation ELBO when ``eval_every`` is 0); 0 = never. The best epoch's checkpoint is kept
    as ``best.pt`` beside ``checkpoint.pt`` either way. ``tensorboard``: also write the
    per-epoch metrics as TensorBoard scalars into ``out/tensorboard``. ``adam_eps``: Adam's
    epsilon. ``lr_stages``: ``[[epochs, lr], ...]``, a piecewise-constant learning rate (the
    first ``epochs`` at ``lr``, and so on; the last rate after the last stage), in place of
    ``lr``/``lr_decay``. ``time_limit``: seconds after which training stops at the next step
    as on Ctrl-C (checkpoint saved; resume continues exactly), 0 = none.
    """

    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    objective: str = "elbo"
    eval_every: int = 5
    eval_k: int = 100
    out: str | None = None
    progress: bool = True
    lr_decay: float = 1.0
    checkpoint_every: int = 0
    nan_policy: str = "stop"
    compile: str = "auto"
    nan_check: str = "auto"
    epoch_lines: bool = False
    early_stop: int = 0
    tensorboard: bool = False
    adam_eps: float = 1e-8
    lr_stages: list | None = None
    time_limit: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be 0 (never) or positive, got {self.eval_every}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be 0 (epoch ends only) or positive, got {self.checkpoint_every}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got '{self.nan_policy}'")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got '{self.compile}'")
        if self.lr_stages is not None:
            self.lr_stages = [[int(e), float(lr)] for e, lr in self.lr_stages]
            if not self.lr_stages or any(e < 1 or not lr > 0 for e, lr in self.lr_stages):
                raise ValueError(f"lr_stages must be [[epochs >= 1, lr > 0], ...], got {self.lr_stages}")
            if self.lr_decay != 1.0:
                raise ValueError("give lr_stages or lr_decay, not both")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be positive, got {self.adam_eps}")
        if self.time_limit < 0:
            raise ValueError(f"time_limit must be 0 (none) or positive seconds, got {self.time_limit}")
        if self.early_stop < 0:
            raise ValueError(f"early_stop must be 0 (never) or a positive number of epochs, got {self.early_stop}")
        if self.nan_check not in NAN_CHECKS:
            raise ValueError(f"nan_check must be one of {NAN_CHECKS}, got '{self.nan_check}'")

    def identity(self) -> dict:
        """What a checkpoint must match to be resumed under this config."""
        d = asdict(self)
        for key in (
            "epochs", "progress", "out", "device", "eval_every", "eval_k", "checkpoint_every", "nan_policy", "compile", "nan_check",
            "epoch_lines", "early_stop", "tensorboard", "time_limit",
        ):  # fmt: skip
            d.pop(key)
        return d


def _to_device(fn, device):
    module = module_of(fn)
    if module is not None:
        module.to(device)
    return fn


class ParamStoreNote(UserWarning):
    """The trainer emptied a Pyro param store that held parameters it had not created."""


# names of the parameters trainers registered: only other names in the store are a user's own
_TRAINER_PARAMS: set[str] = set()


def _start_from_an_empty_param_store() -> None:
    """Empty Pyro's param store, as Pyro's examples do before SVI (stale parameters of another
    pair under the same names would otherwise be trained in place of this pair's); say so when
    it held parameters that no trainer created."""
    store = pyro.get_param_store()
    foreign = sorted(set(store.keys()) - _TRAINER_PARAMS)
    if foreign:
        warnings.warn(
            f"Trainer starts from an empty Pyro param store and dropped {len(foreign)} parameter(s) it did not create "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); keep them with "
            "pyro.get_param_store().get_state() before, and set_state() after, if you need them",
            ParamStoreNote,
            stacklevel=3,
        )
    pyro.clear_param_store()


class Trainer:
    """Trains ``model`` and ``guide`` with ``config.objective`` (or an objective object).

    >>> trainer = Trainer(VAE(), MeanFieldGuide(), TrainConfig(epochs=5))  # doctest: +SKIP
    >>> history = trainer.fit(train_x, val_x)                               # doctest: +SKIP

    Like Pyro's examples, training starts from an empty Pyro param store; parameters a user put
    there are dropped with a :class:`ParamStoreNote` warning that says so.
    """

    def __init__(self, model, guide, config: TrainConfig, objective=None):
        self.config = config
        self.device = resolve_device(config.device)
        self.model = _to_device(model, self.device)
        self.guide = _to_device(guide, self.device)
        self.objective = objective if objective is not None else get_objective(config.objective)
        self.history: list[dict] = []
        self.epoch = 0
        self.step = 0
        self.params: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        # where the epoch in progress stands: batches done, its data order and partial loss
        self.batch_in_epoch = 0
        self.epoch_order: torch.Tensor | None = None
        self.epoch_total: torch.Tensor | None = None
        self.epoch_skipped = 0
        self.step_fn: Any = None  # EagerStep or CompiledStep, chosen in fit()
        self.deferred: DeferredGuard | None = None
        self.tensorboard: TensorBoardLog | None = None
        self.deadline: float | None = None
        self.stopped_early: int | None = None  # the best epoch, when early stopping ended training
        self.best_params: dict[str, torch.Tensor] | None = None  # the best epoch's parameters (this process)
        _start_from_an_empty_param_store()

    # ------------------------------------------------------------------ parameters

    def _capture_params(self, x: torch.Tensor) -> None:
        """Create every parameter the pair registers by running the objective once."""
        with poutine.trace(param_only=True) as capture:
            self.objective.differentiable_loss(self.model, self.guide, x)
        params, seen = {}, set()
        for name, site in sorted(capture.trace.nodes.items()):
            tensor = site["value"].unconstrained()
            if id(tensor) not in seen:  # one module registered under two names (Pyro's example VAE)
                seen.add(id(tensor))
                params[name] = tensor
        if not params:
            raise ValueError(
                "the model and guide register no parameters: wrap networks with pyro.module(name, net) "
                "or make them PyroModules, and create other parameters with pyro.param"
            )
        self.params = params
        _TRAINER_PARAMS.update(pyro.get_param_store().keys())
        # capturable on CUDA: the step counter lives on the device, so no update reads the host
        capturable = self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(
            self.params.values(), lr=self.config.lr, eps=self.config.adam_eps, capturable=capturable
        )
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=self.config.lr_decay)

    def state_dict(self) -> dict:
        return {name: p.detach().clone() for name, p in self.params.items()}

    def load_params(self, state: dict) -> None:
        missing = sorted(set(self.params) - set(state))
        extra = sorted(set(state) - set(self.params))
        if missing or extra:
            raise CheckpointError(
                f"checkpoint parameters do not match this model and guide (missing {missing[:3]}, unexpected {extra[:3]})"
            )
        with torch.no_grad():
            for name, p in self.params.items():
                if state[name].shape != p.shape:
                    raise CheckpointError(
                        f"checkpoint parameter '{name}' has shape {tuple(state[name].shape)}, this model's has {tuple(p.shape)}"
                    )
                p.copy_(state[name])

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_path(self) -> Path | None:
        return Path(self.config.out) / CHECKPOINT_NAME if self.config.out else None

    def save(self, path: Path | None = None) -> Path | None:
        """Write the checkpoint (atomically); at an epoch end ``batch_in_epoch`` is 0.

        Under torchrun every rank calls it (their RNG states are gathered) and rank 0 writes.
        """
        path = path or self._checkpoint_path()
        if path is None:
            return None
        assert self.optimizer is not None and self.scheduler is not None and self.epoch_order is not None
        rngs = distributed.gather_objects(rng_state())
        if not distributed.is_main():
            return None
        extra = {"world_size": len(rngs), "rng_ranks": rngs} if len(rngs) > 1 else {}
        return save_checkpoint(
            {
                "config": asdict(self.config),
                "params": self.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch,
                "step": self.step,
                "batch_in_epoch": self.batch_in_epoch,
                "epoch_order": self.epoch_order.cpu(),
                "epoch_total": (self.epoch_total if self.epoch_total is not None else torch.zeros(())).detach().cpu(),
                "epoch_skipped": self.epoch_skipped,
                "rng": rngs[0],
                "history": self.history,
                **extra,
            },
            path,
        )

    def _resume(self) -> None:
        path = self._checkpoint_path()
        if path is None:
            raise ValueError("resume needs config.out, the folder holding the checkpoint")
        state = load_checkpoint(path)  # on the CPU: RNG states must stay there; parameters are copied over
        saved = TrainConfig(**{**state["config"], "epochs": 1}).identity()
        if saved != self.config.identity():
            diff = sorted(k for k in saved if saved[k] != self.config.identity().get(k))
            raise CheckpointError(f"checkpoint {path} was written with a different configuration ({', '.join(diff)} differ)")
        self.load_params(state["params"])
        assert self.optimizer is not None and self.scheduler is not None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        self.batch_in_epoch, self.epoch_order = state["batch_in_epoch"], state["epoch_order"]
        self.epoch_total = state["epoch_total"].to(self.device)
        self.epoch_skipped = state["epoch_skipped"]
        saved_world, world = state.get("world_size", 1), distributed.world_size()
        if saved_world != world:
            raise CheckpointError(
                f"checkpoint {path} was written by {saved_world} process(es) and this run has {world}: the global batch "
                f"and data order depend on it; resume with torchrun --nproc-per-node {saved_world}"
                if saved_world > 1
                else f"checkpoint {path} was written by {saved_world} process(es) and this run has {world}: resume without torchrun"
            )
        set_rng_state(state["rng_ranks"][distributed.rank()] if world > 1 else state["rng"])

    # ------------------------------------------------------------------ loop

    def fit(
        self, train_x: torch.Tensor, val_x: torch.Tensor | None = None, dynamic: bool = False, resume: bool = False
    ) -> list[dict]:
        """Train for ``config.epochs`` epochs (in total, counting resumed ones).

        ``train_x`` holds intensities if ``dynamic`` (binarised afresh each epoch on the
        device) and the data as the model sees them otherwise. Returns the history:
        one dict per epoch with the training loss and validation ELBO (and log p(x)),
        in nats per data point. Ctrl-C saves a checkpoint and raises :class:`Interrupted`.
        """
        cfg = self.config
        train_x = as_data_tensor(train_x, "training data")
        val_x = None if val_x is None else as_data_tensor(val_x, "validation data")
        if cfg.early_stop and val_x is None:
            raise ValueError("early stopping follows the validation log p(x): give validation data (val_x)")
        if cfg.tensorboard and not cfg.out:
            raise ValueError("tensorboard writes into the run folder: set out")
        rank, world = distributed.rank(), distributed.world_size()
        main = rank == 0
        seed_everything(cfg.seed + rank)  # each rank its own draws; one shared generator orders the data
        batches = DeviceBatches(train_x, cfg.batch_size, self.device, cfg.seed, dynamic, rank=rank, world=world)
        first = batches.x[:2]
        self.refresh(batches.x)
        if dynamic:  # intensities, binarised on the device each epoch
            check_data(batches.x, "training data (intensities for dynamic binarisation)", flat=False)
        check_pair_on_data(self.model, self.guide, torch.bernoulli(batches.x) if dynamic else batches.x, "training data")
        if val_x is not None:
            val_x = val_x.to(self.device)
            check_pair_on_data(self.model, self.guide, val_x, "validation data")
        self._capture_params(torch.bernoulli(first) if dynamic else first)
        # every rank starts from rank 0's parameters and buffers, as DDP's constructor makes them
        distributed.broadcast_tensors(list(self.params.values()) + buffers_of(self.model, self.guide))
        if cfg.out and main:
            check_output_folder(cfg.out, needed_bytes=3 * sum(p.numel() * p.element_size() for p in self.params.values()) + 2**20)
        if resume:
            self._resume()
        self.epoch_order = batches.state() if self.epoch_order is None else self.epoch_order
        example = batches.x[: cfg.batch_size]
        params = list(self.params.values())
        self.step_fn = make_step(
            cfg.compile,
            self.objective,
            self.model,
            self.guide,
            params,
            (example > 0.5).to(example.dtype) if dynamic else example,
            steps_to_go=(cfg.epochs - self.epoch) * len(batches) - self.batch_in_epoch,
            log=tqdm.write,
        )
        defer = cfg.nan_check == "deferred" or (cfg.nan_check == "auto" and self.step_fn.compiled and self.device.type == "cuda")
        if world > 1:
            self.step_fn = distributed.DistributedStep(self.step_fn, params, self.device, nan_as_loss=cfg.nan_policy != "off")
        self.deferred = DeferredGuard(self.optimizer, params) if defer and cfg.nan_policy != "off" else None
        if self.deferred is not None:
            self.deferred.epoch_bad.fill_(self.epoch_skipped)  # a resumed epoch keeps its count
        self.tensorboard = TensorBoardLog(cfg.out, self.epoch) if cfg.tensorboard and main else None
        self.deadline = time.monotonic() + cfg.time_limit if cfg.time_limit else None
        bar = tqdm(
            total=cfg.epochs * len(batches),
            initial=self.epoch * len(batches) + self.batch_in_epoch,
            disable=not cfg.progress or not main,
            desc=cfg.meta.get("progress_label", "train"),
            unit="step",
        )
        try:
            with InterruptGuard(sigterm=world > 1) as guard:
                if world > 1:
                    self.step_fn.stop_requested = lambda: guard.requested or self._past_deadline()
                while self.epoch < cfg.epochs and not self._patience_ran_out():
                    self._run_epoch(batches, val_x, guard, bar)
        finally:
            bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        return self.history

    def restore_best(self) -> int | None:
        """Load the best epoch's parameters (kept in memory, or ``best.pt`` after a resume);
        returns that epoch, or None when there is none (no validation data)."""
        best = best_row(self.history, monitored(self.config.eval_every))
        if best is None:
            return None
        params = self.best_params
        path = Path(self.config.out) / BEST_NAME if self.config.out else None
        if params is None and path is not None and path.exists():
            params = load_checkpoint(path)["params"]
        if params is None:
            return None
        self.load_params({name: value.to(self.device) for name, value in params.items()})
        return best["epoch"]

    def _patience_ran_out(self) -> bool:
        """Early stopping: True (with one line saying so) once ``early_stop`` epochs have passed
        since the best epoch; read from the history, so a resumed run stops where it stopped."""
        monitor = monitored(self.config.eval_every)
        best = patience_ran_out(self.history, monitor, self.config.early_stop)
        if best is None:
            return False
        self.stopped_early = best["epoch"]
        if distributed.is_main():
            tqdm.write(
                f"early stop after epoch {self.epoch}: {MONITOR_NAMES[monitor]} has not improved for {self.epoch - best['epoch']} "
                f"epochs (patience {self.config.early_stop}); the best, {best[monitor]:.2f} at epoch {best['epoch']}, is in best.pt"
            )
        return True

    def _run_epoch(self, batches: DeviceBatches, val_x, guard: InterruptGuard, bar) -> None:
        cfg, n = self.config, batches.x.shape[0]
        start = time.perf_counter()
        batches.load_state(self.epoch_order)  # the epoch's order: replayed exactly after a resume
        skip, self.batch_in_epoch = self.batch_in_epoch, 0
        if skip == 0:
            self.epoch_total, self.epoch_skipped = torch.zeros((), device=self.device), 0
            if self.deferred is not None:
                self.deferred.new_epoch()
        if cfg.lr_stages:
            for group in self.optimizer.param_groups:
                group["lr"] = stage_lr(cfg.lr_stages, self.epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        set_progress = getattr(self.objective, "set_progress", None)  # schedules (KL warm-up)
        self.set_training(True)
        self.refresh(batches.x)
        params = list(self.params.values())
        for i, xb in enumerate(batches.epoch()):
            if i < skip:
                self.batch_in_epoch += 1
                continue
            if set_progress is not None:
                set_progress(self.step, self.epoch)
            loss = self._step_or_refused(xb)  # the loss, with every parameter's gradient in .grad
            if self.deferred is not None:  # no host read: a bad step is undone on the device
                if loss is None:
                    loss = torch.full((), math.nan, device=self.device)
                ok = self.deferred.update(loss, self.step + 1, xb)
                self.epoch_total += torch.where(ok, loss, torch.zeros_like(loss))
                self._after_step(bar, guard, cfg)
                continue
            finite = loss is not None and (cfg.nan_policy == "off" or bool(all_finite(loss, params)))
            if not finite:
                if cfg.nan_policy == "stop":
                    raise TrainingError(
                        f"non-finite loss or gradient at step {self.step + 1} (epoch {self.epoch + 1}, batch {i + 1}): "
                        f"{diagnose(self.model, self.guide, xb, self.params)}. Nothing from this step was applied; "
                        + self._kept_checkpoint()
                        + " (nan_policy='skip' skips such batches)"
                    )
                self.epoch_skipped += 1
            else:
                self.optimizer.step()
                self.epoch_total += loss  # type: ignore[operator]
            self._after_step(bar, guard, cfg)
        self._read_deferred()
        if self.epoch_skipped == len(batches):
            raise TrainingError(
                f"every batch of epoch {self.epoch + 1} had a non-finite loss or gradient and was skipped "
                f"(nan_policy='skip'): training cannot go on; {self._kept_checkpoint()}"
            )
        counted = n - self.epoch_skipped * batches.batch_size
        train_loss = self.epoch_total.item() / max(counted, 1)  # the one read from the device this epoch
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"the training loss became {train_loss} in epoch {self.epoch + 1} (step {self.step}); {self._kept_checkpoint()}"
            )
        self.epoch += 1
        self.scheduler.step()
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": train_loss,
            "seconds": time.perf_counter() - start,
            "lr": lr,
        }
        if self.epoch_skipped:
            row["skipped_batches"] = self.epoch_skipped
        if val_x is not None:  # every rank keeps rank 0's row (early stopping reads the history)
            row = distributed.broadcast_object({**row, **self.validate(val_x)})
        self.history.append(row)
        bar.set_postfix({k: round(v, 2) for k, v in row.items() if k.startswith(("train_loss", "val_elbo", "val_log_px"))})
        self.batch_in_epoch, self.epoch_order = 0, batches.state()
        path = self.save()
        if best_row(self.history, monitored(cfg.eval_every)) is row:
            self.best_params = self.state_dict()
            if path is not None:
                keep_as_best(path)
        if path is not None:
            write_metrics(self.history, cfg.out)
        if self.tensorboard is not None:
            self.tensorboard.write(row)
        if cfg.epoch_lines and distributed.is_main():
            print(epoch_line(row, cfg.epochs), flush=True)
        if distributed.any_rank(guard.requested, self.device):
            raise Interrupted(self._checkpoint_path())

    def _step_or_refused(self, xb: torch.Tensor) -> torch.Tensor | None:
        """The step's loss, or None when Pyro's validation refused NaN distribution parameters
        (the eager step; the guard then treats the batch as non-finite)."""
        try:
            return self.step_fn(xb)
        except ValueError as err:
            if self.config.nan_policy == "off" or "invalid values" not in str(err):
                raise
            return None

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _stop_now(self, guard: InterruptGuard) -> bool:
        """Ctrl-C (or the time limit) seen at this step boundary; under torchrun the ranks' agreed
        answer, read with the NaN guard's own host reads (every step, or every DEFERRED_READ_EVERY
        when deferred)."""
        if not isinstance(self.step_fn, distributed.DistributedStep):
            return guard.requested or self._past_deadline()
        if self.deferred is not None and self.step % DEFERRED_READ_EVERY:
            return False
        return self.step_fn.agreed_stop()

    def _after_step(self, bar, guard: InterruptGuard, cfg: TrainConfig) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        bar.update()
        if self.deferred is not None and self.step % DEFERRED_READ_EVERY == 0:
            self._read_deferred()
        if self._stop_now(guard):
            self._read_deferred()
            raise Interrupted(
                self.save(),
                f"stopped at the time limit ({self.config.time_limit:g} s)"
                if self._past_deadline() and not guard.requested
                else "interrupted",
            )
        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
            self._read_deferred()  # no checkpoint of a state the guard has not cleared
            self.save()

    def _read_deferred(self) -> None:
        """Read the deferred guard (one host read): stop on a bad step, or count the skipped ones."""
        if self.deferred is None:
            return
        bad, epoch_bad, first = self.deferred.read()
        self.epoch_skipped = epoch_bad
        if bad and self.config.nan_policy == "stop":
            x = self.deferred.bad_x
            where = diagnose(self.model, self.guide, x, self.params) if x is not None else "its batch was not kept"
            raise TrainingError(
                f"non-finite loss or gradient at step {first} (found at step {self.step}: with nan_check='deferred' the "
                f"guard is read every {DEFERRED_READ_EVERY} steps and before checkpoints): {where}. No non-finite step "
                f"was applied (each was undone on the device); the finite steps after it were; {self._kept_checkpoint()} "
                "(nan_policy='skip' skips such batches; nan_check='step' stops at once)"
            )

    def _kept_checkpoint(self) -> str:
        """What the error can truthfully say of the checkpoint."""
        path = self._checkpoint_path()
        if path is None:
            return "no checkpoint was asked for"
        if not path.exists():
            return f"no checkpoint was written yet ({path} does not exist)"
        return f"the last good checkpoint {path} is kept"

    def set_training(self, mode: bool) -> None:
        for fn in (self.model, self.guide):
            module = module_of(fn)
            if module is not None:
                module.train(mode)

    def refresh(self, train_x: torch.Tensor) -> None:
        """Let a model with data-dependent state (the ACN code bank) recompute it from the training data."""
        refresh = getattr(self.model, "refresh", None)
        if refresh is not None:
            with torch.no_grad():
                refresh(train_x)

    def validate(self, val_x: torch.Tensor) -> dict:
        self.set_training(False)
        terms = elbo_terms(self.model, self.guide, val_x)
        row = {"val_elbo": terms.elbo, "val_rate": terms.rate, "val_distortion": terms.distortion}
        every = self.config.eval_every
        if every and (self.epoch % every == 0 or self.epoch == self.config.epochs):
            try:  # drawn from its own seed (the same however many ranks share the points)
                est = log_px(self.model, self.guide, val_x, k=self.config.eval_k, seed=self.config.seed + self.epoch)
            except NoDensityError:  # a deterministic encoder: no log p(x) to estimate
                return row
            row.update(val_log_px=est.log_px, val_log_px_se=est.log_px_se, val_k=est.k)
        return row
