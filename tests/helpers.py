"""Small models shared by the tests."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.models import VAE, LinearGaussian


class StepClock:
    """A clock that moves ``tick`` seconds each time it is read: a time limit on it counts the trainer's
    readings (one per step), not the machine's speed."""

    def __init__(self, tick: float = 1.0):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


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


class AffineGuide(nn.Module):
    """q(z|x) = N(M x + c, diag(s^2)) with learnable M, c, log s: exact for a diagonal posterior."""

    def __init__(self, x_dim, z_dim, lg: LinearGaussian | None = None):
        super().__init__()
        self.M = nn.Parameter(0.1 * torch.randn(z_dim, x_dim))
        self.c = nn.Parameter(torch.zeros(z_dim))
        self.log_s = nn.Parameter(torch.zeros(z_dim))
        if lg is not None:  # start at the exact posterior (only exact when it is diagonal)
            with torch.no_grad():
                cov = torch.linalg.inv(lg.posterior_precision())
                self.M.copy_(cov @ lg.W.T / lg.sigma**2)
                self.c.copy_(-(self.M @ lg.b))
                self.log_s.copy_(cov.diagonal().sqrt().log())

    def forward(self, x):
        pyro.module("guide", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.M.T + self.c, self.log_s.exp()).to_event(1))


def diagonal_posterior_linear_gaussian(x_dim=6, z_dim=3, seed=0):
    """W with orthogonal columns, so the exact posterior is diagonal."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(x_dim, z_dim, generator=gen))
    W = q * torch.tensor([2.0, 1.0, 0.5][:z_dim])
    return LinearGaussian(x_dim, z_dim, W=W, sigma=0.8, seed=seed)


class PoisonedDecoderVAE(VAE):
    """Its decoder emits NaN at optimizer step ``bad_step`` (training calls on a batch of 50 with
    gradients: one per step), and at every call after it if ``persistent``."""

    def __init__(self, bad_step, persistent=False):
        super().__init__(x_dim=64, z_dim=3, hidden=(16,))
        self.calls, self.bad_step, self.persistent, self.broken = 0, bad_step, persistent, False

    def forward(self, x):
        step_call = self.training and torch.is_grad_enabled() and x.shape[0] == 50
        self.calls += int(step_call)
        poisoned = self.broken or (step_call and self.calls == self.bad_step)
        self.broken = poisoned and self.persistent  # a persistent fault shows again when re-run
        pyro.module("model", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x))
            logits = self.decoder(z)
            if poisoned:
                logits = logits + torch.tensor(float("nan"))
            pyro.sample("x", self.likelihood(logits), obs=x)


class TwoSiteLinearGaussian(nn.Module):
    """A linear-Gaussian model with its latent split into two sites, z = (a, b), and the exact
    posterior as a two-site guide: a ~ p(a | x), then b ~ p(b | a, x) (a hierarchy's shape, with
    the joint posterior, its correlations and I(x; z) = ½ log det Λ in closed form)."""

    def __init__(self, lg: LinearGaussian, split: int = 1):
        super().__init__()
        self.lg, self.split = lg, split

    def model(self, x):
        lg, s = self.lg, self.split
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.Normal(x.new_zeros(s), 1.0).to_event(1))
            b = pyro.sample("b", dist.Normal(x.new_zeros(lg.z_dim - s), 1.0).to_event(1))
            z = torch.cat([a, b.expand(a.shape[:-1] + b.shape[-1:])], -1)
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)

    def guide(self, x):
        post = self.lg.posterior(x)
        cov, mu, s = torch.linalg.inv(self.lg.posterior_precision()), post.loc, self.split
        gain = cov[s:, :s] @ torch.linalg.inv(cov[:s, :s])  # E[b | a] = mu_b + gain (a - mu_a)
        cond_cov = cov[s:, s:] - gain @ cov[:s, s:]
        with pyro.plate("data", x.shape[0]):
            a = pyro.sample("a", dist.MultivariateNormal(mu[:, :s], covariance_matrix=cov[:s, :s]))
            loc_b = mu[:, s:] + (a - mu[:, :s]) @ gain.T
            pyro.sample("b", dist.MultivariateNormal(loc_b, covariance_matrix=cond_cov))
