"""Pictures read from traces: reconstructions and samples for any model with an observed site.

The mean of the observed site's distribution is what is drawn (one draw where it has no
closed-form mean, a PixelCNN's), so no likelihood is special-cased here: the model says what
p(x | z) is.
"""

from __future__ import annotations

import math
from pathlib import Path

import pyro.poutine as poutine
import torch

from .hooks import SamplesImages
from .sites import site_terms


def _observed(trace) -> tuple[torch.Tensor, bool]:
    """Mean of the model's observation site, or one draw where its distribution has no mean (an
    autoregressive likelihood: PixelCNN), and whether it is a draw: a site released by
    ``uncondition`` if any (a conditioned latent is then 'observed' too), else the observed one."""
    sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
    for released_only in (True, False):
        for site in sites:
            if site["infer"].get("was_observed") or (not released_only and site["is_observed"]):
                try:
                    return site["fn"].mean, False
                except NotImplementedError:
                    return site["fn"].sample(), True
    raise ValueError("the model has no observed site to draw")


def _shown(drawn: bool) -> str:
    return "one draw of x ~ p(x | z)" if drawn else "mean of p(x | z)"


def reconstruct(model, guide, x: torch.Tensor) -> torch.Tensor:
    """Mean of p(x | z) (one draw where it has none) at one z ~ q(z | x), shape like ``x``."""
    return _reconstruction(model, guide, x)[0]


