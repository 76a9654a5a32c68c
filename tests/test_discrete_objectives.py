"""Objectives for discrete latents (enum, tracegraph, vimco, rws) against exact answers.

The test pair has a discrete class y (3 values) and a latent z per point, x in R^2:

    y ~ Cat(softmax(pi)),  z ~ N(0, 1) or Bernoulli(0.5),  x ~ N(mu_y + a z, I)
    q(y | x) = Cat(softmax(x Wq + bq)),  q(z | x, y) = N(m_y + x.c, exp(ls_y)^2) or Bernoulli(sigmoid(m_y + x.c))

Its ELBO is closed form (Gaussian expectations of a Gaussian log-likelihood), and its two-sample
bound E log((w_1 + w_2) / 2) is a sum over (y_1, y_2) of a 2-D Gauss-Hermite quadrature over the
standardised z's, to ~1e-6 here. Each estimator's mean gradient over independent repetitions must
equal the exact gradient within 4 standard errors of that mean.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae.objectives import get_objective

X = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-1.2, 0.8]])
INIT = {
    "pi": torch.tensor([0.2, -0.3, 0.1]),
    "mu": torch.tensor([[1.0, -1.0], [0.0, 1.5], [-1.5, 0.0]]),
    "a": torch.tensor([0.8, -0.4]),
    "Wq": torch.tensor([[0.3, -0.2, 0.1], [0.1, 0.4, -0.3]]),
    "bq": torch.tensor([0.1, 0.0, -0.2]),
    "m": torch.tensor([0.5, -0.5, 0.2]),
    "ls": torch.tensor([-0.3, 0.1, -0.6]),
    "c": torch.tensor([0.2, -0.1]),
}
MODEL_PARAMS, GUIDE_PARAMS = ("pi", "mu", "a"), ("Wq", "bq", "m", "ls", "c")


def _params():
    return {n: pyro.param(n, v.clone()) for n, v in INIT.items()}


def make_pair(z_kind="normal", enumerate_guide=False):
    def model(x):
        p = _params()
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=p["pi"]))
            prior = dist.Normal(0.0, 1.0) if z_kind == "normal" else dist.Bernoulli(0.5)
            z = pyro.sample("z", prior.expand(x.shape[:1]))
            pyro.sample("x", dist.Normal(p["mu"][y] + p["a"] * z[..., None], 1.0).to_event(1), obs=x)

    def guide(x):
        p = _params()
        mark = {"enumerate": "parallel"} if enumerate_guide else {}
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=x @ p["Wq"] + p["bq"]), infer=mark)
            loc = p["m"][y] + x @ p["c"]
            q_z = dist.Normal(loc, p["ls"][y].exp()) if z_kind == "normal" else dist.Bernoulli(logits=loc)
            pyro.sample("z", q_z, infer=mark if z_kind != "normal" else {})

    return model, guide


def _log_weight(p, x, y, z, z_kind):
    """log p(x, y, z) - log q(y, z | x) for class indices y and z values broadcast with x's points."""
    log_q_y = torch.log_softmax(x @ p["Wq"] + p["bq"], -1).gather(-1, y[..., None])[..., 0]
    loc = p["m"][y] + (x @ p["c"])
    if z_kind == "normal":
        log_q_z = dist.Normal(loc, p["ls"][y].exp()).log_prob(z)
        log_p_z = dist.Normal(0.0, 1.0).log_prob(z)
    else:
        log_q_z = dist.Bernoulli(logits=loc).log_prob(z)
        log_p_z = torch.full_like(z, -np.log(2.0))
    log_lik = dist.Normal(p["mu"][y] + p["a"] * z[..., None], 1.0).log_prob(x).sum(-1)
    return torch.log_softmax(p["pi"], -1)[y] + log_p_z + log_lik - log_q_y - log_q_z


