r"""Scoring a model/guide pair per data point: log p(x) by importance sampling, ELBO,
rate and distortion.

.. math::

    \log \hat p(x) = \log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)},
    \quad z_k \sim q(z \mid x)

The estimate is a stochastic lower bound (the IWAE bound) that tends to log p(x)
as K grows. Work is chunked over K and over data points, so memory does not grow
with K; only a running log-sum-exp per point is kept.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from . import distributed
from .data import as_data_tensor
from .sites import guess_max_plate_nesting, site_terms
from .step import COMPILE_MODES, CaptureError, buffers_of, capture_graph, module_of, params_of, same_draws

# log_px(compile="auto") compiles from this many importance samples times data points: below it
# (a validation estimate, say) a compile on 2 CPU cores costs more than it saves
AUTO_COMPILE_POINT_SAMPLES = 5_000_000


@dataclass
class LogPx:
    """Estimated log p(x) in nats per data point.

    ``log_px`` is the mean over points; ``log_px_se`` its standard error over the
    data points; ``mc_se`` the Monte Carlo standard error of that mean from the
    importance weights (delta method); ``k`` the number of importance samples;
    ``per_point`` the per-point estimates.
    """

    log_px: float
    log_px_se: float
    mc_se: float
    k: int
    n: int
    per_point: torch.Tensor
    iwae_by_k: dict[int, float] = field(default_factory=dict)
    k_hat: torch.Tensor | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("per_point")
        d.pop("k_hat")
        d["iwae_by_k"] = {str(k): v for k, v in self.iwae_by_k.items()}
        if self.k_hat is not None:
            d["k_hat"] = psis_summary(self.k_hat)
        return d


def psis_summary(k_hat: torch.Tensor) -> dict:
    """Pareto k-hat over data points: share above 0.7 (unreliable estimates, Vehtari et al.)."""
    return {
        "share_above_0.7": float((k_hat > 0.7).float().mean()),
        "share_above_0.5": float((k_hat > 0.5).float().mean()),
        "median": float(k_hat.median()),
        "max": float(k_hat.max()),
    }


def pareto_k_hat(log_w: torch.Tensor) -> torch.Tensor:
    """PSIS Pareto shape k-hat of each column's importance weights via ArviZ, ``(K, B) -> (B,)``.

    Points whose weights are all equal (the exact posterior as proposal) get -1.
    """
    import warnings

    import arviz as az

    with warnings.catch_warnings():  # ArviZ warns on large k-hat; the report says so itself
        warnings.simplefilter("ignore")
        _, k_hat = az.psislw(log_w.T.double().cpu().numpy(), reff=1.0)
    k_hat = torch.as_tensor(k_hat, dtype=torch.float32)
    # equal weights (an exact proposal) have no tail to fit: ArviZ gives inf; they are the best case
    constant = (log_w.max(0).values - log_w.min(0).values).cpu() < 1e-4
    return torch.where(constant, torch.full_like(k_hat, -1.0), k_hat)


def iwae_ladder(log_w: torch.Tensor, ks) -> dict[int, torch.Tensor]:
    """The IWAE bound with k samples for each k in ``ks`` from one set of K weights ``(K, B)``:
    the mean of log-mean-exp over the floor(K / k) disjoint blocks, per point."""
    out = {}
    for k in ks:
        m = log_w.shape[0] // k
        if m:
            blocks = log_w[: m * k].reshape(m, k, -1)
            out[k] = (torch.logsumexp(blocks, 1) - math.log(k)).mean(0)
    return out


_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class NoDensityError(ValueError):
    """The guide has a point-mass (Delta) site: q(z | x) has no density, so log p(x) has no estimate."""


def refuse_point_masses(model, guide, x: torch.Tensor, max_plate_nesting: int) -> None:
    """Raise :class:`NoDensityError` naming the guide's first point-mass site, if any."""
    with same_draws(x.device):  # a look at the guide's sites draws nothing the estimate would
        terms = site_terms(model, guide, x, num_particles=1, max_plate_nesting=max_plate_nesting)
    for name in terms.point_masses()[:1]:
        raise NoDensityError(
            f"guide site '{name}' is a point mass (a deterministic encoder): q(z|x) has no density, so there is no "
            "importance-sampling estimate of log p(x); report the reconstruction error and the aggregate-posterior "
            "tests instead"
        )


