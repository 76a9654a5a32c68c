r"""Per-data-point log-densities read from Pyro traces.

Everything that scores a model/guide pair (importance-weighted bounds, log p(x),
rate and distortion) starts here. The guide is run under an outer *particle*
plate of size ``K`` and the model is replayed against it; every sample site's
log-density is then reduced to shape ``(K, B)``: summed over every dimension
except the particle dimension and the ``"data"`` plate's dimension.

.. math::

    \log w_{kb} = \sum_{s \in \text{model}} c_s \log p_s(\cdot)_{kb}
                - \sum_{s \in \text{guide}} c_s \log q_s(\cdot)_{kb}

Scales are split in two. The data plate's subsample scale ``N / B`` is *not*
applied to ``log w`` (it multiplies the per-point bound afterwards, outside any
log-sum-exp); any other scale ``c_s`` (``poutine.scale``, beta, warm-up) is kept
as a weight of that site's term. This is what Pyro 1.9's ``RenyiELBO`` gets
wrong under subsampling (see DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites, site_is_subsample

from .enumerated import carries_enumeration, enumerated_in_model, enumerating, summed_out
from .particles import PerParticleTraces, mark_one_at_a_time, runs_one_at_a_time

DATA_PLATE = "data"
PARTICLE_PLATE = "_ppl_vae_particles"


class ContractError(ValueError):
    """A model or guide does not follow the package's model/guide contract."""


@dataclass
class SiteTerms:
    """Per-point log-densities of one (model, guide) draw, each of shape ``(K, B)``.

    ``model_terms`` holds every model sample site (observed and latent) and
    ``guide_terms`` every guide sample site; ``observed`` names the observed model
    sites. ``data_scale`` is the data plate's subsample scale N / B (1 without
    subsampling). ``reparameterized`` is False if any guide site is not; ``not_reparameterized``
    names those sites.
    """

    model_terms: dict[str, torch.Tensor]
    guide_terms: dict[str, torch.Tensor]
    observed: list[str]
    data_scale: float
    reparameterized: bool
    num_particles: int
    particle_dim: int
    guide_trace: poutine.Trace = field(repr=False)
    model_trace: poutine.Trace = field(repr=False)
    model_fn: object = field(repr=False, default=None)
    guide_fn: object = field(repr=False, default=None)
    args: tuple = field(repr=False, default=())
    kwargs: dict = field(repr=False, default_factory=dict)
    not_reparameterized: list[str] = field(default_factory=list)  # guide sites drawn without rsample

    @property
    def latent(self) -> list[str]:
        return [name for name in self.model_terms if name not in self.observed]

    def log_likelihood(self) -> torch.Tensor:
        """Sum of observed sites' log p(x | z): minus the distortion, ``(K, B)``."""
        return _sum_terms([self.model_terms[n] for n in self.observed], self)

    def log_prior(self) -> torch.Tensor:
        """Sum of latent sites' log p(z), ``(K, B)``."""
        return _sum_terms([self.model_terms[n] for n in self.latent], self)

    def log_guide(self) -> torch.Tensor:
        """Sum of guide sites' log q(z | x), ``(K, B)``."""
        return _sum_terms(list(self.guide_terms.values()), self)

    def reduce(self, name: str, value: torch.Tensor, guide: bool = False, trailing: int = 0) -> torch.Tensor:
        """Reduce a per-site tensor of site ``name`` to ``(K, B)`` as its log-density was."""
        site = (self.guide_trace if guide else self.model_trace).nodes[name]
        return self.reduce_site(site, value, "guide" if guide else "model", trailing)

    def reduce_site(self, site: dict, value: torch.Tensor, where: str = "model", trailing: int = 0) -> torch.Tensor:
        return reduce_to_points(site, value, self.num_particles, self.particle_dim, self.data_scale, where, trailing)

    def log_weights(self) -> torch.Tensor:
        """Importance log-weights ``log p(x, z) - log q(z | x)``, shape ``(K, B)``."""
        return self.log_likelihood() + self.log_prior() - self.log_guide()

    def point_masses(self) -> list[str]:
        """Guide sites whose distribution is a point mass (``Delta``): they have no density."""
        out = []
        for name in self.guide_terms:
            fn = self.guide_trace.nodes[name]["fn"]
            if type(getattr(fn, "base_dist", fn)).__name__ == "Delta":
                out.append(name)
        return out

    def replay_at_detached_samples(self, guide: bool = False) -> poutine.Trace:
        """The model (or the guide) run again at the guide's samples with their gradient paths cut:
        every distribution is rebuilt from fixed z, so its log-density at sg z has gradient only
        through the parameters (the score term)."""
        detached = self.guide_trace.copy()  # a shallow copy: each site is copied before its value is cut
        for name, site in list(detached.nodes.items()):
            if site["type"] == "sample":
                detached.nodes[name] = {**site, "value": site["value"].detach()}
        fn = self.guide_fn if guide else self.model_fn
        if not runs_one_at_a_time(self.model_fn, self.guide_fn):
            fn = vectorized(fn, self.num_particles, self.particle_dim)
        return poutine.trace(poutine.replay(fn, trace=detached)).get_trace(*self.args, **self.kwargs)


