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
    for site in trace.nodes.values():
        if site["type"] == "sample" and (site["is_observed"] or site["infer"].get("was_observed")):
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
    n = images.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    h, w = image_shape
    canvas = torch.ones(ncol * (h + 1) + 1, nrow * (w + 1) + 1)
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
