"""CUDA runs of the trainer and the estimator; skipped cleanly without a GPU."""

import pytest
import torch

from ppl_vae import TrainConfig, Trainer, log_px
from ppl_vae.data import load_dataset
from ppl_vae.device import resolve_device
from ppl_vae.guides import MeanFieldGuide
from ppl_vae.models import VAE

from conftest import requires_cuda
from helpers import ShiftedPosteriorGuide, correlated_linear_gaussian


def test_asking_for_cuda_without_one_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


@requires_cuda
def test_estimator_on_cuda_matches_the_exact_marginal():
    lg = correlated_linear_gaussian().cuda()
    x = lg.sample_data(200, seed=1)
    assert x.is_cuda
    est = log_px(lg, lg.exact_guide, x, k=64)
    assert torch.allclose(est.per_point, lg.log_marginal(x).cpu(), atol=5e-4)
    mismatched = log_px(lg, ShiftedPosteriorGuide(lg), x, k=2000, chunk_k=500)
    assert abs(mismatched.log_px - lg.log_marginal(x).mean().item()) < 3 * mismatched.mc_se + 0.01


@requires_cuda
@pytest.mark.parametrize("objective", ["elbo", "iwae:k=5"])
def test_training_on_cuda_keeps_data_on_the_device(objective):
    data = load_dataset("mnist5k")
    model, guide = VAE(z_dim=5, hidden=(64,)), MeanFieldGuide(z_dim=5, hidden=(64,))
    trainer = Trainer(
        model, guide, TrainConfig(epochs=2, objective=objective, device="cuda", eval_every=1, eval_k=10, progress=False)
    )
    history = trainer.fit(data.train.x[:1000], data.eval_x("val")[:200], dynamic=True)
    assert next(model.parameters()).is_cuda
    assert history[-1]["val_elbo"] > history[0]["val_elbo"]


@requires_cuda
@pytest.mark.parametrize("prior", ["normal", "vamp", "flow", "acn"])
def test_every_prior_trains_and_is_reported_on_cuda(prior):
    from ppl_vae.scoring import score

    data = load_dataset("mnist5k")
    model = VAE(z_dim=4, hidden=(64,), prior=prior)
    guide = MeanFieldGuide(z_dim=4, hidden=(64,))
    model.attach_guide(guide)
    trainer = Trainer(model, guide, TrainConfig(epochs=1, objective="iwae:k=3", device="cuda", eval_every=0, progress=False))
    trainer.fit(data.train.x[:500], data.eval_x("val")[:100], dynamic=True)
    trainer.set_training(False)
    report = score(model, guide, data.eval_x("test", "cuda")[:100], level="full", k=50)
    assert torch.isfinite(torch.tensor(report["log_px"])) and report["k"] == 50


@requires_cuda
@pytest.mark.parametrize("objective", ["elbo", "iwae:k=50", "dreg:k=5,warmup=20"])
def test_compiled_step_on_cuda_lands_where_the_eager_step_does(objective):
    """The CUDA-graph replay of the captured step against the eager step: 3 epochs of 40 steps."""
    x = load_dataset("mnist5k").train.x
    states = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        model, guide = VAE(z_dim=5, hidden=(64,)), MeanFieldGuide(z_dim=5, hidden=(64,))
        cfg = TrainConfig(
            epochs=3, batch_size=100, eval_every=0, progress=False, device="cuda", objective=objective, compile=mode
        )
        trainer = Trainer(model, guide, cfg)
        trainer.fit(x, None, dynamic=True)
        assert trainer.step_fn.compiled == (mode == "on"), trainer.step_fn.reason
        assert (trainer.deferred is not None) == (mode == "on")  # no host read per step under the CUDA graphs
        states[mode] = trainer.state_dict()
    assert max(float((states["on"][k] - states["off"][k]).abs().max()) for k in states["on"]) < 1e-2


