r"""log p(x) per data point by importance sampling, for any pair that follows the contract.

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

from . import capture, distributed
from . import progress as bars
from .budget import log_px_seconds, refuse_long_scoring, sample_width, scoring_chunk
from .capture import CaptureError, buffers_of, module_of, params_of, same_draws, why
from .config import COMPILE_MODES
from .device import tf32_matmul
from .pixels import as_data_tensor
from .sites import guess_max_plate_nesting, site_terms

# log_px(compile="auto") compiles from this many importance samples times data points: below it
# (a validation estimate, say) a compile on 2 CPU cores costs more than it saves
AUTO_COMPILE_POINT_SAMPLES = 5_000_000

# PSIS fits its Pareto tail to the largest min(0.2 K, 3 sqrt(K)) weights and needs at least 5 of
# them (ArviZ returns k-hat = inf below that, and fails at K = 1): K = 21 is the first with 5
PSIS_MIN_K = 21


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

    Points whose weights are all equal (the exact posterior as proposal) get -1. Refused below
    :data:`PSIS_MIN_K` weights per point: there is no tail to fit.
    """
    import warnings

    import arviz as az

    if log_w.shape[0] < PSIS_MIN_K:
        raise ValueError(psis_too_few(log_w.shape[0]))
    with warnings.catch_warnings():  # ArviZ warns on large k-hat; the report says so itself
        warnings.simplefilter("ignore")
        _, k_hat = az.psislw(log_w.T.double().cpu().numpy(), reff=1.0)
    k_hat = torch.as_tensor(k_hat, dtype=torch.float32)
    # equal weights (an exact proposal) have no tail to fit: ArviZ gives inf; they are the best case
    constant = (log_w.max(0).values - log_w.min(0).values).cpu() < 1e-4
    return torch.where(constant, torch.full_like(k_hat, -1.0), k_hat)


