"""The training loop for any (model, guide, objective) triple that follows the contract.

The loop knows no objective: a step (:mod:`ppl_vae.step`, eager or compiled) gives one
minibatch's loss with every parameter's gradient in ``.grad``; the NaN guard
(:mod:`ppl_vae.faults`) applies the Adam update or refuses it; checkpoints
(:mod:`ppl_vae.checkpoint`) hold what an exact resume needs, including the data order of the
epoch in progress and its partial loss; :mod:`ppl_vae.epoch_log` keeps the best epoch, early
stopping, metrics and TensorBoard. Losses accumulate on the device and are read once per epoch,
and the data stay on the device (:class:`ppl_vae.data.DeviceBatches`).
"""

from __future__ import annotations

import math
import time

import torch

from . import distributed, hooks, param_store, progress
from .budget import check_training_memory, sample_width
from .capture import buffers_of, module_of
from .checks import check_output_folder
from .config import NAN_CHECKS, NAN_POLICIES, TrainConfig
from .data import DeviceBatches
from .device import resolve_device, seed_everything, tf32_matmul
from .epoch_log import TensorBoardLog, best_parameters, best_row, early_stop, keep_as_best, log_epoch, monitored
from .faults import DEFERRED_READ_EVERY, Interrupted, NanGuard, Stops, TrainingError
from .objectives import get_objective, num_particles
from .pair import capture_params, fix_model_from, load_params, set_training
from .param_store import ParamStoreNote
from .pixels import as_data_tensor
from .run_folder import BEST_NAME, CHECKPOINT_NAME
from .scoring import validation
from .train_setup import check_training_pair, choose_step, initialise_from_data
from .train_state import kept_checkpoint, resume_or_start, save_training

__all__ = ["NAN_CHECKS", "NAN_POLICIES", "Interrupted", "ParamStoreNote", "TrainConfig", "Trainer", "TrainingError", "stage_lr"]


def stage_lr(stages: list, epoch: int) -> float:
    """The learning rate of 0-based ``epoch`` under ``[[epochs, lr], ...]`` (the last rate after the last stage)."""
    end = 0
    for epochs, lr in stages:
        end += epochs
        if epoch < end:
            return lr
    return stages[-1][1]


