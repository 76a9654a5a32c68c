"""ppl_vae: build, train, compare and honestly score variational autoencoders in Pyro.

Models are Pyro model functions and guides are Pyro guides, each with its data in
one ``pyro.plate("data")``; see the README for the contract.

The names below load on first use (PEP 562), so ``import ppl_vae`` and ``ppl-vae --help``
do not pay for torch and Pyro.
"""

from importlib import import_module

__version__ = "0.1.0"

_WHERE = {
    "DataError": "pixels",
    "load_dataset": "data",
    "LogPx": "importance_sampling",
    "elbo_terms": "evaluate",
    "log_px": "importance_sampling",
    "OBJECTIVES": "objectives",
    "get_objective": "objectives",
    "ContractError": "sites",
    "site_terms": "sites",
    "TrainConfig": "config",
    "Trainer": "train",
    "TrainingError": "faults",
    "score": "scoring",
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
