"""The compiled step is the eager step, faster: same loss, same gradients, same Adam update on the
same draws, for every objective, built-in pair and a user's own pair; what cannot be captured
falls back to the eager step with a reason."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import TrainConfig, Trainer, get_objective
from ppl_vae.pair import build_pair
from ppl_vae.step import CompiledStep, EagerStep, make_step

from helpers import AffineGuide

X_DIM, BATCH = 64, 16
LR = 1e-2
# Tolerances (float32). Loss: relative 1e-5. Gradients: 1e-5 of the parameter's largest gradient
# (inductor's fused sums round differently; measured up to 3e-6). Adam's update: 1e-2 * lr, since its
# first step is lr * g / (|g| + eps) and an element whose gradient is near zero changes size on rounding
# (measured up to 6e-3 * lr with inductor; the plain graph replays the eager operations exactly).
LOSS_RTOL, GRAD_RTOL, UPDATE_ATOL = 1e-5, 1e-5, 1e-2 * LR


def _data(n=BATCH, seed=0):
    return torch.bernoulli(torch.rand(n, X_DIM, generator=torch.Generator().manual_seed(seed)))


def _params(objective, model, guide, x):
    trainer = Trainer(model, guide, TrainConfig(progress=False, compile="off", device=str(x.device)), objective=objective)
    trainer._capture_params(x)
    return list(trainer.params.values())


def _one_update(step, params, x, seed):
    """Loss, gradients and parameters after one Adam step from a fixed start and a fixed seed."""
    start = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=LR)
    torch.manual_seed(seed)
    loss = step(x)
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    opt.step()
    after = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    return loss, grads, after


def assert_same_step(objective, model, guide, x, backend="graph"):
    params = _params(objective, model, guide, x)
    eager = EagerStep(objective, model, guide, params)
    compiled = CompiledStep(objective, model, guide, params, backend=backend, log=pytest.fail)
    compiled.prepare(x)  # capture and its own verification
    for seed in (1, 2):  # two draws: the graph is replayed, not only traced
        loss_e, grads_e, after_e = _one_update(eager, params, x, seed)
        loss_c, grads_c, after_c = _one_update(compiled, params, x, seed)
        assert torch.allclose(loss_c, loss_e, rtol=LOSS_RTOL), (float(loss_c), float(loss_e))
        for ge, gc in zip(grads_e, grads_c):
            assert (ge is None) == (gc is None)
            if ge is not None:
                assert (gc - ge).abs().max() <= GRAD_RTOL * ge.abs().max().clamp(min=1e-3)
        for a, b in zip(after_c, after_e):
            assert (a - b).abs().max() <= UPDATE_ATOL
    return compiled


def _vae(**kw):
    pyro.set_rng_seed(0)
    return build_pair(
        {
            "model": "vae",
            "guide": "mean_field",
            "model_kwargs": {"z_dim": 3, "hidden": (16,), **kw},
            "guide_kwargs": {"z_dim": 3, "hidden": (16,)},
        },
        X_DIM,
    )


OBJECTIVES = [
    "elbo",
    "meanfield",
    "iwae:k=4",
    "vr:alpha=0.5,k=3",
    "dreg:k=4",
    "stl",
    "stl:k=2",
    "elbo:beta=4",
    "iwae:k=3,warmup=100",
    "elbo:free_bits=0.5",
    "meanfield:free_bits=0.2,free_bits_per=dim",
    "jit_elbo",
    "infovae:lam=10",
    "infovae:lam=10,kernel=rbf,warmup=50",
    "wae_mmd",
    "swae:projections=5",
    "cwae",
    "sparse_ae",
]


@pytest.mark.parametrize("spec", OBJECTIVES)
def test_every_objective_compiles_to_the_same_step(spec):
    assert_same_step(get_objective(spec), *_vae(), _data())


PAIRS = [
    ("vae", "full_cov", {}),
    ("vae", "iaf", {}),
    ("vae", "householder", {}),
    ("vae", "planar", {}),
    ("vae", "radial", {}),
    ("hierarchical", "hierarchical", {}),
    ("hierarchical", "hierarchical_iaf", {}),
]


@pytest.mark.parametrize("model_name, guide_name, kw", PAIRS)
def test_every_built_in_guide_and_the_hierarchical_model_compile(model_name, guide_name, kw):
    pyro.set_rng_seed(0)
    if model_name == "hierarchical":
        layers = {"z_dims": (4, 2), "hidden": ((16,), (8,))}
        spec = {"model": model_name, "guide": guide_name, "model_kwargs": layers, "guide_kwargs": layers}
    else:
        small = {"z_dim": 3, "hidden": (16,)}
        spec = {"model": model_name, "guide": guide_name, "model_kwargs": small, "guide_kwargs": {**small, **kw}}
    model, guide = build_pair(spec, X_DIM)
    assert_same_step(get_objective("iwae:k=3"), model, guide, _data())


@pytest.mark.parametrize("spec", ["wae_mmd", "swae:projections=5", "cwae", "radial", "sparse_ae"])
def test_a_deterministic_encoder_compiles(spec):
    pyro.set_rng_seed(0)
    small = {"z_dim": 3, "hidden": (16,)}
    model, guide = build_pair({"model": "vae", "guide": "deterministic", "model_kwargs": small, "guide_kwargs": small}, X_DIM)
    assert_same_step(get_objective(spec), model, guide, _data())


@pytest.mark.parametrize("prior", ["vamp", "flow", "acn"])
def test_every_prior_compiles(prior):
    model, guide = _vae(prior=prior)
    if prior == "acn":
        model.refresh(_data(40, seed=3))  # the code bank, a buffer the graph reads as an input
    assert_same_step(get_objective("elbo"), model, guide, _data())


@pytest.mark.parametrize("likelihood", ["gaussian", "continuous_bernoulli"])
def test_continuous_likelihoods_compile(likelihood):
    x = torch.rand(BATCH, X_DIM, generator=torch.Generator().manual_seed(0))
    assert_same_step(get_objective("elbo"), *_vae(likelihood=likelihood), x)


def test_a_user_written_pair_and_pyro_example_style_methods_compile():
    """A plain model function with a pixel plate and a module guide; a module with model/guide methods."""
    decoder = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, X_DIM))
    encoder = nn.Linear(X_DIM, 4)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(x.new_zeros(1, 2), 1.0).to_event(1))
            with pyro.plate("pixels", X_DIM, dim=-1):
                pyro.sample("x", dist.Bernoulli(logits=decoder(z).squeeze(-2)), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc, raw = encoder(x).unsqueeze(-2).split(2, -1)
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))

    assert_same_step(get_objective("elbo"), model, guide, _data())
    assert_same_step(get_objective("dreg:k=3"), model, guide, _data())

    class ExampleVAE(nn.Module):  # as in Pyro's examples/vae/vae.py: one module, two methods
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(X_DIM, 4)
            self.dec = nn.Linear(2, X_DIM)

        def model(self, x):
            pyro.module("decoder", self)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=self.dec(z)).to_event(1), obs=x)

        def guide(self, x):
            pyro.module("encoder", self)
            loc, raw = self.enc(x).split(2, -1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    vae = ExampleVAE()
    assert_same_step(get_objective("iwae:k=3"), vae.model, vae.guide, _data())


def test_a_pyro_param_with_a_constraint_compiles():
    loc = nn.Linear(X_DIM, 2)

    def guide(x):
        pyro.module("enc", loc)
        scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc(x), scale).to_event(1))

    decoder = nn.Linear(2, X_DIM)

    def model(x):
        pyro.module("dec", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    assert_same_step(get_objective("elbo"), model, guide, _data())


def test_inductor_compiled_step_matches_the_eager_step():
    assert_same_step(get_objective("iwae:k=4"), *_vae(), _data(), backend="inductor")


def test_data_dependent_control_flow_falls_back_with_the_reason():
    decoder = nn.Linear(2, X_DIM)

    def model(x):
        pyro.module("dec", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            logits = decoder(z)
            if logits.mean() > 0:  # a branch on a value: no single graph holds it
                logits = -logits
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    guide = AffineGuide(X_DIM, 2)
    objective = get_objective("elbo")
    x = _data()
    params = _params(objective, model, guide, x)
    lines = []
    step = make_step("on", objective, model, guide, params, x, steps_to_go=10, log=lines.append)
    assert isinstance(step, EagerStep)
    assert "reads a tensor's value in Python" in step.reason and len(lines) == 1
    step(x)  # and it still trains
    assert all(p.grad is not None for p in params)


def test_auto_compiles_only_runs_long_enough_to_repay_it():
    objective = get_objective("elbo")
    model, guide = _vae()
    x = _data()
    params = _params(objective, model, guide, x)
    assert isinstance(make_step("auto", objective, model, guide, params, x, steps_to_go=50), EagerStep)
    assert isinstance(make_step("off", objective, model, guide, params, x, steps_to_go=10**6), EagerStep)
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(compile="yes")


def _train(compile, epochs, out=None, n=250, objective="elbo", resume=False, seed=0):
    model, guide = _vae()
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=20,
        lr=3e-3,
        eval_every=0,
        progress=False,
        compile=compile,
        out=out,
        objective=objective,
        seed=seed,
    )
    trainer = Trainer(model, guide, cfg)
    trainer.fit(_data(n, seed=7).mul(0.8).add(0.1), None, dynamic=True, resume=resume)  # intensities
    return trainer


def test_a_few_hundred_compiled_steps_land_where_the_eager_steps_do():
    # 250 points at batch 20: 12 full batches and one of 10, a second shape captured mid-epoch
    eager, compiled = _train("off", 25), _train("on", 25)
    assert compiled.step == eager.step == 325 and compiled.step_fn.compiled
    assert len(compiled.step_fn.graphs) == 2
    e, c = eager.state_dict(), compiled.state_dict()
    # 325 Adam steps amplify float rounding (measured: largest difference 2e-5)
    assert max(float((e[k] - c[k]).abs().max()) for k in e) < 1e-3
    assert abs(eager.history[-1]["train_loss"] - compiled.history[-1]["train_loss"]) < 1e-2


def test_a_resumed_compiled_run_equals_an_uninterrupted_one(tmp_path):
    straight = _train("on", 4, out=str(tmp_path / "a"))
    _train("on", 2, out=str(tmp_path / "b"))
    resumed = _train("on", 4, out=str(tmp_path / "b"), resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.history == [{**r, "seconds": s["seconds"]} for r, s in zip(resumed.history, straight.history)]


# --------------------------------------------------------------------------- evaluation


# the hierarchical pair compiles 4 graphs cold in ~35 s: slow tier; the VAE keeps the check in the default one
@pytest.mark.parametrize("which", ["vae", pytest.param("hierarchical", marks=pytest.mark.slow)])
def test_compiled_log_px_equals_eager_log_px_on_the_same_seed(which):
    from ppl_vae import log_px
    from ppl_vae.importance_sampling import _GRAPHS

    pyro.set_rng_seed(0)
    if which == "vae":
        model, guide = _vae()
    else:
        layers = {"z_dims": (4, 2), "hidden": ((16,), (8,))}
        model, guide = build_pair(
            {"model": "hierarchical", "guide": "hierarchical", "model_kwargs": layers, "guide_kwargs": layers}, X_DIM
        )
    x = _data(30)
    estimates = {}
    for mode in ("off", "on", "on"):
        pyro.set_rng_seed(5)
        estimates.setdefault(mode, []).append(
            log_px(model, guide, x, k=50, chunk_k=20, batch_size=16, compile=mode, ladder=(1, 10))
        )
    eager, (first, again) = estimates["off"][0], estimates["on"]
    # same draws, same operations: float32 agreement (measured: 2e-6 nats)
    assert torch.allclose(first.per_point, eager.per_point, atol=1e-3)
    assert torch.equal(first.per_point, again.per_point)
    assert first.iwae_by_k.keys() == eager.iwae_by_k.keys()
    # chunks 20, 20, 10 particles x batches 16, 14 points: 4 shapes, captured once and kept with the guide
    assert len(_GRAPHS[guide]) == 4


def test_log_px_of_a_pair_that_cannot_be_captured_runs_eagerly():
    from ppl_vae import log_px
    from ppl_vae.importance_sampling import LogWeights

    decoder = nn.Linear(2, X_DIM)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            logits = decoder(z)
            if float(logits.mean()) > 1e9:  # reads a value back to Python
                logits = logits - 1
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    guide = AffineGuide(X_DIM, 2)
    lines = []
    with torch.no_grad():
        lw = LogWeights(model, guide, 1, compiled=True, log=lines.append)(_data(), 5)
    assert lw.shape == (5, BATCH) and len(lines) == 1 and "run eagerly" in lines[0]
    assert log_px(model, guide, _data(), k=10, compile="on").k == 10


# --------------------------------------------------------------------------- the deferred NaN guard


def _guarded_run(nan_check, policy="skip", bad_step=3, persistent=False, out=None, epochs=3):
    from ppl_vae.data import load_dataset
    from ppl_vae.guides import MeanFieldGuide

    from helpers import PoisonedDecoderVAE

    d = load_dataset("digits")
    pyro.set_rng_seed(0)
    model, guide = PoisonedDecoderVAE(bad_step=bad_step, persistent=persistent), MeanFieldGuide(x_dim=64, z_dim=3, hidden=(16,))
    cfg = TrainConfig(epochs=epochs, batch_size=50, progress=False, eval_every=0, nan_policy=policy, nan_check=nan_check, out=out)
    trainer = Trainer(model, guide, cfg)
    trainer.fit(d.train.x[:200], None, dynamic=True)
    return trainer


def test_deferred_skip_is_exactly_the_per_step_skip():
    """A bad step undone on the device (parameters and Adam's state put back) is a skipped step."""
    step, deferred = _guarded_run("step"), _guarded_run("deferred")
    assert deferred.deferred is not None and step.deferred is None
    a, b = step.state_dict(), deferred.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (
        [h.get("skipped_batches") for h in deferred.history]
        == [h.get("skipped_batches") for h in step.history]
        == [1, None, None]
    )
    assert [h["train_loss"] for h in deferred.history] == pytest.approx([h["train_loss"] for h in step.history], rel=1e-6)


def test_deferred_skip_of_the_very_first_step_leaves_adam_fresh():
    step, deferred = _guarded_run("step", bad_step=1), _guarded_run("deferred", bad_step=1)
    a, b = step.state_dict(), deferred.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_deferred_stop_names_the_bad_step_and_applies_no_bad_update(tmp_path):
    from ppl_vae import TrainingError
    from ppl_vae.checkpoint import load_checkpoint

    with pytest.raises(TrainingError) as info:
        _guarded_run("deferred", policy="stop", bad_step=6, persistent=True, out=str(tmp_path))
    message = str(info.value)
    # 4 steps an epoch: step 6 is found at the epoch's end (step 8), before its checkpoint
    assert "non-finite loss or gradient at step 6 (found at step 8" in message and "No non-finite step was applied" in message
    assert "model site 'x'" in message and "last good checkpoint" in message
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
