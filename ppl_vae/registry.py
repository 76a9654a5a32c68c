"""Every name the package offers, in one place: the registries themselves, free of torch and Pyro.

A registry maps a name to what it builds. Built-in entries are written as
``"module:attribute"`` references (optionally with fixed keyword arguments) and imported on first
use, so ``ppl-vae --help`` lists every name without loading torch; ``register`` adds an object
directly (a user's or a test's own entry). The command line, ``get_objective``, ``build_pair``
and ``load_dataset`` all read these tables, so a name added here is known everywhere.

>>> from ppl_vae.registry import GUIDES
>>> "iaf" in GUIDES
True
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Any


class Registry(Mapping):
    """Names of one kind (``kind``: "model", "guide", ...) to the objects they build, resolved lazily.

    An entry is an object, a ``"module:attribute"`` reference, or ``("module:attribute", kwargs)``
    (a partial application of the referenced callable).
    """

    def __init__(self, kind: str, entries: dict[str, Any]):
        self.kind = kind
        self._entries = dict(entries)
        self._resolved: dict[str, Any] = {}

    def __getitem__(self, name: str):
        if name not in self._entries:
            raise KeyError(self.unknown(name))
        if name not in self._resolved:
            self._resolved[name] = _resolve(self._entries[name])
        return self._resolved[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def register(self, name: str, obj) -> None:
        """Add (or replace) an entry: ``obj`` itself or a reference as in the class docstring."""
        self._entries[name] = obj
        self._resolved.pop(name, None)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self._resolved.pop(name, None)

    def unknown(self, name: str) -> str:
        return f"unknown {self.kind} '{name}'; known: {', '.join(self)}"


def _resolve(entry):
    if isinstance(entry, tuple):
        target, kwargs = entry
        return functools.partial(_resolve(target), **kwargs)
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        return getattr(import_module(module), attribute)
    return entry


DATASETS = Registry(
    "dataset",
    {
        "mnist5k": "ppl_vae.data:load_mnist5k",
        "digits": "ppl_vae.data:load_digits",
        "mnist": ("ppl_vae.data:load_local_28x28", {"name": "mnist"}),
        "fashion-mnist": ("ppl_vae.data:load_local_28x28", {"name": "fashion-mnist"}),
        "binarized-mnist": "ppl_vae.data:load_binarized_mnist",
    },
)
LOCAL_DATASETS = ("mnist", "fashion-mnist", "binarized-mnist")  # the named data sets read from --data-dir
BINARIZE_MODES = ("dynamic", "fixed", "none")
PAIRED_NAMES = ("sbn", "ssvae", "cvae")  # a built-in model that goes with the guide of its own name
MODELS = Registry(
    "model",
    {
        "vae": "ppl_vae.models.vae:VAE",
        "hierarchical": "ppl_vae.models.hierarchical:HierarchicalVAE",
        "linear_gaussian": "ppl_vae.models.linear_gaussian:LinearGaussian",
        "sbn": "ppl_vae.models.sbn:SigmoidBeliefNet",
        "ssvae": "ppl_vae.models.labelled:SSVAE",
        "cvae": "ppl_vae.models.labelled:CVAE",
    },
)
_FLOW_GUIDE = "ppl_vae.guides.flows:FlowGuide"
GUIDES = Registry(
    "guide",
    {
        "mean_field": "ppl_vae.guides.mean_field:MeanFieldGuide",
        "full_cov": "ppl_vae.guides.full_cov:FullCovGuide",
        "hierarchical": "ppl_vae.guides.hierarchical:HierarchicalGuide",
        "deterministic": "ppl_vae.guides.deterministic:DeterministicGuide",
        "iaf": (_FLOW_GUIDE, {"flow": "iaf"}),
        "planar": (_FLOW_GUIDE, {"flow": "planar"}),
        "radial": (_FLOW_GUIDE, {"flow": "radial"}),
        "householder": (_FLOW_GUIDE, {"flow": "householder"}),
        "hierarchical_iaf": ("ppl_vae.guides.hierarchical:HierarchicalGuide", {"flow": "iaf"}),
        "sbn": "ppl_vae.guides.sbn:SBNGuide",
        "ssvae": "ppl_vae.guides.labelled:SSVAEGuide",
        "ssvae_enum": ("ppl_vae.guides.labelled:SSVAEGuide", {"enumerate": True}),
        "cvae": "ppl_vae.guides.labelled:CVAEGuide",
    },
)
PRIORS = Registry(
    "prior",
    {
        "normal": "ppl_vae.models.priors:NormalPrior",
        "vamp": "ppl_vae.models.priors:VampPrior",
        "flow": "ppl_vae.models.priors:FlowPrior",
        "acn": "ppl_vae.models.priors:ACNPrior",
    },
)
LIKELIHOODS = Registry(
    "likelihood",
    {
        "bernoulli": "ppl_vae.models.likelihoods:Bernoulli",
        "gaussian": "ppl_vae.models.likelihoods:Gaussian",
        "continuous_bernoulli": "ppl_vae.models.likelihoods:ContinuousBernoulli",
        "categorical256": "ppl_vae.models.likelihoods:Categorical256",
    },
)
_F = "ppl_vae.objectives.factories"
OBJECTIVES = Registry(
    "objective",
    {
        "elbo": f"{_F}:elbo",
        "meanfield": f"{_F}:meanfield",
        "iwae": f"{_F}:iwae",
        "vr": f"{_F}:vr",
        "dreg": f"{_F}:dreg",
        "stl": f"{_F}:stl",
        "enum": f"{_F}:enum",
        "tracegraph": f"{_F}:tracegraph",
        "vimco": f"{_F}:vimco",
        "rws": f"{_F}:rws",
        "jit_elbo": f"{_F}:jit_elbo",
        "jit_meanfield": f"{_F}:jit_meanfield",
        "infovae": "ppl_vae.objectives.aggregate:infovae",
        "mmd": "ppl_vae.objectives.aggregate:infovae",
        "wae_mmd": "ppl_vae.objectives.aggregate:wae_mmd",
        "swae": "ppl_vae.objectives.aggregate:swae",
        "cwae": "ppl_vae.objectives.aggregate:cwae",
        "radial": "ppl_vae.objectives.aggregate:radial",
        "sparse_ae": "ppl_vae.objectives.aggregate:sparse_ae",
    },
)