def _sum_terms(terms: list[torch.Tensor], ref: SiteTerms) -> torch.Tensor:
    if terms:
        return torch.stack(torch.broadcast_tensors(*terms)).sum(0)
    # no such site: a zero of the right shape
    some = next(iter(ref.model_terms.values()))
    return torch.zeros_like(some)


def guess_max_plate_nesting(model, guide, args, kwargs) -> int:
    """Deepest plate nesting of the pair, found by running both once (as Pyro does).

    The global RNG is left as it was, so guessing does not change what a seed gives.
    """
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with poutine.block(), torch.random.fork_rng(devices=cuda):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    depth = 0
    for trace in (model_trace, guide_trace):
        for site in prune_subsample_sites(trace).nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        depth = max(depth, -frame.dim)
    return depth


def in_data_plate(site: dict) -> bool:
    return any(f.name == DATA_PLATE and f.vectorized for f in site["cond_indep_stack"])


def outside_data_plate(model_trace: poutine.Trace) -> list[str]:
    """The model's latent sites outside the data plate: its global latents."""
    return [
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not in_data_plate(site)
    ]


def _data_frame(site: dict, where: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE and frame.vectorized:
            return frame
    if where == "model" and site.get("is_observed"):
        raise ContractError(
            f"observed site '{site['name']}' is not inside pyro.plate('data'): every observation must sit in the one "
            "'data' plate so it can be scored per data point (see the model/guide contract in the README)"
        )
    raise ContractError(
        f"{where} site '{site['name']}' is not inside pyro.plate('data'): a global latent, shared by every point. "
        "Importance-weighted objectives and log p(x) weight each point's own samples and cannot be right with it; "
        "train with elbo, meanfield, enum or tracegraph (which scale a global site by B/N per minibatch), or put the "
        "site inside the data plate, or condition the model on a point estimate of it (pyro.condition) and score "
        "that conditional model, saying so"
    )


def data_subsample_scale(trace: poutine.Trace) -> float:
    """N / B of the data plate: its full size over the subsample it holds (1 without subsampling)."""
    site = trace.nodes.get(DATA_PLATE)
    if site is None or not site_is_subsample(site):
        return 1.0
    return site["fn"].size / site["value"].shape[0]


def reduce_to_points(
    site: dict,
    log_p: torch.Tensor,
    num_particles: int,
    particle_dim: int,
    data_scale: float,
    where: str = "model",
    trailing: int = 0,
) -> torch.Tensor:
    """A site's log-density (or any per-site quantity with its batch shape) as ``(K, B)``.

    Sums every dimension but the particle and data plate dimensions, applies the site's
    mask and its scale divided by the data subsample scale (beta, warm-up and other
    weights stay; N/B does not). ``trailing`` dims on the right (per-dimension terms)
    are kept: the result is then ``(K, B, *trailing_shape)``.
    """
    frame = _data_frame(site, where)
    tail = log_p.shape[log_p.dim() - trailing :] if trailing else torch.Size()
    if trailing:
        log_p = log_p.movedim(tuple(range(-trailing, 0)), tuple(range(trailing)))  # batch dims to the right
    mask = site["mask"]
    if isinstance(mask, torch.Tensor):
        log_p = torch.where(mask, log_p, log_p.new_zeros(()))
    elif mask is False:
        log_p = torch.zeros_like(log_p)
    lead = trailing
    ndim = max(log_p.dim() - lead, -particle_dim, -frame.dim)
    log_p = log_p.reshape(tail + (1,) * (ndim - (log_p.dim() - lead)) + log_p.shape[lead:])
    p_axis, d_axis = lead + ndim + particle_dim, lead + ndim + frame.dim
    batch = log_p.shape[d_axis]
    other = [a for a in range(lead, lead + ndim) if a not in (p_axis, d_axis)]
    if other:
        log_p = log_p.sum(other, keepdim=True)
    log_p = log_p.reshape(tail + (log_p.shape[p_axis], batch)).expand(tail + (num_particles, batch))
    if trailing:
        log_p = log_p.movedim(tuple(range(trailing)), tuple(range(-trailing, 0)))
    weight = site["scale"] / data_scale
    if isinstance(weight, torch.Tensor) or abs(weight - 1.0) > 1e-12:
        log_p = weight * log_p
    return log_p


def vectorized(fn, num_particles: int, dim: int):
    def wrapped(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


def found_one_at_a_time(model, guide, x) -> bool:
    """:func:`runs_one_at_a_time`, after a two-particle trial on the first point if the pair is new."""
    if not runs_one_at_a_time(model, guide):
        site_terms(model, guide, x[:1], num_particles=2)
    return runs_one_at_a_time(model, guide)


def site_terms(
    model, guide, *args, num_particles: int = 1, max_plate_nesting: int | None = None, allow_global: bool = False, **kwargs
) -> SiteTerms:
    """Run ``guide`` with ``num_particles`` vectorised particles, replay ``model``, and
    return every sample site's log-density per particle and data point.

    A pair whose networks do not broadcast over the particle dimension (they raise under it
    and run without it) runs its particles one at a time instead, with the same answers; it is
    said once (:class:`ppl_vae.particles.SequentialParticles`) and remembered for the pair.
    Sites outside ``pyro.plate("data")`` (global latents) raise :class:`ContractError`, or with
    ``allow_global`` are left out of the terms (their traces stay: for checks only); plates nested
    in the data plate (pixels, time steps) are summed over.
    """
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    particle_dim = -max_plate_nesting - 1
    if runs_one_at_a_time(model, guide):
        return _one_at_a_time(model, guide, args, kwargs, num_particles, particle_dim, allow_global)
    try:
        return _terms(model, guide, args, kwargs, num_particles, particle_dim, True, allow_global)
    except ContractError:
        raise
    except Exception as err:
        terms = _one_at_a_time(
            model, guide, args, kwargs, num_particles, particle_dim, allow_global
        )  # its own error if it fails too
        mark_one_at_a_time(model, guide, err)
        return terms


def _one_at_a_time(model, guide, args, kwargs, num_particles: int, particle_dim: int, allow_global: bool) -> SiteTerms:
    """``num_particles`` draws without a particle plate, their ``(1, B)`` terms stacked to ``(K, B)``."""
    parts = [_terms(model, guide, args, kwargs, 1, particle_dim, False, allow_global) for _ in range(num_particles)]
    if num_particles == 1:
        return parts[0]
    first = parts[0]
    return SiteTerms(
        model_terms={n: torch.cat([p.model_terms[n] for p in parts]) for n in first.model_terms},
        guide_terms={n: torch.cat([p.guide_terms[n] for p in parts]) for n in first.guide_terms},
        observed=first.observed,
        data_scale=first.data_scale,
        reparameterized=all(p.reparameterized for p in parts),
        num_particles=num_particles,
        particle_dim=particle_dim,
        model_fn=model,
        guide_fn=guide,
        args=args,
        kwargs=kwargs,
        guide_trace=PerParticleTraces(),
        model_trace=PerParticleTraces(),
        not_reparameterized=first.not_reparameterized,
    )


def _enumerated_trace(run_model, guide_trace, summed, particle_dim: int, vectorise: bool, args, kwargs):
    if not vectorise:
        raise ContractError(f"model sites {summed} are marked for enumeration: the pair must broadcast over new dimensions")
    run_model = enumerating(run_model, particle_dim)
    return poutine.trace(poutine.replay(run_model, trace=guide_trace)).get_trace(*args, **kwargs)


def _joint_term(joint: list[dict], num_particles: int, particle_dim: int, data_scale: float) -> dict:
    """One term for the sites that depend on enumerated ones, under an observed site's name."""
    key = next((s["name"] for s in joint if s["is_observed"]), joint[0]["name"])
    frame = _data_frame(next(s for s in joint if s["name"] == key), "model")
    site = {"name": key, "cond_indep_stack": (frame,), "mask": None, "scale": 1.0}
    total = summed_out(joint, particle_dim, frame.dim, data_scale)
    return {key: reduce_to_points(site, total, num_particles, particle_dim, 1.0)}


def _check_local_in_guide(guide_trace, model_trace) -> None:
    for name, site in guide_trace.nodes.items():
        model_site = model_trace.nodes.get(name)
        if site["type"] == "sample" and not in_data_plate(site) and model_site is not None and in_data_plate(model_site):
            raise ContractError(
                f"guide site '{name}' is not inside pyro.plate('data') and the model's site '{name}' is: the guide "
                "must draw it per data point too (inside the one 'data' plate)"
            )


def _terms(model, guide, args, kwargs, num_particles: int, particle_dim: int, vectorise: bool, allow_global: bool) -> SiteTerms:
    run_guide, run_model = (vectorized(fn, num_particles, particle_dim) if vectorise else fn for fn in (guide, model))
    guide_trace = poutine.trace(run_guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(run_model, trace=guide_trace)).get_trace(*args, **kwargs)
    summed = enumerated_in_model(model_trace, guide_trace)
    if summed:  # marked discrete sites the guide does not draw: summed out inside each weight
        model_trace = _enumerated_trace(run_model, guide_trace, summed, particle_dim, vectorise, args, kwargs)
    data_scale = data_subsample_scale(model_trace)
    if data_subsample_scale(guide_trace) != data_scale:
        raise ContractError("the model and guide subsample the 'data' plate differently")
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)

    model_terms, guide_terms, observed, not_reparameterized, joint = {}, {}, [], [], []
    shared = set(outside_data_plate(model_trace)) if allow_global else set()
    _check_local_in_guide(guide_trace, model_trace)
    for where, trace, out in (("guide", guide_trace, guide_terms), ("model", model_trace, model_terms)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or name in shared:
                continue
            if where == "model" and site["is_observed"]:
                observed.append(name)
            log_p = site["fn"].log_prob(site["value"])
            if where == "model" and summed and (name in summed or carries_enumeration(log_p, particle_dim)):
                joint.append(site)
                continue
            if where == "model" and not site["is_observed"] and name not in guide_trace.nodes:
                raise ContractError(
                    f"model latent site '{name}' has no matching site in the guide; the guide samples {sorted(guide_terms)}"
                )
            if where == "guide" and not getattr(site["fn"], "has_rsample", False):
                not_reparameterized.append(name)
            out[name] = reduce_to_points(site, log_p, num_particles, particle_dim, data_scale, where)
    if joint:
        model_terms.update(_joint_term(joint, num_particles, particle_dim, data_scale))
    extra = sorted(set(guide_terms) - set(model_terms) - {s["name"] for s in joint})
    if extra:
        raise ContractError(f"guide sites {extra} do not appear in the model")
    if not observed:
        raise ContractError("the model has no observed site (pyro.sample(..., obs=x))")
    return SiteTerms(
        model_terms=model_terms,
        guide_terms=guide_terms,
        observed=observed,
        data_scale=data_scale,
        reparameterized=not not_reparameterized,
        num_particles=num_particles,
        particle_dim=particle_dim,
        model_fn=model,
        guide_fn=guide,
        args=args,
        kwargs=kwargs,
        guide_trace=guide_trace,
        model_trace=model_trace,
        not_reparameterized=not_reparameterized,
    )
