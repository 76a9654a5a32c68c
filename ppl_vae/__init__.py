"""ppl_vae: build, train, compare and honestly score variational autoencoders in Pyro.

Models are Pyro model functions and guides are Pyro guides, each with its data in
one ``pyro.plate("data")``; see the README for the contract.
"""

__version__ = "0.1.0"

from .data import DataError, load_dataset
from .evaluate import LogPx, elbo_terms, log_px
from .objectives import OBJECTIVES, get_objective
from .sites import ContractError, site_terms
from .train import TrainConfig, Trainer, TrainingError

__all__ = [
    "OBJECTIVES",
    "ContractError",
    "DataError",
    "LogPx",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "elbo_terms",
    "get_objective",
    "load_dataset",
    "log_px",
    "site_terms",
]
