r"""Data-informed initialisation of a decoder's output layer, before the first step.

.. math::

    b \leftarrow g^{-1}(\bar x) - (\mathrm{dec}(z_0) - b), \qquad \bar x = \tfrac1N \textstyle\sum_n x_n

so that p(x | z_0) at the prior's centre z_0 = 0 has the training data's per-dimension mean
:math:`\bar x`: for a Bernoulli decoder the bias is (up to the rest of the network's output at
z = 0, a few hundredths at PyTorch's default initialisation) the marginal log-odds, as VAE
implementations commonly start it (Burda et al.'s among them); for a Gaussian decoder the
per-dimension mean. The package's models call it through their ``init_from_data`` (the trainer
does, before the first step of a new run, unless ``--no-data-init``); a user's model may call it
the same way (see README, "Data-informed initialisation").
"""

from __future__ import annotations

import torch
from torch import nn

from ppl_vae.registry import LIKELIHOODS

from .likelihoods import make_likelihood


@torch.no_grad()
def init_output_bias(
    decoder: nn.Module,
    x_train: torch.Tensor,
    z_dim: int,
    likelihood: nn.Module | str = "bernoulli",
    layer: nn.Module | None = None,
) -> str:
    """Set ``layer``'s bias (default: the decoder's last ``nn.Linear``) so that the decoder's
    distribution at z = 0 has the mean of ``x_train`` (intensities, for dynamically binarised
    data: the binarised pixels' mean), per output dimension. ``likelihood`` is one of the
    package's likelihood modules or its name (``bernoulli``, ``continuous_bernoulli``,
    ``gaussian``). Returns one line saying what was set, for the run's record."""
    if isinstance(likelihood, str):
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"init_output_bias: {LIKELIHOODS.unknown(likelihood)}")
        name, likelihood = likelihood, make_likelihood(likelihood, 1)
    else:
        name = type(likelihood).__name__
    if not hasattr(likelihood, "output_for_mean"):
        raise ValueError(f"init_output_bias: the likelihood {name} cannot invert its mean (it has no output_for_mean)")
    layer = layer if layer is not None else _last_linear(decoder)
    per_dim = getattr(likelihood, "outputs_per_dim", 1)
    if layer.bias is None or layer.bias.numel() != x_train[0].numel() * per_dim:
        size = 0 if layer.bias is None else layer.bias.numel()
        raise ValueError(
            f"init_output_bias: the output layer's bias has {size} elements and the data {x_train[0].numel()} dimensions: "
            "it needs one bias per output dimension (pass layer=)"
        )
    flat = x_train.reshape(x_train.shape[0], -1)
    mean = (flat.sum(0, dtype=torch.float64) / flat.shape[0]).to(layer.bias)
    layer.bias.zero_()
    z0 = torch.zeros(1, z_dim, dtype=layer.bias.dtype, device=layer.bias.device)
    rest = decoder(z0).reshape(-1)  # what the layers below add at z = 0
    if rest.numel() != mean.numel() * per_dim:
        raise ValueError(f"init_output_bias: the decoder gives {rest.numel()} outputs and the data has {mean.numel()} dimensions")
    layer.bias.copy_(likelihood.output_for_mean(mean) - rest)
    return f"{name} decoder: output bias set so that p(x | z=0) has the training data's per-dimension mean (clipped where the likelihood cannot reach it)"


def _last_linear(decoder: nn.Module) -> nn.Module:
    linears = [m for m in decoder.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("init_output_bias: the decoder has no nn.Linear layer: pass its output layer as layer=")
    return linears[-1]
