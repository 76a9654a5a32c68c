"""Pictures read from traces: reconstructions and samples for any model with an observed site.

The mean of the observed site's distribution is what is drawn, so no likelihood is
special-cased here: the model says what p(x | z) is.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyro.poutine as poutine
import torch

from .sites import site_terms


def _observed_mean(trace) -> torch.Tensor:
    """Mean of the model's observation site: one released by ``uncondition`` if any (a
    conditioned latent is then 'observed' too), else the observed one."""
    sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
    for released_only in (True, False):
        for site in sites:
            if site["infer"].get("was_observed") or (not released_only and site["is_observed"]):
                return site["fn"].mean
    raise ValueError("the model has no observed site to draw")


@torch.no_grad()
def reconstruct(model, guide, x: torch.Tensor) -> torch.Tensor:
    """Mean of p(x | z) at one z ~ q(z | x), shape like ``x``."""
    terms = site_terms(model, guide, x, num_particles=1)
    return _observed_mean(terms.model_trace).reshape(x.shape)


@torch.no_grad()
def sample(model, like: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of p(x | z) at n draws z ~ p(z): the model run with its observation released.

    ``like`` is any data tensor; only its shape per point, dtype and device are used.
    """
    if hasattr(model, "sample_images"):  # models with their own sampler (the ACN chain)
        return model.sample_images(n, like).reshape((n,) + like.shape[1:])
    dummy = like.new_zeros((n,) + like.shape[1:])
    trace = poutine.trace(poutine.uncondition(model)).get_trace(dummy)
    return _observed_mean(trace).reshape(dummy.shape)


def save_grid(images: torch.Tensor, image_shape: tuple[int, ...], path: str | Path, nrow: int | None = None) -> Path:
    """Tile flattened images ``(N, prod(image_shape))`` into one PNG (grey levels in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images.detach().float().cpu().clamp(0, 1).reshape(-1, *image_shape)
    if images.dim() == 4:  # (N, C, H, W): colour pictures for 3 channels, the first channel otherwise
        images = images.permute(0, 2, 3, 1) if images.shape[1] == 3 else images[:, 0]
    n = images.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    h, w = images.shape[1:3]
    canvas = torch.ones((ncol * (h + 1) + 1, nrow * (w + 1) + 1) + tuple(images.shape[3:]))
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = images[i]
    path = Path(path)
    plt.imsave(path, canvas.numpy(), cmap="gray", vmin=0, vmax=1)
    return path


def save_pictures(model, guide, x: torch.Tensor, image_shape, out: str | Path, n: int = 32) -> dict[str, str]:
    """``reconstructions.png`` (odd rows data, even rows reconstructions) and ``samples.png``."""
    out = Path(out)
    x = x[:n]
    rec = reconstruct(model, guide, x)
    rows = []
    for start in range(0, x.shape[0], 8):
        rows += [x[start : start + 8], rec[start : start + 8]]
    paths = {
        "reconstructions": save_grid(torch.cat(rows), image_shape, out / "reconstructions.png", nrow=8),
        "samples": save_grid(sample(model, x, 64), image_shape, out / "samples.png", nrow=8),
    }
    return {k: str(v) for k, v in paths.items()}


@torch.no_grad()
def decode_at(model, site: str, z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of p(x | z) with latent site ``site`` fixed to ``z`` (N, d): the model run with that
    site conditioned and its observation released."""
    dummy = like.new_zeros((z.shape[0],) + like.shape[1:])
    conditioned = poutine.condition(poutine.uncondition(model), data={site: z})
    trace = poutine.trace(conditioned).get_trace(dummy)
    return _observed_mean(trace).reshape(dummy.shape)


def save_traversals(model, site: str, z_dim: int, dims, like, image_shape, path, steps: int = 9, span: float = 3.0) -> Path:
    """One row per latent dimension in ``dims``: that coordinate from -span to span, the others 0."""
    rows = []
    grid = torch.linspace(-span, span, steps, device=like.device)
    for d in dims:
        z = torch.zeros(steps, z_dim, device=like.device)
        z[:, d] = grid
        rows.append(decode_at(model, site, z, like))
    return save_grid(torch.cat(rows), image_shape, path, nrow=steps)


def save_aggregate_view(codes: torch.Tensor, labels, path) -> Path:
    """Aggregate posterior in 2-D (its first two principal components when d > 2), coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = codes.detach().float().cpu()
    if c.shape[1] > 2:
        c = c - c.mean(0)
        _, _, v = torch.pca_lowrank(c, q=2, center=False)
        c = c @ v[:, :2]
        axes = ("PC 1", "PC 2")
    else:
        axes = ("z 1", "z 2")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if c.shape[1] == 1:
        c = torch.cat([c, torch.zeros_like(c)], 1)
    if labels is None:  # a data set without labels: one colour
        ax.scatter(c[:, 0], c[:, 1], s=6)
    else:
        scatter = ax.scatter(c[:, 0], c[:, 1], s=6, c=labels.cpu().numpy(), cmap="tab10")
        fig.colorbar(scatter, ax=ax, label="label")
    ax.set(xlabel=axes[0], ylabel=axes[1], title="aggregate posterior q(z)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def save_iwae_curve(iwae_by_k: dict, elbo: float, path) -> Path:
    """The IWAE bound against K (log scale), with the ELBO for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(iwae_by_k)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(ks, [iwae_by_k[k] for k in ks], "o-", label="IWAE bound")
    ax.axhline(elbo, color="grey", ls="--", label="ELBO")
    ax.set_xscale("log")
    ax.set(xlabel="K (importance samples)", ylabel="nats per point", title="IWAE bound vs K (test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
