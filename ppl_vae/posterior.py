r"""The true posterior p(z | x) seen through importance weights: its correlations, and export.

With :math:`z_k \sim q(z \mid x)` and self-normalised weights :math:`\tilde w_k \propto p(x, z_k) / q(z_k \mid x)`,
:math:`\sum_k \tilde w_k f(z_k)` estimates :math:`\mathbb{E}_{p(z|x)}[f(z)]`. The correlation
matrix of p(z | x) per data point, summarised by the mean absolute off-diagonal entry and
set against the guide's own, says how non-diagonal the posterior is, and so what a
mean-field guide leaves out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .sites import found_one_at_a_time, site_terms


def _samples_and_weights(model, guide, x: torch.Tensor, k: int, chunk_k: int):
    """K draws of every latent site per point, the sites' dimensions side by side ``(K, N, d)``, their
    log-weights ``(K, N)`` and the sites' names."""
    zs, lws, names = [], [], None
    done, one_at_a_time = 0, found_one_at_a_time(model, guide, x)
    while done < k:
        kc = 1 if one_at_a_time else min(chunk_k, k - done)  # one draw's trace at a time
        t = site_terms(model, guide, x, num_particles=kc)
        names = t.latent
        zs.append(torch.cat([t.guide_trace.nodes[name]["value"].reshape(kc, x.shape[0], -1) for name in names], -1))
        lws.append(t.log_weights())
        done += kc
    return torch.cat(zs), torch.cat(lws), names


def _correlation(cov: torch.Tensor) -> torch.Tensor:
    sd = cov.diagonal(dim1=-2, dim2=-1).clamp(min=1e-12).sqrt()
    return cov / (sd[..., :, None] * sd[..., None, :])


def _mean_abs_offdiag(corr: torch.Tensor) -> torch.Tensor:
    d = corr.shape[-1]
    if d < 2:
        return torch.zeros(corr.shape[:-2])
    mask = ~torch.eye(d, dtype=torch.bool)
    return corr[..., mask].abs().mean(-1)


@torch.no_grad()
def posterior_correlations(model, guide, x: torch.Tensor, k: int = 1000, chunk_k: int = 250) -> dict:
    """Per data point, the correlation matrix of p(z|x) (importance-weighted) and of q(z|x); with
    several latent sites, of their dimensions side by side (the sites' order in the guide).

    Returns ``{"posterior": (N, d, d), "guide": (N, d, d), "posterior_mean_abs_offdiag": float,
    "guide_mean_abs_offdiag": float, "ess": (N,)}`` where ``ess`` is each point's effective
    sample size 1 / sum w~^2 (small: the weighted estimate is unreliable).
    """
    z, lw, _ = _samples_and_weights(model, guide, x, k, chunk_k)  # (K, N, d), (K, N)
    w = torch.softmax(lw, 0)
    mean_p = (w[..., None] * z).sum(0)
    dz = z - mean_p
    cov_p = torch.einsum("kn,kni,knj->nij", w, dz, dz)
    dq = z - z.mean(0)
    cov_q = torch.einsum("kni,knj->nij", dq, dq) / (z.shape[0] - 1)
    corr_p, corr_q = _correlation(cov_p).cpu(), _correlation(cov_q).cpu()
    return {
        "posterior": corr_p,
        "guide": corr_q,
        "posterior_mean_abs_offdiag": float(_mean_abs_offdiag(corr_p).mean()),
        "guide_mean_abs_offdiag": float(_mean_abs_offdiag(corr_q).mean()),
        "ess": (1.0 / (w**2).sum(0)).cpu(),
    }


@torch.no_grad()
def export_inference_data(model, guide, x: torch.Tensor, path: str | Path, k: int = 100, chunk_k: int = 250) -> Path:
    """Write posterior samples from the guide and their importance log-weights as ArviZ
    InferenceData (netCDF): group ``posterior`` holds ``z`` (chain, draw, point, z_dim) and
    ``sample_stats`` holds ``log_weight`` (chain, draw, point)."""
    import arviz as az

    z, lw, names = _samples_and_weights(model, guide, x, k, chunk_k)
    name = names[0] if len(names) == 1 else "z"  # several sites: their dimensions side by side
    idata = az.from_dict(
        posterior={name: z.cpu().numpy()[None]},
        sample_stats={"log_weight": lw.cpu().numpy()[None]},
        dims={name: ["point", f"{name}_dim"], "log_weight": ["point"]},
        coords={"point": np.arange(x.shape[0])},
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(str(path))
    return path
