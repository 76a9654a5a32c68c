r"""Labels for semi-supervised and conditional models: pairs written ``model(x, y=None)``,
``guide(x, y=None)`` (Pyro's semi-supervised VAE example), y one-hot.

A training batch carries each point's label one-hot after its pixels, a row of zeros for an
unlabelled point (binarising the batch leaves 0/1 columns as they are). :class:`LabelledObjective`
splits it: the labelled points train on the objective of ``model(x, y)``, ``guide(x, y)`` plus
the classifier's auxiliary loss (Kingma et al. 2014, M2), the others on ``model(x)``, ``guide(x)``:

.. math::

    \mathcal{L} = \sum_{l} -\mathcal{L}(x_l, y_l) - a \log q(y_l \mid x_l) + \sum_{u} -\mathcal{U}(x_u)

where q(y | x) is the distribution of the guide's site ``"y"`` when it is run without labels.
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch
from pyro import poutine

from .capture import module_of
from .hooks import InitialisedFromData
from .objectives.modifiers import Wrapping

LABEL_SITE = "y"  # the guide's site whose distribution is the classifier q(y | x)


def takes_labels(fn) -> bool:
    """Whether ``fn`` (a model or guide) takes a second positional argument, the labels."""
    if isinstance(fn, torch.nn.Module):  # the module's call takes *args: read forward's own signature
        fn = fn.forward
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in params) >= 2 or any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params)


def check_labels(labels, n: int, where: str) -> torch.Tensor:
    """``labels`` as integer classes 0..C-1, one per point of a split of ``n`` points (named in errors)."""
    if labels is None:
        raise ValueError(
            f"labels were asked for, but the {where} has none: give y_train (and y_test) in the --data .npz, "
            "or use a data set with labels (mnist, fashion-mnist, digits, mnist5k)"
        )
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"the {where} has {n} points and labels of shape {tuple(labels.shape)}: give one label per point")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(
            f"the {where}'s labels must be whole numbers (classes 0..C-1); found {labels[labels != labels.round()][0].item()}"
        )
    labels = labels.long()
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"the {where}'s labels must be classes 0..C-1; found {labels.min().item()}")
    return labels


def choose_labelled(labels: torch.Tensor, per_class: int | None, seed: int) -> torch.Tensor:
    """A mask of the points whose labels are kept: ``per_class`` of each class drawn with ``seed``
    (all points for None)."""
    if per_class is None:
        return torch.ones(labels.shape[0], dtype=torch.bool)
    if per_class < 1:
        raise ValueError(f"--labelled must be a positive number of labelled points per class (or 'all'), got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(labels.shape[0], dtype=torch.bool)
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(-1)
        if members.numel() < per_class:
            raise ValueError(f"--labelled {per_class} per class, but class {c} has only {members.numel()} training points")
        mask[members[torch.randperm(members.numel(), generator=generator)[:per_class]]] = True
    return mask


def one_hot(labels: torch.Tensor, classes: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """Classes as one-hot rows, float (of ``like``'s dtype and device where given)."""
    if like is not None:
        return torch.nn.functional.one_hot(labels.to(like.device), classes).to(like.dtype)
    return torch.nn.functional.one_hot(labels, classes).float()


def labelled_rows(y: torch.Tensor) -> torch.Tensor:
    """Which rows of one-hot label columns hold a label (an unlabelled point's row is zeros)."""
    return y.sum(-1) > 0


def label_columns(labels: torch.Tensor, mask: torch.Tensor, classes: int) -> torch.Tensor:
    """One-hot rows for the kept labels, zeros for the others: what follows the pixels in a batch."""
    return one_hot(labels, classes) * mask.unsqueeze(-1)


def check_takes_labels(model, guide) -> None:
    """Both functions take labels as a second argument, or an error says how to write them."""
    for fn, name in ((model, "model"), (guide, "guide")):
        if not takes_labels(fn):
            raise ValueError(
                f"labels were given, but the {name} takes only the data: write it {name}(x, y=None) (y one-hot "
                "when given, None for unlabelled points), as Pyro's semi-supervised VAE example does"
            )


def check_labelled_pair(model, guide, x: torch.Tensor, y: torch.Tensor) -> None:
    """Run the pair once with labels, naming them if it fails."""
    check_takes_labels(model, guide)
    try:
        guide_trace = poutine.trace(guide).get_trace(x, y)
        poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    except Exception as err:  # a user's code: any error, named with the labels' shape
        raise ValueError(
            f"the model and guide fail when given labels y (one-hot, shape {tuple(y.shape)}) with data of shape "
            f"{tuple(x.shape)}: {type(err).__name__}: {err}"
        ) from err


def classifier(guide, x: torch.Tensor):
    """q(y | x): the distribution of the guide's site ``"y"`` run without labels, or None if it has none
    (or one that is not a categorical distribution over classes)."""
    trace = poutine.trace(guide).get_trace(x)
    site = trace.nodes.get(LABEL_SITE)
    if site is None or site["type"] != "sample" or site["is_observed"]:
        return None
    categorical = (torch.distributions.Categorical, torch.distributions.OneHotCategorical)
    return site["fn"] if isinstance(site["fn"], categorical) else None  # a site 'y' of another kind is no classifier


def class_log_prob(q, y_onehot: torch.Tensor) -> torch.Tensor:
    """log q(y | x) per point, for a one-hot or an integer-valued classifier."""
    if q.event_shape == y_onehot.shape[-1:]:
        return q.log_prob(y_onehot)
    return q.log_prob(y_onehot.argmax(-1))


class LabelledObjective(Wrapping):
    """``objective`` on batches that carry one-hot labels after ``x_dim`` pixel columns (module
    docstring); ``aux_weight`` weighs the classifier's loss per labelled point. Batches of pixels
    only (validation, scoring) go to ``objective`` as they are."""

    def __init__(self, objective, x_dim: int, aux_weight: float):
        self.objective, self.x_dim, self.aux_weight = objective, int(x_dim), float(aux_weight)

    def _parts(self, method, model, guide, batch: torch.Tensor, aux):
        if batch.shape[-1] == self.x_dim:
            return method(model, guide, batch)
        x, y = batch[..., : self.x_dim], batch[..., self.x_dim :]
        labelled = labelled_rows(y)
        total = 0.0
        if labelled.any():
            with warnings.catch_warnings():  # given y, a pair may have nothing left to enumerate: expected here
                warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites configured")
                total = total + method(model, guide, x[labelled], y[labelled])
            total = total + aux(guide, x[labelled], y[labelled])
        if not labelled.all():
            total = total + method(model, guide, x[~labelled])
        return total

    def _aux(self, guide, x, y) -> torch.Tensor:
        if self.aux_weight == 0.0:
            return torch.zeros((), device=x.device)
        with poutine.block(hide_types=["sample"]):  # its draws stay out of any enclosing trace; params do not
            q = classifier(guide, x)
        if q is None:
            return torch.zeros((), device=x.device)
        return -self.aux_weight * class_log_prob(q, y).sum()

    def differentiable_loss(self, model, guide, batch, *args, **kwargs) -> torch.Tensor:
        return self._parts(self.objective.differentiable_loss, model, guide, batch, self._aux)

    def loss(self, model, guide, batch, *args, **kwargs) -> float:
        def aux(guide, x, y):
            with torch.no_grad():
                return self._aux(guide, x, y).item()

        return float(self._parts(self.objective.loss, model, guide, batch, aux))

    def __repr__(self) -> str:
        return f"LabelledObjective({self.objective!r}, aux_weight={self.aux_weight:g})"


def kingma_aux_weight(n_points: int, n_labelled: int) -> float:
    """Kingma et al. (2014)'s alpha = 0.1 N on the mean classification loss over the labelled points,
    i.e. 0.1 N / N_labelled per labelled point."""
    return 0.1 * n_points / max(n_labelled, 1)


@torch.no_grad()
def classification_error(guide, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> dict | None:
    """The test error of the classifier q(y | x) (its most probable class) with its binomial SE,
    or None when the guide has no site ``"y"``."""
    wrong, n = 0, 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], labels[start : start + batch_size].to(x.device)
        q = classifier(guide, xb)
        if q is None:
            return None
        wrong += (q.probs.argmax(-1) != yb).sum().item()
        n += xb.shape[0]
    error = wrong / n
    return {"classification_error": error, "classification_error_se": math.sqrt(error * (1 - error) / n), "classification_n": n}


class Conditioned(torch.nn.Module):
    """``fn(x, y)`` run as ``fn(xy)``, where each row of ``xy`` holds a point's ``x_dim`` pixels then
    its one-hot label: a conditional model or guide seen as one of x alone, so training, validation
    and log p(x | y) take it as they take any pair (see :func:`conditioned`)."""

    def __init__(self, fn, x_dim: int):
        super().__init__()
        self.inner = module_of(fn)  # a registered submodule: .to(device), train() and buffers reach it
        self.fn, self.x_dim = fn, int(x_dim)

    @property
    def observed_width(self) -> int:
        """The values per row that are data (the rest are the label columns it is conditioned on)."""
        return self.x_dim

    def forward(self, xy: torch.Tensor) -> None:
        return self.fn(xy[..., : self.x_dim], xy[..., self.x_dim :])

    def init_from_data(self, xy: torch.Tensor) -> str:
        if not isinstance(self.inner, InitialisedFromData):
            return "not applied: the model defines no init_from_data (see ppl_vae.models.init_output_bias)"
        return self.inner.init_from_data(xy[..., : self.x_dim])


def conditioned(model, guide, x_dim: int):
    """The pair of a conditional model as one of the joined data ``cat([x, one_hot(y)], -1)``:
    ``log_px(*conditioned(model, guide, D), xy)`` is log p(x | y)."""
    return Conditioned(model, x_dim), Conditioned(guide, x_dim)


def needs_labels(model) -> bool:
    """A model that cannot run without its labels (``needs_labels = True``: the conditional VAE)."""
    return bool(getattr(module_of(model) or model, "needs_labels", False))


def label_args(model, x: torch.Tensor) -> tuple:
    """``(x,)``, or ``(x, y)`` with every point in class 0 for a model that needs labels: enough to
    create its parameters (restoring a checkpoint)."""
    if not needs_labels(model):
        return (x,)
    classes = getattr(module_of(model) or model, "classes", None)
    if classes is None:
        raise ValueError("a model that needs labels (needs_labels = True) must say how many: set its attribute classes")
    return (x, one_hot(x.new_zeros(x.shape[0], dtype=torch.long), classes, like=x))


def joined(x: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``cat([x, one_hot(labels)], -1)``: the data of a :func:`conditioned` pair."""
    return torch.cat([x, one_hot(labels, classes, like=x)], -1)


__all__ = [
    "LABEL_SITE",
    "Conditioned",
    "conditioned",
    "joined",
    "needs_labels",
    "LabelledObjective",
    "check_labelled_pair",
    "check_labels",
    "choose_labelled",
    "class_log_prob",
    "classification_error",
    "classifier",
    "kingma_aux_weight",
    "label_args",
    "label_columns",
    "labelled_rows",
    "one_hot",
    "takes_labels",
]