def exact_elbo(p, x, z_kind="normal"):
    """The ELBO summed over points, in closed form: a sum over y (and z when it is binary)."""
    total = 0.0
    for y in range(3):
        ys = torch.full((x.shape[0],), y)
        q_y = torch.softmax(x @ p["Wq"] + p["bq"], -1)[:, y]
        if z_kind == "normal":
            m, s = p["m"][y] + x @ p["c"], p["ls"][y].exp()
            resid = x - p["mu"][y] - p["a"] * m[:, None]
            e_log_lik = -np.log(2 * np.pi) - 0.5 * ((resid**2).sum(-1) + (p["a"] ** 2).sum() * s**2)
            kl_z = 0.5 * (s**2 + m**2 - 1) - torch.log(s)
            log_q_y = torch.log(q_y)
            inner = torch.log_softmax(p["pi"], -1)[y] - log_q_y + e_log_lik - kl_z
        else:
            inner = 0.0
            for z in (0.0, 1.0):
                zs = torch.full((x.shape[0],), z)
                q_z = torch.sigmoid(p["m"][y] + x @ p["c"])
                q_z = q_z if z == 1.0 else 1 - q_z
                inner = inner + q_z * _log_weight(p, x, ys, zs, z_kind)
        total = total + (q_y * inner).sum()
    return total