class Trainer:
    """Trains ``model`` and ``guide`` with ``config.objective`` (or an objective object).

    >>> trainer = Trainer(VAE(), MeanFieldGuide(), TrainConfig(epochs=5))  # doctest: +SKIP
    >>> history = trainer.fit(train_x, val_x)                               # doctest: +SKIP

    Like Pyro's examples, training starts from an empty Pyro param store; parameters a user put
    there are dropped with a :class:`ParamStoreNote` warning that says so.
    """

    clock = staticmethod(time.monotonic)  # what the time limit reads (a test may give a fake clock)

    def __init__(self, model, guide, config: TrainConfig, objective=None):
        self.config = config
        self.device = resolve_device(config.device)
        self.model, self.guide = model, guide
        for fn in (model, guide):
            if module_of(fn) is not None:
                module_of(fn).to(self.device)
        self.objective = objective if objective is not None else get_objective(config.objective)
        self.history: list[dict] = []
        self.epoch = self.step = self.batch_in_epoch = self.epoch_skipped = 0
        self.params: dict[str, torch.Tensor] = {}  # what trains; self.fixed: what config.model_from holds fixed
        self.fixed: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.epoch_order: torch.Tensor | None = None  # the epoch in progress: its data order ...
        self.epoch_total: torch.Tensor | None = None  # ... and its partial loss
        self.step_fn = None  # EagerStep or CompiledStep (wrapped under torchrun), chosen in fit()
        self.guard: NanGuard | None = None
        self.tensorboard: TensorBoardLog | None = None
        self.monitor = monitored(config.eval_every)
        self.stopped_early: int | None = None  # the best epoch, when early stopping ended training
        self.best_params: dict[str, torch.Tensor] | None = None  # the best epoch's parameters (this process)
        self.data_init: str | None = None  # what the data-informed initialisation did (hooks.InitialisedFromData)
        param_store.fresh()

    @property
    def deferred(self):
        """The NaN guard's on-device state when it is deferred, else None."""
        return self.guard.deferred if self.guard is not None else None

    # ------------------------------------------------------------------ parameters and checkpoints

    def _capture_params(self, x: torch.Tensor) -> None:
        """Create every parameter the pair registers by running the objective once, and the optimizer."""
        if isinstance(self.objective, hooks.Scheduled):  # the trainer drives the schedule from here on
            self.objective.set_progress(self.step, self.epoch)
        self.params = capture_params(lambda: self.objective.differentiable_loss(self.model, self.guide, x), self.device)
        cfg, params = self.config, self.params  # fix_model_from takes the fixed ones out of params
        self.fixed = fix_model_from(cfg.model_from, self.model, self.guide, x, params, self.device, cfg.meta)
        # capturable on CUDA: the step counter lives on the device, so no update reads the host
        self.optimizer = torch.optim.Adam(params.values(), lr=cfg.lr, eps=cfg.adam_eps, capturable=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=cfg.lr_decay)

    def state_dict(self) -> dict:
        return {name: p.detach().clone() for name, p in {**self.params, **self.fixed}.items()}

    def load_params(self, state: dict) -> None:
        load_params({**self.params, **self.fixed}, state)

    def _checkpoint_path(self):
        from pathlib import Path

        return Path(self.config.out) / CHECKPOINT_NAME if self.config.out else None

    def save(self, path=None):
        """Write the checkpoint (atomically; under torchrun every rank calls it and rank 0 writes)."""
        path = path or self._checkpoint_path()
        return None if path is None else save_training(self, path)

    def _kept_checkpoint(self) -> str:
        return kept_checkpoint(self._checkpoint_path())

    # ------------------------------------------------------------------ the loop

    def fit(self, train_x, val_x=None, dynamic: bool = False, resume: bool = False, train_y=None) -> list[dict]:
        """Train for ``config.epochs`` epochs (in total, counting resumed ones).

        ``train_x`` holds intensities if ``dynamic`` (binarised afresh each epoch on the device) and the
        data as the model sees them otherwise. Returns the history: one dict per epoch with the training
        loss and validation ELBO (and log p(x)), in nats per data point. Ctrl-C saves a checkpoint and
        raises :class:`Interrupted`. ``train_y``: one-hot labels (N, C), zeros where unlabelled, for
        ``model(x, y=None)`` (:mod:`ppl_vae.labels`).
        """
        cfg = self.config
        with tf32_matmul(cfg.tf32):
            batches, val_x = self._prepare(train_x, val_x, dynamic, resume, train_y)
            bar = progress.bar(
                cfg.epochs * len(batches), cfg.label, "step", cfg.progress and distributed.is_main(),
                initial=self.epoch * len(batches) + self.batch_in_epoch,
            )  # fmt: skip
            deferred = self.deferred is not None
            stops = Stops(cfg.time_limit, self.step_fn if distributed.world_size() > 1 else None, deferred, self.clock)
            try:
                with stops:
                    while self.epoch < cfg.epochs and not self._patience_ran_out():
                        self._run_epoch(batches, val_x, stops, bar)
            finally:
                bar.close()
                if self.tensorboard is not None:
                    self.tensorboard.close()
        return self.history

    def _prepare(self, train_x, val_x, dynamic: bool, resume: bool, train_y=None):
        """Check the inputs, create the parameters (or resume them) and choose the step."""
        cfg = self.config
        train_x = as_data_tensor(train_x, "training data")
        val_x = None if val_x is None else as_data_tensor(val_x, "validation data").to(self.device)
        if cfg.early_stop and val_x is None:
            raise ValueError("early stopping follows the validation log p(x): give validation data (val_x)")
        if cfg.tensorboard and not cfg.out:
            raise ValueError("tensorboard writes into the run folder: set out")
        rank, world = distributed.rank(), distributed.world_size()
        seed_everything(cfg.seed + rank)  # each rank its own draws; one shared generator orders the data
        batches = DeviceBatches(train_x, cfg.batch_size, self.device, cfg.seed, dynamic, rank, world, train_y)
        terms = check_training_pair(self, batches, val_x, dynamic)
        self._capture_params(torch.bernoulli(batches.first(2)) if dynamic else batches.first(2))
        self.data_init = initialise_from_data(self, train_x, resume)
        width = sample_width(self.model, self.guide, terms)
        check_training_memory(list(self.params.values()), cfg.batch_size, num_particles(self.objective), width, self.device)
        # every rank starts from rank 0's parameters and buffers, as DDP's constructor makes them
        distributed.broadcast_tensors(list(self.params.values()) + buffers_of(self.model, self.guide))
        if cfg.out and distributed.is_main():
            check_output_folder(cfg.out, needed_bytes=3 * sum(p.numel() * p.element_size() for p in self.params.values()) + 2**20)
        resume_or_start(self, resume)
        self.epoch_order = batches.state() if self.epoch_order is None else self.epoch_order
        choose_step(self, batches, dynamic)
        self.tensorboard = TensorBoardLog(cfg.out, self.epoch) if cfg.tensorboard and distributed.is_main() else None
        return batches, val_x

    def _run_epoch(self, batches: DeviceBatches, val_x, stops: Stops, bar) -> None:
        start = time.perf_counter()
        batches.load_state(self.epoch_order)  # the epoch's order: replayed exactly after a resume
        skip, self.batch_in_epoch = self.batch_in_epoch, 0
        if skip == 0:
            self.epoch_total = torch.zeros((), device=self.device)
            self.guard.new_epoch()
        if self.config.lr_stages:
            for group in self.optimizer.param_groups:
                group["lr"] = stage_lr(self.config.lr_stages, self.epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        set_training(self.model, self.guide, True)
        hooks.refresh(self.model, batches.x)
        for i, xb in enumerate(batches.epoch()):
            if i < skip:
                self.batch_in_epoch += 1
                continue
            self._train_batch(xb, f"epoch {self.epoch + 1}, batch {i + 1}", stops, bar)
        self._read_guard()
        if self.epoch_skipped == len(batches):
            raise TrainingError(
                f"every batch of epoch {self.epoch + 1} had a non-finite loss or gradient and was skipped "
                f"(nan_policy='skip'): training cannot go on; {self._kept_checkpoint()}"
            )
        counted = batches.x.shape[0] - self.epoch_skipped * batches.batch_size
        train_loss = self.epoch_total.item() / max(counted, 1)  # the one read from the device this epoch
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"the training loss became {train_loss} in epoch {self.epoch + 1} (step {self.step}); {self._kept_checkpoint()}"
            )
        self._end_epoch(batches, val_x, stops, bar, {"train_loss": train_loss, "seconds": time.perf_counter() - start, "lr": lr})

    def _train_batch(self, xb: torch.Tensor, where: str, stops: Stops, bar) -> None:
        if isinstance(self.objective, hooks.Scheduled):  # schedules (KL warm-up)
            self.objective.set_progress(self.step, self.epoch)
        loss = self._step_or_refused(xb)  # the loss, with every parameter's gradient in .grad
        self.epoch_total += self.guard.apply(loss, xb, self.step + 1, where)
        self.epoch_skipped = self.guard.skipped
        self.step += 1
        self.batch_in_epoch += 1
        bar.update()
        if self.deferred is not None and self.step % DEFERRED_READ_EVERY == 0:
            self._read_guard()
        if stops.now(self.step):
            self._read_guard()
            raise Interrupted(self.save(), stops.why())
        if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
            self._read_guard()  # no checkpoint of a state the guard has not cleared
            self.save()

    def _read_guard(self) -> None:
        self.guard.read(self.step)
        self.epoch_skipped = self.guard.skipped

    def _step_or_refused(self, xb: torch.Tensor) -> torch.Tensor | None:
        """The step's loss, or None where Pyro's validation refused NaN parameters (the guard skips it)."""
        try:
            return self.step_fn(xb)
        except ValueError as err:
            if self.config.nan_policy == "off" or "invalid values" not in str(err):
                raise
            return None

    def _end_epoch(self, batches: DeviceBatches, val_x, stops: Stops, bar, row: dict) -> None:
        """The epoch's row (validation included), then its checkpoint, best.pt, metrics and logs."""
        cfg = self.config
        self.epoch += 1
        self.scheduler.step()
        row = {"epoch": self.epoch, "step": self.step, **row}
        if self.epoch_skipped:
            row["skipped_batches"] = self.epoch_skipped
        if val_x is not None:  # every rank keeps rank 0's row (early stopping reads the history)
            row = distributed.broadcast_object({**row, **self.validate(val_x)})
        self.history.append(row)
        bar.set_postfix({k: round(v, 2) for k, v in row.items() if k.startswith(("train_loss", "val_elbo", "val_log_px"))})
        self.batch_in_epoch, self.epoch_order = 0, batches.state()
        path = self.save()
        if best_row(self.history, self.monitor) is row:
            self.best_params = self.state_dict()
            if path is not None:
                keep_as_best(path)
        log_epoch(row, self.history, cfg, self.tensorboard, written=path is not None)
        if distributed.any_rank(stops.guard.requested, self.device):
            raise Interrupted(self._checkpoint_path())

    # ------------------------------------------------------------------ the best epoch

    def restore_best(self) -> int | None:
        """Load the best epoch's parameters (kept in memory, or ``best.pt`` after a resume);
        returns that epoch, or None when there is none (no validation data)."""
        path = self._checkpoint_path().with_name(BEST_NAME) if self.config.out else None
        best, params = best_parameters(self.history, self.monitor, self.best_params, path)
        if params is not None:
            self.load_params(params)
        return best

    def _patience_ran_out(self) -> bool:
        """Early stopping (:func:`ppl_vae.epoch_log.early_stop`): the history says whether to stop."""
        stop = early_stop(self.history, self.monitor, self.config.early_stop, self.epoch)
        if stop is None:
            return False
        self.stopped_early, line = stop
        if distributed.is_main():
            progress.write(line)
        return True

    # ------------------------------------------------------------------ the pair

    def set_training(self, mode: bool) -> None:
        set_training(self.model, self.guide, mode)

    def validate(self, val_x: torch.Tensor) -> dict:
        """This epoch's validation row (:func:`ppl_vae.scoring.validation`)."""
        self.set_training(False)
        return validation(self.model, self.guide, val_x, self.config, self.epoch, self.monitor, self.objective)
