"""The optional hooks a model, guide or objective may define, written down as protocols.

None is required: a plain model function and guide function train and score as they are. A
pair or objective that defines one of these methods gets it called at the moment the protocol
says. The package's own models and priors are the examples.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ReadsGuide(Protocol):
    """A model whose prior reads the guide (VampPrior, the ACN prior): ``build_pair`` hands it the
    guide once both exist."""

    def attach_guide(self, guide) -> None: ...


@runtime_checkable
class RefreshedFromData(Protocol):
    """A model with state computed from the training data (the ACN prior's code bank): the trainer
    calls ``refresh(x_train)`` (under ``torch.no_grad``) before training and at every epoch's start,
    and a restored pair is refreshed before and after its parameters are loaded."""

    def refresh(self, x_train: torch.Tensor) -> None: ...


@runtime_checkable
class InitialisedFromData(Protocol):
    """A model that sets some parameters from the training data before the first step of a new run
    (the package's models: the decoder's output bias, see :mod:`ppl_vae.models.data_init`); the
    trainer calls ``init_from_data(x_train)`` (under ``torch.no_grad``; intensities when the data are
    binarised each epoch) unless ``TrainConfig.data_init`` is off, never on resume, and records the
    line it returns."""

    def init_from_data(self, x_train: torch.Tensor) -> str: ...


@runtime_checkable
class HasPosterior(Protocol):
    """A guide that returns q(z | x) as a distribution for a batch of inputs (what the VampPrior and
    ACN prior evaluate at pseudo-inputs or training points)."""

    def posterior(self, x: torch.Tensor): ...


@runtime_checkable
class HasLocalHead(Protocol):
    """A guide whose q(z | x) reads x only through one module's output per point (given its global
    parameters, a flow's steps say): ``evaluate --refine`` optimises that output point by point. The
    one-site guides name their encoder's last layer."""

    @property
    def local_head(self) -> torch.nn.Module: ...


@runtime_checkable
class SamplesImages(Protocol):
    """A model with its own sampler for pictures (the ACN prior samples by a chain through its prior
    network); others are sampled by running the model with its observation released."""

    def sample_images(self, n: int, like: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Scheduled(Protocol):
    """An objective with a schedule (the KL warm-up): the trainer reports progress before each step,
    and a compiled step reads ``state_tensors`` as graph inputs, since their values change."""

    def set_progress(self, step: int, epoch: int) -> None: ...

    def state_tensors(self) -> list[torch.Tensor]: ...


def attach_guide(model, guide) -> None:
    if isinstance(model, ReadsGuide):
        model.attach_guide(guide)


@torch.no_grad()
def refresh(model, x_train: torch.Tensor) -> None:
    if isinstance(model, RefreshedFromData):
        model.refresh(x_train)


def reads_training_data(model) -> bool:
    """Whether the model's state depends on the training data (the VAE's refresh is its prior's)."""
    return isinstance(getattr(model, "prior", model), RefreshedFromData)


def state_tensors(objective) -> list[torch.Tensor]:
    return list(objective.state_tensors()) if isinstance(objective, Scheduled) else []
