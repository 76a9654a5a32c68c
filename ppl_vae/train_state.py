"""What a trainer's checkpoint holds and how a run resumes from it: everything an exact resume
needs (parameters, optimizer, schedule, history, the epoch in progress: its data order, partial
loss and skipped batches, and every rank's random state), written atomically
(:mod:`ppl_vae.checkpoint`), and the checks that refuse a checkpoint of another run."""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import distributed
from . import progress as bars
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .device import rng_state, set_rng_state
from .pair import load_buffers, named_buffers
from .run_folder import CHECKPOINT_NAME, remove_stale_outputs


def same_run_settings(config: TrainConfig, saved: TrainConfig) -> list[str]:
    """Each setting of ``config`` that makes it another run than ``saved`` (``name: old -> new``);
    objective specs are compared with every default filled in (``iwae`` is ``iwae:k=5``)."""
    from .objectives import resolve_spec

    def resolved(cfg: TrainConfig) -> TrainConfig:
        try:
            return replace(cfg, objective=resolve_spec(cfg.objective))
        except ValueError:  # a name this version does not know: compared as written
            return cfg

    return resolved(config).changes_from(resolved(saved))


def save_training(trainer, path: str | os.PathLike) -> Path | None:
    """Write everything an exact resume of ``trainer`` needs (parameters, optimizer, schedule,
    history, the epoch in progress: its data order, partial loss and skipped batches, and every
    rank's random state). Under torchrun every rank calls it (their RNG states are gathered) and
    rank 0 writes; others return None. The run's own checkpoint, once written, removes the
    evaluations and samples of the one it replaced."""
    rngs = distributed.gather_objects(rng_state())
    if not distributed.is_main():
        return None
    extra = {"world_size": len(rngs), "rng_ranks": rngs} if len(rngs) > 1 else {}
    total = trainer.epoch_total if trainer.epoch_total is not None else torch.zeros(())
    written = save_checkpoint(
        {
            "config": asdict(trainer.config),
            "params": trainer.state_dict(),
            "buffers": {k: b.detach().cpu().clone() for k, b in named_buffers(trainer.model, trainer.guide).items()},
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "epoch": trainer.epoch,
            "step": trainer.step,
            "batch_in_epoch": trainer.batch_in_epoch,
            "epoch_order": trainer.epoch_order.cpu(),
            "epoch_total": total.detach().cpu(),
            "epoch_skipped": trainer.epoch_skipped,
            "rng": rngs[0],
            "history": trainer.history,
            "data_init": trainer.data_init,
            **extra,
        },
        path,
    )
    out = trainer.config.out
    if out and written.resolve() == (Path(out) / CHECKPOINT_NAME).resolve():
        note = remove_stale_outputs(out, CHECKPOINT_NAME)
        if note:
            bars.write(note)
    return written


def resume_or_start(trainer, resume: bool) -> None:
    """Continue from the checkpoint in ``config.out`` (``resume``), or start afresh where none is:
    a new run does not write over another run's checkpoint (the command line's --overwrite removes
    it first)."""
    out = trainer.config.out
    path = Path(out) / CHECKPOINT_NAME if out else None
    if resume:
        if path is None:
            raise ValueError("resume needs config.out, the folder holding the checkpoint")
        resume_training(trainer, path)
    elif path is not None and path.exists():
        raise ValueError(
            f"config.out {out} holds another run's {CHECKPOINT_NAME}: fit(resume=True) continues it; a new run needs "
            "another out (or that run's files removed)"
        )


def resume_training(trainer, path: str | os.PathLike) -> None:
    """Load the state :func:`save_training` wrote into ``trainer``, refusing a checkpoint of another
    run (each changed setting named with its old and new value), of more epochs than the
    trainer is asked for, or of another number of processes."""
    state = load_checkpoint(path)  # on the CPU: RNG states must stay there; parameters are copied over
    try:
        saved = TrainConfig.from_dict(state["config"], epochs=1)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    changed = same_run_settings(trainer.config, saved)
    if changed:
        raise CheckpointError(
            f"checkpoint {path} was written with other settings ({'; '.join(changed)}): resume with the same "
            "settings, or start a new run in another folder (or with --overwrite)"
        )
    if state["epoch"] > trainer.config.epochs:
        raise CheckpointError(
            f"checkpoint {path} has trained {state['epoch']} epochs, more than the {trainer.config.epochs} asked for: "
            f"resume with --epochs {state['epoch']} or more (the run is already past {trainer.config.epochs})"
        )
    saved_world, world = state.get("world_size", 1), distributed.world_size()
    if saved_world != world:
        raise CheckpointError(
            f"checkpoint {path} was written by {saved_world} process(es) and this run has {world}: the global batch "
            f"and data order depend on it; resume with torchrun --nproc-per-node {saved_world}"
            if saved_world > 1
            else f"checkpoint {path} was written by {saved_world} process(es) and this run has {world}: resume without torchrun"
        )
    trainer.load_params(state["params"])
    load_buffers(trainer.model, trainer.guide, state.get("buffers", {}))
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.epoch, trainer.step, trainer.history = state["epoch"], state["step"], list(state["history"])
    trainer.batch_in_epoch, trainer.epoch_order = state["batch_in_epoch"], state["epoch_order"]
    trainer.epoch_total = state["epoch_total"].to(trainer.device)
    trainer.epoch_skipped = state["epoch_skipped"]
    trainer.data_init = state.get("data_init", "off (a checkpoint written before data-informed initialisation)")
    set_rng_state(state["rng_ranks"][distributed.rank()] if world > 1 else state["rng"])


def kept_checkpoint(path: Path | None) -> str:
    """What an error can truthfully say of the checkpoint at ``path``."""
    if path is None:
        return "no checkpoint was asked for"
    if not path.exists():
        return f"no checkpoint was written yet ({path} does not exist)"
    return f"the last good checkpoint {path} is kept"