def psis_too_few(k: int) -> str:
    return (
        f"not computed: PSIS k-hat needs at least {PSIS_MIN_K} importance samples per point (its Pareto tail "
        f"holds min(0.2 K, 3 sqrt K) of them and needs 5), got K = {k}"
    )


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
    once per (batch, K) shape (:mod:`ppl_vae.capture`), checked against the eager
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
        """Record, compile and first replay the chunk's graph, checked against the eager chunk on
        the same draws; anything that fails raises :class:`CaptureError` with the reason."""
        xb = inputs[0]
        with same_draws(xb.device), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch's compiler loading its own modules
            try:  # clone_outputs: the IWAE ladder and PSIS keep a batch's chunks
                graph = capture.capture_graph(lambda x, *rest: self.eager(x, k), inputs, clone_outputs=True)
                with same_draws(xb.device):
                    expected = self.eager(xb, k)
                got = graph(*inputs)
            except CaptureError:
                raise
            except Exception as err:  # the compiler raising at the call, the compile or the first replay
                raise CaptureError(why(err)) from None
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
    tf32: bool = False,
) -> LogPx:
    """Importance-sampling estimate of log p(x) per data point for any contract-following pair.

    Args:
        model, guide: Pyro model and guide, each with its data in ``pyro.plate("data")``.
        x: data ``(N, ...)``, first dimension the data point; checked as the trainer checks it
            (numbers, finite, a batch of points, inside the observed site's support).
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
        tf32: on CUDA, matrix products in TF32 (off: the estimate in full float32).
    Returns:
        :class:`LogPx` with mean, standard errors and per-point estimates.
    """
    with tf32_matmul(tf32), contextlib.ExitStack() as isolated:
        if seed is not None:  # the checks' trial runs draw too: a seeded estimate leaves the caller's generators as they were
            isolated.enter_context(same_draws(x.device if torch.is_tensor(x) else torch.device("cpu")))
        x, terms = _checked(model, guide, x, k, compile, psis)
        batch_size, chunk_k = scoring_chunk(batch_size, chunk_k, sample_width(model, guide, terms), x.device)
        mpn = guess_max_plate_nesting(model, guide, (x[:1],), {})
        refuse_point_masses(model, guide, x[:1], mpn)
        compiled = compile == "on" or (compile == "auto" and k * x.shape[0] >= AUTO_COMPILE_POINT_SAMPLES)
        log_weights = LogWeights(model, guide, mpn, compiled, log=bars.write)
        if ladder or psis:
            batch_size = max(1, min(batch_size, max_weights // k))
        if distributed.world_size() > 1 and seed is None:
            seed = 0
        batches = list(_batches(x, batch_size))
        done = _estimate(batches, k, chunk_k, log_weights, ladder, psis, seed, progress)
    return _combine([done[i] for i in range(len(batches))], k)


def _checked(model, guide, x, k: int, compile: str, psis: bool):
    """``x`` as a float tensor, refused with the reason where the trainer would refuse it, and the
    site terms of one run of the pair on it."""
    from .checks import check_pair_on_data

    if k < 1:
        raise ValueError(f"k (importance samples) must be at least 1, got {k}")
    if psis and k < PSIS_MIN_K:
        raise ValueError(f"psis=True: {psis_too_few(k)}")
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got '{compile}'")
    x = as_data_tensor(x, "log_px data")
    if x.dim() < 2:
        raise ValueError(f"log_px needs a batch of points (N, ...), got shape {tuple(x.shape)}: for one point pass x[None]")
    if x.shape[0] == 0:
        raise ValueError("log_px needs at least one data point; x is empty")
    return x, check_pair_on_data(model, guide, x, "log_px data", particles=k > 1)


def _estimate(batches, k, chunk_k, log_weights, ladder, psis, seed, show) -> dict:
    """Every batch's numbers (see :func:`_one_batch`) by index: this rank's share, gathered from all
    ranks under torchrun."""
    rank, world = distributed.rank(), distributed.world_size()
    mine = [i for i in range(len(batches)) if i % world == rank]
    # the bar advances by chunk of particles, not by batch: a large K moves it from the start
    bar = bars.bar(len(mine) * -(-k // chunk_k), f"log p(x), K={k}", "chunk", show and rank == 0, leave=False)
    done = {}
    for i in mine:
        with contextlib.ExitStack() as own_seed:
            if seed is not None:
                own_seed.enter_context(same_draws(batches[i].device))
                torch.manual_seed(seed * 1_000_003 + i)  # also seeds CUDA
            done[i] = _one_batch(batches[i], k, chunk_k, log_weights, ladder, psis, bar)
    bar.close()
    if world > 1:  # every rank gets every batch's numbers (on the CPU), in order
        gathered = {}
        for part in distributed.all_gather_objects({i: _to_cpu(v) for i, v in done.items()}):
            gathered.update(part)
        device = batches[0].device
        done = {i: tuple(_to(v, device) for v in gathered[i]) for i in range(len(batches))}
    return done


def _combine(parts: list[tuple], k: int) -> LogPx:
    """The estimate from every batch's (estimates, relative variances, ladder, k-hat)."""
    per_point = torch.cat([p[0] for p in parts])
    ladders = [p[2] for p in parts if p[2] is not None]
    k_hats = [p[3] for p in parts if p[3] is not None]
    n = per_point.shape[0]
    se = float(per_point.std() / math.sqrt(n)) if n > 1 else float("nan")
    # one sample says nothing about the spread of the weights
    mc_se = float(torch.cat([p[1] for p in parts]).sum().sqrt() / n) if k > 1 else float("nan")
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


def _one_batch(xb, k, chunk_k, log_weights, ladder, psis, bar):
    """One batch of points: (estimates, relative variances, IWAE ladder or None, k-hat or None)."""
    lse = torch.full((xb.shape[0],), -math.inf, device=xb.device)
    lse2 = lse.clone()
    done, kept, keep = 0, [], bool(ladder) or psis
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


def check_scoring_time(
    model, guide, x: torch.Tensor, k: int, force: bool = False, chunk_k: int = 100, batch_size: int = 500
) -> float:
    """How long :func:`log_px` with ``k`` samples on ``x`` will take, from one timed chunk; refused
    (:func:`ppl_vae.budget.refuse_long_scoring`) beyond half a day, or beyond a million samples per
    point, unless ``force``, and said up front when it is longer than a minute. Cheap work (K x N
    below 10^6) is not timed (returns 0)."""
    if k * x.shape[0] < 1_000_000:
        return 0.0
    chunk_k, batch = min(chunk_k, k), min(batch_size, x.shape[0])
    with same_draws(x.device):
        seconds = log_px_seconds(lambda: log_px(model, guide, x[:batch], k=chunk_k, chunk_k=chunk_k, compile="off"),
                                 x.shape[0], k, chunk_k, batch)  # fmt: skip
    refuse_long_scoring(seconds, k, x.shape[0], force)
    if seconds > 60:
        bars.write(f"log p(x) with K={k:,} on {x.shape[0]:,} points will take about {seconds / 60:,.1f} min (timed on one chunk)")
    return seconds
