"""Runs with labels, as the commands make them (``--labelled N|all``): which training points keep their
labels, the class count the built-in models are built with, and, for a conditional model (which
cannot run without y), its pair and data joined with the labels (:func:`ppl_vae.labels.conditioned`),
so that validation and the test report score log p(x | y)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .labels import (
    check_labels,
    check_takes_labels,
    choose_labelled,
    conditioned,
    joined,
    label_columns,
    labelled_rows,
    needs_labels,
)

LABELLED_MODELS = ("ssvae", "cvae")  # built-in models built with the data's class count


def train_labels(data) -> torch.Tensor:
    """The training split's labels, checked (:func:`~ppl_vae.labels.check_labels`)."""
    return check_labels(data.train.labels, len(data.train), "training data")


def classes_of(labels: torch.Tensor) -> int:
    """The number of classes in checked labels (the largest class + 1), at least 2."""
    return max(int(labels.max()) + 1, 2)


def with_classes(spec: dict, data) -> dict:
    """``spec`` with the built-in labelled models' ``classes`` set from the data (when it has labels)."""
    if spec.get("model") not in LABELLED_MODELS or data.train.labels is None:
        return spec
    classes = classes_of(train_labels(data))
    return {
        **spec,
        "model_kwargs": {"classes": classes, **spec.get("model_kwargs", {})},
        "guide_kwargs": {"classes": classes, **spec.get("guide_kwargs", {})},
    }


@dataclass
class LabelledRun:
    """What training and scoring take: the pair (joined with the labels for a conditional model), the
    training labels as one-hot columns (None: none, or a conditional model's joined data), the held-out
    splits and the image shape for pictures (None where a row is not an image)."""

    model: Any
    guide: Any
    train_x: torch.Tensor
    train_y: torch.Tensor | None
    image_shape: tuple | None
    joined: bool = False
    classes: int = 0

    def summary(self, objective) -> dict | None:
        """What the result records: the labelled points and the classifier loss's weight."""
        if self.joined:
            return {"labelled": "all", "n_labelled": self.train_x.shape[0], "conditional": True}
        if self.train_y is None:
            return None
        n = int(labelled_rows(self.train_y).sum())
        return {"labelled": n, "classes": self.train_y.shape[-1], "aux_weight": getattr(objective, "aux_weight", None)}

    def eval_x(self, data, split: str, device) -> torch.Tensor:
        x = data.eval_x(split, device)
        if not self.joined:
            return x
        labels = check_labels(getattr(data, split).labels, x.shape[0], f"{split} data")
        return joined(x, labels, self.classes)


def labelled_run(spec: dict, data, model, guide, train_x: torch.Tensor, seed: int) -> LabelledRun:
    """The run's pair and data with the labels ``spec["labelled"]`` asks for (module docstring)."""
    asked = spec.get("labelled")
    conditional = needs_labels(model)
    if conditional and asked != "all":
        raise ValueError("this model is conditioned on each point's label (it models p(x | y)): train it with --labelled all")
    if asked is None:
        return LabelledRun(model, guide, train_x, None, data.image_shape)
    check_takes_labels(model, guide)
    labels = train_labels(data)
    classes = classes_of(labels)
    if conditional:
        pair = conditioned(model, guide, data.x_dim)
        return LabelledRun(*pair, joined(train_x, labels, classes), None, None, joined=True, classes=classes)
    mask = choose_labelled(labels, None if asked == "all" else int(asked), seed)
    return LabelledRun(model, guide, train_x, label_columns(labels, mask, classes), data.image_shape)