@requires_cuda
def test_compiled_log_px_on_cuda_equals_eager():
    lg = correlated_linear_gaussian().cuda()
    x = lg.sample_data(300, seed=1)
    torch.manual_seed(3)
    eager = log_px(lg, ShiftedPosteriorGuide(lg), x, k=400, chunk_k=100, compile="off")
    torch.manual_seed(3)
    compiled = log_px(lg, ShiftedPosteriorGuide(lg), x, k=400, chunk_k=100, compile="on")
    assert torch.allclose(compiled.per_point, eager.per_point, atol=1e-3)


# --------------------------------------------------------------------------- the compiled step on CUDA

CUDA_STEPS = [
    ("elbo", "vae", "mean_field"),
    ("meanfield", "vae", "mean_field"),
    ("iwae:k=50", "vae", "mean_field"),
    ("dreg:k=50", "vae", "mean_field"),
    ("iwae:k=50", "hierarchical", "hierarchical"),
    ("dreg:k=50", "hierarchical", "hierarchical_iaf"),
    ("iwae:k=5", "vae", "iaf"),
    ("elbo", "vae", "full_cov"),
    ("elbo:warmup=20", "vae", "mean_field"),
]


@requires_cuda
@pytest.mark.parametrize("objective, model_name, guide_name", CUDA_STEPS)
def test_the_cuda_graph_step_is_accepted_and_is_the_eager_step(objective, model_name, guide_name):
    """The recorded step replayed as one CUDA graph: accepted by its own same-draws check, and on two
    further draws the same loss, gradients and Adam update as the eager step (tests/test_step.py's
    tolerances)."""
    import pyro
    from test_step import assert_same_step

    from ppl_vae import get_objective
    from ppl_vae.pair import build_pair

    pyro.set_rng_seed(0)
    layers = {"z_dims": (8, 4), "hidden": ((32,), (16,))} if model_name == "hierarchical" else {"z_dim": 4, "hidden": (32,)}
    model, guide = build_pair({"model": model_name, "guide": guide_name, "model_kwargs": layers, "guide_kwargs": layers}, 64)
    model, guide = model.cuda(), guide.cuda()
    x = torch.bernoulli(torch.rand(32, 64, generator=torch.Generator().manual_seed(0))).cuda()
    step = assert_same_step(get_objective(objective), model, guide, x, backend="cudagraph")
    assert step.reason == "compiled (cudagraph)"


@requires_cuda
def test_a_users_own_pair_compiles_on_cuda():
    import pyro
    import pyro.distributions as dist
    from test_step import assert_same_step
    from torch import nn

    from ppl_vae import get_objective

    decoder, encoder = nn.Linear(2, 64).cuda(), nn.Linear(64, 4).cuda()

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        loc, raw = encoder(x).split(2, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    x = torch.bernoulli(torch.full((16, 64), 0.3)).cuda()
    assert_same_step(get_objective("iwae:k=8"), model, guide, x, backend="cudagraph")


@requires_cuda
@pytest.mark.parametrize("layers", [1, 2])
def test_compiled_log_px_of_burdas_networks_on_cuda_equals_eager(layers):
    """The chunks of log p(x) replayed as CUDA graphs keep eager's draws (inductor's did not, on an H200)."""
    import pyro

    from ppl_vae.guides import HierarchicalGuide, MeanFieldGuide
    from ppl_vae.models import HierarchicalVAE

    pyro.set_rng_seed(0)
    if layers == 1:
        model, guide = (
            VAE(z_dim=50, hidden=(200, 200), activation="tanh"),
            MeanFieldGuide(z_dim=50, hidden=(200, 200), activation="tanh"),
        )
    else:
        model, guide = HierarchicalVAE(), HierarchicalGuide()
    model, guide = model.cuda(), guide.cuda()
    x = torch.bernoulli(load_dataset("mnist5k").test.x[:300]).cuda()
    runs = {}
    for mode in ("off", "on"):
        torch.manual_seed(3)
        runs[mode] = log_px(model, guide, x, k=200, chunk_k=100, batch_size=100, compile=mode, seed=4)
    assert torch.allclose(runs["on"].per_point, runs["off"].per_point, atol=1e-3)