class LogWeights:
    """Importance log-weights ``(K, B)`` of one chunk of particles and data points.

    Eager: :func:`ppl_vae.sites.site_terms` every chunk. Compiled: the same computation captured
    once per (batch, K) shape (:func:`ppl_vae.step.capture_graph`), checked against the eager
    one on the same draws, and replayed; a chunk shape that cannot be captured runs eagerly,
    with one line saying why.
    """

    def __init__(self, model, guide, max_plate_nesting: int, compiled: bool, log=print):
        self.model, self.guide, self.mpn, self.compiled, self.log = model, guide, max_plate_nesting, compiled, log
        # graphs outlive one call (validation every few epochs, the report's passes): kept with the guide
        owner = module_of(guide) or guide
        self.graphs: dict[tuple, object] = _GRAPHS.setdefault(owner, {})

    def eager(self, xb: torch.Tensor, k: int) -> torch.Tensor:
        return site_terms(self.model, self.guide, xb, num_particles=k, max_plate_nesting=self.mpn).log_weights()

    def _inputs(self, xb):
        return [xb, *buffers_of(self.model, self.guide), *params_of(self.model, self.guide)]

    def _prepare(self, inputs: list[torch.Tensor], k: int):
        xb = inputs[0]
        with same_draws(xb.device), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch's compiler loading its own modules
            graph = capture_graph(lambda x, *rest: self.eager(x, k), inputs)
            with same_draws(xb.device):
                expected = self.eager(xb, k)
            got = graph(*inputs)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-3):
            diff = float((got - expected).abs().max())
            raise CaptureError(f"the compiled log-weights differ from the eager ones by {diff:.3g} on the same draws")
        return graph

    def __call__(self, xb: torch.Tensor, k: int) -> torch.Tensor:
        if not self.compiled:
            return self.eager(xb, k)
        inputs = self._inputs(xb)
        key = (id(module_of(self.model) or self.model), tuple(xb.shape), k, xb.device, self.mpn, len(inputs))
        if key not in self.graphs:
            try:
                self.graphs[key] = self._prepare(inputs, k)
            except CaptureError as err:
                self.graphs[key] = None
                self.log(f"ppl_vae: log p(x) chunks of {k} samples x {xb.shape[0]} points run eagerly: {err}")
        graph = self.graphs[key]
        return self.eager(xb, k) if graph is None else graph(*inputs)


def _batches(x: torch.Tensor, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start : start + batch_size]