def exact_two_sample(p, x, n=40, wake_guide=False):
    """E log((w_1 + w_2) / 2) for the Gaussian z, summed over points (or, with ``wake_guide``, the
    surrogate whose gradient is the expected RWS wake gradient of the guide)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    eps, g = torch.tensor(nodes, dtype=torch.float32), torch.tensor(weights / np.sqrt(2 * np.pi), dtype=torch.float32)
    total = 0.0
    q_y = torch.softmax(x @ p["Wq"] + p["bq"], -1)  # (B, 3)
    for y1 in range(3):
        for y2 in range(3):
            ys = [torch.full((x.shape[0],), y) for y in (y1, y2)]
            zs = [(p["m"][y] + x @ p["c"]) + p["ls"][y].exp() * e for y, e in zip(ys, (eps[:, None, None], eps[None, :, None]))]
            log_w = [_log_weight(p, x, y, z, "normal") for y, z in zip(ys, zs)]  # each (n, n, B) after broadcasting
            log_w = torch.stack(torch.broadcast_tensors(*log_w))
            mass = (q_y[:, y1] * q_y[:, y2])[None, None] * (g[:, None] * g[None, :])[..., None]
            if wake_guide:
                w = torch.softmax(log_w.detach(), 0)
                log_q = [
                    _log_weight({**p, **{k: p[k].detach() for k in MODEL_PARAMS}}, x, y, z.detach(), "normal")
                    for y, z in zip(ys, zs)
                ]
                # at fixed z and model parameters, minus the log weight is log q(y, z | x) plus a constant
                value = -(w * torch.stack(torch.broadcast_tensors(*log_q))).sum(0)
                total = total + (mass.detach() * value).sum()
            else:
                total = total + (mass * (torch.logsumexp(log_w, 0) - np.log(2))).sum()
    return total


def exact_gradients(fn, names, **kwargs):
    p = {n: v.clone().requires_grad_(True) for n, v in INIT.items()}
    value = fn(p, X, **kwargs)
    grads = torch.autograd.grad(value, [p[n] for n in names])
    return value.detach(), dict(zip(names, grads))


def estimated_gradients(spec, names, reps=200, rounds=20, z_kind="normal", enumerate_guide=False, **overrides):
    """Mean and standard error over ``rounds`` of the gradient of minus the loss; each round's
    loss is over ``reps`` copies of the data (independent draws), divided by ``reps``."""
    model, guide = make_pair(z_kind, enumerate_guide)
    objective = get_objective(spec, **overrides)
    x = X.repeat(reps, 1)
    pyro.set_rng_seed(0)
    draws = []
    for _ in range(rounds):
        pyro.clear_param_store()
        loss = objective.differentiable_loss(model, guide, x)
        store = pyro.get_param_store()
        grads = torch.autograd.grad(-loss / reps, [store.get_param(n) for n in names])
        draws.append(torch.cat([g.reshape(-1) for g in grads]))
    draws = torch.stack(draws)
    return draws.mean(0), draws.std(0) / np.sqrt(rounds), loss.detach() / reps


def assert_within(mean, se, exact, names, label):
    exact = torch.cat([exact[n].reshape(-1) for n in names])
    bad = (mean - exact).abs() > 4 * se + 1e-4
    assert not bad.any(), f"{label}: {mean[bad]} vs exact {exact[bad]} (SE {se[bad]})"


@pytest.fixture(autouse=True)
def fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_enum_equals_the_exact_elbo_when_every_discrete_site_is_enumerated():
    model, guide = make_pair("bernoulli", enumerate_guide=True)
    loss = get_objective("enum").differentiable_loss(model, guide, X)
    names = [n for n in INIT if n != "ls"]  # a binary z has no scale
    store = pyro.get_param_store()
    grads = torch.autograd.grad(-loss, [store.get_param(n) for n in names])
    value, exact = exact_gradients(exact_elbo, names, z_kind="bernoulli")
    torch.testing.assert_close(-loss.detach(), value, rtol=1e-5, atol=1e-4)
    for name, g in zip(names, grads):
        torch.testing.assert_close(g, exact[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec, enumerate_guide", [("enum", True), ("tracegraph", False), ("elbo", False)])
def test_elbo_gradients_of_mixed_discrete_and_gaussian_latents_are_unbiased(spec, enumerate_guide):
    mean, se, _ = estimated_gradients(spec, list(INIT), enumerate_guide=enumerate_guide)
    _, exact = exact_gradients(exact_elbo, list(INIT))
    assert_within(mean, se, exact, list(INIT), spec)


def test_vimco_gradient_is_the_two_sample_bounds_and_k1_is_refused():
    mean, se, _ = estimated_gradients("vimco:k=2", list(INIT))
    _, exact = exact_gradients(exact_two_sample, list(INIT))
    assert_within(mean, se, exact, list(INIT), "vimco")
    with pytest.raises(ValueError, match="vimco needs k >= 2: the control variate of each sample is built from the other"):
        get_objective("vimco:k=1")


def test_rws_model_gradient_is_the_bounds_and_guide_gradient_the_wake_phases():
    mean, se, _ = estimated_gradients("rws:k=2", list(INIT))
    _, exact_model = exact_gradients(exact_two_sample, MODEL_PARAMS)
    _, exact_guide = exact_gradients(exact_two_sample, GUIDE_PARAMS, wake_guide=True)
    assert_within(mean, se, {**exact_model, **exact_guide}, list(INIT), "rws")


def test_the_quadrature_is_converged():
    p = {n: v.clone() for n, v in INIT.items()}
    assert abs(exact_two_sample(p, X, n=40) - exact_two_sample(p, X, n=60)) < 1e-4


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_rws_sleep_phase_vanishes_at_the_exact_posterior_and_pulls_a_shifted_guide_back(shift):
    from ppl_vae.objectives.score_function import sleep_log_q

    from helpers import AffineGuide, diagonal_posterior_linear_gaussian

    lg = diagonal_posterior_linear_gaussian()
    guide = AffineGuide(6, 3, lg)
    with torch.no_grad():
        guide.c += shift
    x = torch.zeros(2000, 6)  # the sleep phase dreams its own x; only the batch size is read
    pyro.set_rng_seed(1)
    draws = torch.stack([torch.autograd.grad(sleep_log_q(lg, guide, x) / 2000, guide.c)[0] for _ in range(20)])
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(20)
    if shift == 0:
        assert (mean.abs() < 4 * se + 1e-4).all(), (mean, se)
    else:  # d/dc E log q(z | x) at draws of p: pulls c back toward the exact posterior's (negative here)
        assert (mean < -10 * se).all(), (mean, se)
    with pytest.raises(ValueError, match=r"insomnia .* must be in \[0, 1\]"):
        get_objective("rws:k=2,insomnia=1.5")


@pytest.mark.parametrize(
    "spec, enumerate_guide", [("enum", True), ("tracegraph", False), ("vimco:k=3", False), ("rws:k=3,insomnia=0.5", False)]
)
def test_each_trains_a_mixed_pair_through_the_trainer_and_is_scored(spec, enumerate_guide):
    from ppl_vae import TrainConfig, Trainer, log_px

    model, guide = make_pair("normal", enumerate_guide)
    x = X.repeat(40, 1) + 0.1 * torch.randn(120, 2, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(epochs=4, batch_size=40, lr=0.02, device="cpu", progress=False, eval_every=0, objective=spec)
    history = Trainer(model, guide, config).fit(x)
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # the bound's value, not the surrogate's
    assert -6 < log_px(model, guide, x[:10], k=50).log_px < 0


def test_a_reparameterised_only_objective_names_those_that_fit():
    model, guide = make_pair()
    with pytest.raises(
        ValueError, match="needs a reparameterisable guide .* use vimco:k=K or rws:k=K .* tracegraph or elbo .* enum"
    ):
        get_objective("iwae:k=2").differentiable_loss(model, guide, X)
