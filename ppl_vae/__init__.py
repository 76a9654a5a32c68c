"""ppl_vae: build, train, compare and honestly score variational autoencoders in Pyro.

Models are Pyro model functions and guides are Pyro guides, each with its data in
one ``pyro.plate("data")``; see the README for the contract.

The names below load on first use (PEP 562), so ``import ppl_vae`` and ``ppl-vae --help``
do not pay for torch and Pyro.
"""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {
    "DataError": "data",
    "load_dataset": "data",
    "LogPx": "evaluate",
    "elbo_terms": "evaluate",
    "log_px": "evaluate",
    "OBJECTIVES": "objectives",
    "get_objective": "objectives",
    "ContractError": "sites",
    "site_terms": "sites",
    "TrainConfig": "train",
    "Trainer": "train",
    "TrainingError": "train",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'ppl_vae' has no attribute '{name}'")
    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
