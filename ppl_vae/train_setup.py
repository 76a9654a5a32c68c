"""What the trainer sets up before its first step: the checks of the pair on the data (with the
objective: a point-mass guide only where no density is needed, samples at once only where the
objective or validation draws them) and the step with the NaN guard that suits it."""

from __future__ import annotations

import torch

from . import distributed, progress
from .checks import check_pair_on_data
from .data import DeviceBatches
from .epoch_log import monitored
from .faults import NanGuard
from .global_latents import GlobalScaled, accepts_global, global_sites, refuse
from .hooks import InitialisedFromData, refresh
from .labels import LabelledObjective, check_labelled_pair, kingma_aux_weight, labelled_rows
from .objectives import accepts_point_masses, num_particles
from .pixels import check_data
from .step import make_step


def check_training_pair(trainer, batches: DeviceBatches, val_x, dynamic: bool):
    """The pair on the data before any work: shapes, the contract, the observed support, and a
    point-mass guide only with an objective that has no density to evaluate; sets what the trainer
    follows for the best epoch, and returns the site terms of one run."""
    refresh(trainer.model, batches.x)
    if dynamic:  # intensities, binarised on the device each epoch
        check_data(batches.x, "training data (intensities for dynamic binarisation)", flat=False)
    cfg = trainer.config
    scored = val_x is not None and cfg.eval_every > 0 and cfg.eval_k > 1  # validation log p(x) draws eval_k at once
    particles = scored or num_particles(trainer.objective) > 1
    x = torch.bernoulli(batches.x) if dynamic else batches.x
    shared = check_global_latents(trainer, x[:2], batches.x.shape[0])
    if batches.labels is not None:
        use_labels(trainer, batches, dynamic)
    particles = particles and not shared  # no per-point estimate is made of a model with global latents
    terms = check_pair_on_data(trainer.model, trainer.guide, x, "training data", particles=particles, allow_global=shared)
    if val_x is not None:
        check_pair_on_data(trainer.model, trainer.guide, val_x, "validation data", particles=particles, allow_global=shared)
    point_masses = terms.point_masses()
    if point_masses and not accepts_point_masses(trainer.objective):
        raise ValueError(
            f"guide site '{point_masses[0]}' is a point mass (a deterministic encoder): q(z|x) has no density, so the "
            f"objective '{trainer.config.objective}' would not be the bound it is named for (its KL term is undefined; "
            "what it trains is log p(x|z) + log p(z), a MAP-like objective); use an aggregate objective (wae_mmd, "
            "swae, cwae, radial, sparse_ae) with this guide, or a stochastic guide (mean_field, ...)"
        )
    trainer.monitor = monitored(0 if shared else trainer.config.eval_every, density=not point_masses)
    return terms


def check_global_latents(trainer, x: torch.Tensor, n_points: int) -> bool:
    """A model with global latents (:mod:`ppl_vae.global_latents`) trains only with an objective that is
    right with them, its global sites weighted B / N per minibatch; returns whether it has any."""
    if isinstance(trainer.objective, GlobalScaled):
        return True
    names = global_sites(trainer.model, trainer.guide, x)
    if not names:
        return False
    if not accepts_global(trainer.objective):
        raise refuse(trainer.config.objective, names)
    trainer.objective = GlobalScaled(trainer.objective, n_points, names)  # every rank holds all N points
    return True


def use_labels(trainer, batches: DeviceBatches, dynamic: bool) -> None:
    """Batches that carry labels: the pair run with them once, and the objective that splits them
    (:class:`~ppl_vae.labels.LabelledObjective`)."""
    x, labels = batches.x, batches.labels
    if x.dim() != 2:
        raise ValueError(f"labels go with flat data points (N, D); the training data have shape {tuple(x.shape)}")
    if labels.dim() != 2 or labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"train_y must be one-hot rows (N, C), one per training point; got {tuple(labels.shape)} for {x.shape[0]} points"
        )
    labelled = labelled_rows(labels)
    if not labelled.any():
        raise ValueError("train_y labels no training point (every row is zeros)")
    first = labelled.nonzero()[:2, 0]
    check_labelled_pair(trainer.model, trainer.guide, torch.bernoulli(x[first]) if dynamic else x[first], labels[first])
    weight = trainer.config.aux_weight
    weight = kingma_aux_weight(x.shape[0], int(labelled.sum())) if weight is None else weight
    trainer.objective = LabelledObjective(trainer.objective, x.shape[-1], weight)


def initialise_from_data(trainer, train_x: torch.Tensor, resume: bool) -> str | None:
    """A new run's data-informed initialisation (:class:`~ppl_vae.hooks.InitialisedFromData`), the
    line that says what it did (a resumed run keeps its checkpoint's line, read there)."""
    cfg = trainer.config
    if resume:
        return None
    if not cfg.data_init:
        return "off (data_init=False, --no-data-init)"
    if cfg.model_from:  # the decoder comes from that run and stays fixed
        return f"not applied: the model's parameters come from {cfg.model_from}"
    if not isinstance(trainer.model, InitialisedFromData):
        return "not applied: the model defines no init_from_data (see ppl_vae.models.init_output_bias)"
    with torch.no_grad():
        return trainer.model.init_from_data(train_x.to(trainer.device))


def choose_step(trainer, batches: DeviceBatches, dynamic: bool) -> None:
    """The step (eager or compiled, wrapped under torchrun) and the NaN guard that suits it."""
    cfg = trainer.config
    example = batches.x[: cfg.batch_size]
    params = list(trainer.params.values())
    trainer.step_fn = make_step(
        "off" if batches.labels is not None else cfg.compile,  # labelled and unlabelled parts: no one graph
        trainer.objective,
        trainer.model,
        trainer.guide,
        params,
        (example > 0.5).to(example.dtype) if dynamic else example,
        steps_to_go=(cfg.epochs - trainer.epoch) * len(batches) - trainer.batch_in_epoch,
        log=progress.write,
    )
    defer = cfg.nan_check == "deferred" or (
        cfg.nan_check == "auto" and trainer.step_fn.compiled and trainer.device.type == "cuda"
    )
    if distributed.world_size() > 1:
        trainer.step_fn = distributed.DistributedStep(
            trainer.step_fn, params, trainer.device, nan_as_loss=cfg.nan_policy != "off"
        )
    trainer.guard = NanGuard(
        cfg.nan_policy, defer, trainer.optimizer, trainer.params, trainer.model, trainer.guide, trainer._kept_checkpoint
    )
    trainer.guard.new_epoch(trainer.epoch_skipped)  # a resumed epoch keeps its count
