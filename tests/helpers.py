"""Small models shared by the tests."""

import pyro
import pyro.distributions as dist
import torch
from ppl_vae.models import LinearGaussian
from torch import nn


def correlated_linear_gaussian(x_dim=6, z_dim=2, seed=0):
    return LinearGaussian(x_dim=x_dim, z_dim=z_dim, sigma=0.7, learn=False, seed=seed)


class ShiftedPosteriorGuide(nn.Module):
    """The exact posterior's mean, but diagonal and with inflated scale: a mismatched, fixed guide."""

    def __init__(self, lg: LinearGaussian, inflate=1.5, shift=0.3):
        super().__init__()
        self.lg, self.inflate, self.shift = lg, inflate, shift

    def forward(self, x):
        post = self.lg.posterior(x)
        scale = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt() * self.inflate
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(post.loc + self.shift, scale).to_event(1))


def subsampled(lg: LinearGaussian, x: torch.Tensor, idx: torch.Tensor, guide=None):
    """Model and guide over the whole data set x that look at the minibatch idx (scale N/B)."""

    def model():
        with pyro.plate("data", x.shape[0], subsample=idx):
            zeros = x.new_zeros(lg.z_dim)
            z = pyro.sample("z", dist.Normal(zeros, zeros + 1).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x[idx])

    def exact():
        with pyro.plate("data", x.shape[0], subsample=idx):
            pyro.sample("z", lg.posterior(x[idx]))

    return model, guide or exact