@torch.no_grad()
def _reconstruction(model, guide, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    terms = site_terms(model, guide, x, num_particles=1)
    images, drawn = _observed(terms.model_trace)
    return images.reshape(x.shape), drawn


def sample(model, like: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of p(x | z) (one draw where it has none) at n draws z ~ p(z): the model run with its observation released.

    ``like`` is any data tensor; only its shape per point, dtype and device are used.
    """
    return _samples(model, like, n)[0]


@torch.no_grad()
def _samples(model, like: torch.Tensor, n: int) -> tuple[torch.Tensor, bool]:
    if isinstance(model, SamplesImages):  # models with their own sampler (the ACN chain)
        drawn = getattr(getattr(model, "likelihood", None), "autoregressive", False)
        return model.sample_images(n, like).reshape((n,) + like.shape[1:]), drawn
    dummy = like.new_zeros((n,) + like.shape[1:])
    images, drawn = _observed(poutine.trace(poutine.uncondition(model)).get_trace(dummy))
    return images.reshape(dummy.shape), drawn


def _grid_canvas(images: torch.Tensor, image_shape, per_row: int) -> tuple[torch.Tensor, int, int]:
    """Tiles on a white canvas with one-pixel gaps: ``(canvas, rows, tile height, tile width)``."""
    images = images.detach().float().cpu().clamp(0, 1).reshape(-1, *image_shape)
    if images.dim() == 4:  # (N, C, H, W): colour pictures for 3 channels, the first channel otherwise
        images = images.permute(0, 2, 3, 1) if images.shape[1] == 3 else images[:, 0]
    n, (h, w) = images.shape[0], images.shape[1:3]
    rows = math.ceil(n / per_row)
    canvas = torch.ones((rows * (h + 1) + 1, per_row * (w + 1) + 1) + tuple(images.shape[3:]))
    for i in range(n):
        r, c = divmod(i, per_row)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = images[i]
    return canvas, rows, h, w


def save_grid(
    images: torch.Tensor,
    image_shape: tuple[int, ...],
    path: str | Path,
    nrow: int | None = None,
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    title: str | None = None,
) -> Path:
    """Tile flattened images ``(N, prod(image_shape))`` (grey levels in [0, 1]), ``nrow`` per row,
    into one PNG, with a label per row and per column and a title where given.

    Readable at any N: each tile is drawn 0.3-1 inch wide (the grid at most about 12 inches),
    and never with fewer screen pixels than the image has.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_row = nrow or math.ceil(math.sqrt(images.shape[0]))
    canvas, rows, h, w = _grid_canvas(images, image_shape, per_row)
    tile = min(1.0, max(0.3, 12.0 / per_row))
    grid_w, grid_h = per_row * tile, rows * tile * h / w
    left = 1.1 if row_labels else 0.1
    top = 0.1 + (0.3 if title else 0.0) + (0.25 if col_labels else 0.0)
    fig_w, fig_h = max(grid_w + left + 0.1, 2.5), grid_h + top + 0.1
    dpi = min(400, max(100, math.ceil(canvas.shape[1] / grid_w)))
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((left / fig_w, 0.1 / fig_h, grid_w / fig_w, grid_h / fig_h))
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_xticks([1 + c * (w + 1) + w / 2 - 0.5 for c in range(per_row)] if col_labels else [])
    ax.set_yticks([1 + r * (h + 1) + h / 2 - 0.5 for r in range(rows)] if row_labels else [])
    if col_labels:
        ax.xaxis.tick_top()
        ax.set_xticklabels(col_labels[:per_row], fontsize=7)
    if row_labels:
        ax.set_yticklabels(row_labels[:rows], fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9, pad=14 if col_labels else 4)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def interleave_reconstructions(x: torch.Tensor, rec: torch.Tensor, per_row: int = 8) -> tuple[torch.Tensor, list[str]]:
    """Rows of ``per_row`` data images, each followed by their reconstructions; one label per row."""
    rows, labels = [], []
    for start in range(0, x.shape[0], per_row):
        rows += [x[start : start + per_row], rec[start : start + per_row]]
        labels += ["data", "reconstruction"]
    return torch.cat(rows), labels


def save_samples(model, like: torch.Tensor, n: int, image_shape, path) -> Path:
    """``n`` unconditional samples (means of p(x | z), or one draw each, z ~ p(z)) in one labelled grid."""
    images, drawn = _samples(model, like, n)
    return save_grid(images, image_shape, path, title=f"{n} samples: {_shown(drawn)} at z ~ p(z)")


def save_pictures(model, guide, x: torch.Tensor, image_shape, out: str | Path, n: int = 32) -> dict[str, str]:
    """``reconstructions.png`` (rows labelled: data, then their reconstructions) and ``samples.png``."""
    out = Path(out)
    x = x[:n]
    rec, drawn = _reconstruction(model, guide, x)
    images, labels = interleave_reconstructions(x, rec)
    title = f"test data and reconstructions: {_shown(drawn)} at one z ~ q(z | x)"
    paths = {
        "reconstructions": save_grid(images, image_shape, out / "reconstructions.png", nrow=8, row_labels=labels, title=title),
        "samples": save_samples(model, x, 64, image_shape, out / "samples.png"),
    }
    return {k: str(v) for k, v in paths.items()}


@torch.no_grad()
def decode_at(model, site: str, z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of p(x | z) with latent site ``site`` fixed to ``z`` (N, d): the model run with that
    site conditioned and its observation released."""
    dummy = like.new_zeros((z.shape[0],) + like.shape[1:])
    conditioned = poutine.condition(poutine.uncondition(model), data={site: z})
    trace = poutine.trace(conditioned).get_trace(dummy)
    return _observed(trace)[0].reshape(dummy.shape)


def save_traversals(model, site: str, z_dim: int, dims, like, image_shape, path, steps: int = 9, span: float = 3.0) -> Path:
    """One row per latent dimension in ``dims`` (labelled ``site[d]``): that coordinate from -span
    to span (the column labels), the others 0."""
    rows = []
    grid = torch.linspace(-span, span, steps, device=like.device)
    for d in dims:
        z = torch.zeros(steps, z_dim, device=like.device)
        z[:, d] = grid
        rows.append(decode_at(model, site, z, like))
    return save_grid(
        torch.cat(rows),
        image_shape,
        path,
        nrow=steps,
        row_labels=[f"{site}[{d}]" for d in dims],
        col_labels=[f"{v:g}" for v in grid.tolist()],
        title=f"latent traversals: one dimension of {site} per row, the others at 0",
    )


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
