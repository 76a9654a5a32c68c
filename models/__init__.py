"""Generative models as Pyro model functions, by name (installed as ``ppl_vae.models``)."""

from .hierarchical import HierarchicalVAE
from .likelihoods import LIKELIHOODS, make_likelihood
from .linear_gaussian import LinearGaussian
from .priors import PRIORS, ACNPrior, FlowPrior, NormalPrior, VampPrior
from .vae import VAE

MODELS = {"vae": VAE, "hierarchical": HierarchicalVAE, "linear_gaussian": LinearGaussian}

__all__ = [
    "LIKELIHOODS",
    "MODELS",
    "PRIORS",
    "VAE",
    "ACNPrior",
    "FlowPrior",
    "HierarchicalVAE",
    "LinearGaussian",
    "NormalPrior",
    "VampPrior",
    "make_likelihood",
]
