"""Generative models as Pyro model functions, by name (installed as ``ppl_vae.models``)."""

from .likelihoods import LIKELIHOODS, make_likelihood
from .linear_gaussian import LinearGaussian
from .vae import VAE

MODELS = {"vae": VAE, "linear_gaussian": LinearGaussian}

__all__ = ["LIKELIHOODS", "MODELS", "VAE", "LinearGaussian", "make_likelihood"]
