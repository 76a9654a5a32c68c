r"""Linear-Gaussian latent model: the one VAE whose log p(x) and posterior are exact.

.. math::

    z \sim \mathcal{N}(0, I_d), \quad x \mid z \sim \mathcal{N}(Wz + b, \sigma^2 I_D)
    \;\Rightarrow\; x \sim \mathcal{N}(b,\ WW^\top + \sigma^2 I_D),
    \quad z \mid x \sim \mathcal{N}\big(\Lambda^{-1} W^\top (x - b) / \sigma^2,\ \Lambda^{-1}\big),
    \ \Lambda = I_d + W^\top W / \sigma^2

It is the reference for testing estimators: every importance weight under the
exact posterior equals p(x).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class LinearGaussian(nn.Module):
    """Probabilistic PCA as a Pyro model, with :meth:`log_marginal` and :meth:`posterior` exact.

    Args:
        x_dim, z_dim: data and latent dimensions.
        W, b, sigma: optional fixed values (W is ``(x_dim, z_dim)``); random otherwise.
        learn: whether W, b and sigma are trainable parameters.
    """

    def __init__(self, x_dim=5, z_dim=2, W=None, b=None, sigma=1.0, learn=True, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        W = torch.randn(x_dim, z_dim, generator=gen) if W is None else torch.as_tensor(W, dtype=torch.float)
        b = torch.randn(x_dim, generator=gen) if b is None else torch.as_tensor(b, dtype=torch.float)
        if W.shape != (x_dim, z_dim) or b.shape != (x_dim,):
            raise ValueError(f"W must be ({x_dim}, {z_dim}) and b ({x_dim},); got {tuple(W.shape)}, {tuple(b.shape)}")
        self.x_dim, self.z_dim = x_dim, z_dim
        log_sigma = torch.tensor(math.log(sigma))
        for name, value in (("W", W), ("b", b), ("log_sigma", log_sigma)):
            if learn:
                self.register_parameter(name, nn.Parameter(value.clone()))
            else:  # fixed values are buffers, so Pyro does not try to register them
                self.register_buffer(name, value.clone())

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("model", self)
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(self.z_dim)
            z = pyro.sample("z", dist.Normal(zeros, zeros + 1.0).to_event(1))
            loc = z @ self.W.T + self.b
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def marginal(self) -> dist.MultivariateNormal:
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.x_dim, device=self.W.device)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` per data point, shape ``(B,)``."""
        return self.marginal().log_prob(x)

    def posterior_precision(self) -> torch.Tensor:
        """Λ = I + WᵀW / σ², the same for every x."""
        eye = torch.eye(self.z_dim, device=self.W.device)
        return eye + self.W.T @ self.W / self.sigma**2

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        """Exact ``p(z | x)`` with batch shape ``(B,)``."""
        precision = self.posterior_precision()
        cov = torch.linalg.inv(precision)
        loc = ((x - self.b) @ self.W / self.sigma**2) @ cov
        return dist.MultivariateNormal(loc, precision_matrix=precision.expand(x.shape[0], -1, -1))

    def exact_guide(self, x: torch.Tensor) -> None:
        """A guide that is the exact posterior: every importance weight equals p(x)."""
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))

    def sample_data(self, n: int, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator(device=self.W.device).manual_seed(seed)
        with torch.no_grad():
            z = torch.randn(n, self.z_dim, generator=gen, device=self.W.device)
            eps = torch.randn(n, self.x_dim, generator=gen, device=self.W.device)
            return z @ self.W.T + self.b + self.sigma * eps