@torch.no_grad()
def log_px(
    model,
    guide,
    x: torch.Tensor,
    k: int = 1000,
    chunk_k: int = 100,
    batch_size: int = 500,
    progress: bool = False,
    ladder=(),
    psis: bool = False,
    max_weights: int = 4_000_000,
    compile: str = "auto",
    seed: int | None = None,
) -> LogPx:
    """Importance-sampling estimate of log p(x) per data point for any contract-following pair.

    Args:
        model, guide: Pyro model and guide, each with its data in ``pyro.plate("data")``.
        x: data, first dimension is the data point.
        k: importance samples per data point.
        chunk_k, batch_size: particles and data points evaluated at once (memory bound).
        ladder: also report the IWAE bound for each of these k <= K, from the same samples.
        psis: also compute each point's Pareto k-hat (ArviZ's PSIS). Both keep a batch's K
            weights, so the batch shrinks to keep ``K * batch <= max_weights``.
        compile: ``"on"`` runs each chunk as a graph compiled once per chunk shape
            (:class:`LogWeights`), ``"off"`` eagerly, ``"auto"`` compiled when ``K * N`` is at
            least :data:`AUTO_COMPILE_POINT_SAMPLES`. The draws are the same either way.
        seed: draw each batch of points from its own seed (derived from ``seed`` and the
            batch's index), leaving the global generators as they were: the estimate then
            depends on the seed and the data only, not on what ran before nor on how many
            processes share the work. Under torchrun the batches are dealt out to the ranks
            and gathered, so every rank returns the single-process estimate (``seed``
            defaults to 0 there); it is then a collective: call it on every rank.
    Returns:
        :class:`LogPx` with mean, standard errors and per-point estimates.
    """
    if k < 1:
        raise ValueError(f"k (importance samples) must be at least 1, got {k}")
    x = as_data_tensor(x, "log_px data")
    if x.shape[0] == 0:
        raise ValueError("log_px needs at least one data point; x is empty")
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got '{compile}'")
    mpn = guess_max_plate_nesting(model, guide, (x[:1],), {})
    refuse_point_masses(model, guide, x[:1], mpn)
    compiled = compile == "on" or (compile == "auto" and k * x.shape[0] >= AUTO_COMPILE_POINT_SAMPLES)
    log_weights = LogWeights(model, guide, mpn, compiled, log=tqdm.write)
    keep = bool(ladder) or psis
    if keep:
        batch_size = max(1, min(batch_size, max_weights // k))
    rank, world = distributed.rank(), distributed.world_size()
    if world > 1 and seed is None:
        seed = 0
    batches = list(_batches(x, batch_size))
    mine = [i for i in range(len(batches)) if i % world == rank]
    chunks_per_batch = -(-k // chunk_k)
    # the bar advances by chunk of particles, not by batch: a large K moves it from the start
    bar = tqdm(
        total=len(mine) * chunks_per_batch, desc=f"log p(x), K={k}", unit="chunk", disable=not progress or rank > 0, leave=False
    )
    done_batches = {}
    for i in mine:
        with contextlib.ExitStack() as own_seed:
            if seed is not None:
                own_seed.enter_context(same_draws(x.device))
                torch.manual_seed(seed * 1_000_003 + i)  # also seeds CUDA
            done_batches[i] = _one_batch(batches[i], k, chunk_k, log_weights, ladder, psis, keep, bar)
    bar.close()
    if world > 1:  # every rank gets every batch's numbers (on the CPU), in order
        gathered = {}
        for part in distributed.all_gather_objects({i: _to_cpu(v) for i, v in done_batches.items()}):
            gathered.update(part)
        done_batches = {i: tuple(_to(v, x.device) for v in gathered[i]) for i in range(len(batches))}
    estimates, rel_vars, ladders, k_hats = [], [], [], []
    for i in range(len(batches)):
        est, rel_var, lad, k_hat = done_batches[i]
        estimates.append(est)
        rel_vars.append(rel_var)
        if lad is not None:
            ladders.append(lad)
        if k_hat is not None:
            k_hats.append(k_hat)
    per_point = torch.cat(estimates)
    n = per_point.shape[0]
    se = float(per_point.std() / math.sqrt(n)) if n > 1 else float("nan")
    # one sample says nothing about the spread of the weights
    mc_se = float(torch.cat(rel_vars).sum().sqrt() / n) if k > 1 else float("nan")
    by_k = {j: float(torch.cat([lad[j] for lad in ladders]).mean()) for j in (ladders[0] if ladders else {})}
    k_hat = torch.cat(k_hats) if k_hats else None
    return LogPx(float(per_point.mean()), se, mc_se, k, n, per_point.cpu(), by_k, k_hat)


def _to_cpu(value):
    return _to(value, torch.device("cpu"))


def _to(value, device):
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to(v, device) for key, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def _one_batch(xb, k, chunk_k, log_weights, ladder, psis, keep, bar):
    """One batch of points: (estimates, relative variances, IWAE ladder or None, k-hat or None)."""
    lse = torch.full((xb.shape[0],), -math.inf, device=xb.device)
    lse2 = lse.clone()
    done, kept = 0, []
    while done < k:
        kc = min(chunk_k, k - done)
        lw = log_weights(xb, kc)
        lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
        lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
        if keep:
            kept.append(lw)
        done += kc
        bar.update()
    lad = k_hat = None
    if keep:
        all_w = torch.cat(kept)
        lad = iwae_ladder(all_w, [j for j in ladder if j <= k])
        if psis:
            k_hat = pareto_k_hat(all_w)
    est = lse - math.log(k)
    # Var(mean w) / (mean w)^2 = (E[w^2] / E[w]^2 - 1) / K, the delta-method variance of log p^
    rel_var = (torch.exp(lse2 - math.log(k) - 2 * est) - 1.0).clamp(min=0) / k
    return est, rel_var, lad, k_hat


@dataclass
class BoundTerms:
    """ELBO pieces in nats per data point: ``elbo = -distortion - rate``."""

    elbo: float
    rate: float
    distortion: float
    n: int


@torch.no_grad()
def elbo_terms(model, guide, x: torch.Tensor, k: int = 1, batch_size: int = 500) -> BoundTerms:
    """Monte Carlo ELBO, rate ``E_q[log q(z|x) - log p(z)]`` and distortion ``-E_q[log p(x|z)]``,
    each averaged over ``k`` samples and the data points."""
    mpn = guess_max_plate_nesting(model, guide, (x[:1],), {})
    rate, dist = [], []
    for xb in _batches(x, batch_size):
        t = site_terms(model, guide, xb, num_particles=k, max_plate_nesting=mpn)
        rate.append((t.log_guide() - t.log_prior()).mean(0))
        dist.append(-t.log_likelihood().mean(0))
    r, d = torch.cat(rate).mean().item(), torch.cat(dist).mean().item()
    return BoundTerms(elbo=-(r + d), rate=r, distortion=d, n=x.shape[0])


@torch.no_grad()
def posterior_means(model, guide, x: torch.Tensor, k: int = 50, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """E_q[z | x] per latent site, ``(N, prod(event_shape))``: the guide's own mean where its
    distribution has one, else the average of ``k`` samples."""
    mpn = guess_max_plate_nesting(model, guide, (x[:1],), {})
    out: dict[str, list[torch.Tensor]] = {}
    for xb in _batches(x, batch_size):
        t = site_terms(model, guide, xb, num_particles=k, max_plate_nesting=mpn)
        for name in t.latent:
            site = t.guide_trace.nodes[name]
            value, batch_dims = site["value"], site["value"].dim() - site["fn"].event_dim
            try:
                mean = site["fn"].mean.expand(value.shape)
            except NotImplementedError:  # flows and others without a closed-form mean: use the samples
                mean = value
            data_dim = next(f.dim for f in site["cond_indep_stack"] if f.name == "data")
            p_axis, d_axis = batch_dims + t.particle_dim, batch_dims + data_dim
            mean = mean.mean(p_axis, keepdim=True).movedim(d_axis, 0)
            out.setdefault(name, []).append(mean.reshape(xb.shape[0], -1))
    return {name: torch.cat(parts) for name, parts in out.items()}


def active_units(model, guide, x: torch.Tensor, threshold: float = 0.01, k: int = 50) -> dict[str, int]:
    """Latent dimensions u with Cov_x(E_q[u | x]) > ``threshold`` (Burda et al. 2016), per site and in
    total, and ``dims``: how many latent dimensions there are."""
    means = posterior_means(model, guide, x, k=k)
    counts = {name: int((m.var(0) > threshold).sum()) for name, m in means.items()}
    counts["total"] = sum(counts.values())
    counts["dims"] = sum(m.shape[1] for m in means.values())
    return counts
