"""Generative models as Pyro model functions, by name (installed as ``ppl_vae.models``)."""

from ppl_vae.registry import LIKELIHOODS, MODELS, PRIORS

from .data_init import init_output_bias
from .hierarchical import HierarchicalVAE
from .likelihoods import make_likelihood
from .linear_gaussian import LinearGaussian
from .priors import ACNPrior, FlowPrior, NormalPrior, VampPrior
from .sbn import SigmoidBeliefNet
from .vae import VAE

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
    "SigmoidBeliefNet",
    "VampPrior",
    "init_output_bias",
    "make_likelihood",
]
