"""The CUDA path's parts that a CPU can test: the compile options used on CUDA, the fallbacks when the
compiler raises at the call, the compile or the first replay, the backend choice and the TF32 policy."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import TrainConfig, Trainer, get_objective, log_px
from ppl_vae import capture as capture_module
from ppl_vae.capture import inductor_settings, resolve_backend
from ppl_vae.device import tf32_matmul
from ppl_vae.guides import MeanFieldGuide
from ppl_vae.models import VAE
from ppl_vae.step import EagerStep, make_step

from helpers import AffineGuide

X_DIM = 16


def _data(n=40, seed=0):
    return torch.bernoulli(torch.rand(n, X_DIM, generator=torch.Generator().manual_seed(seed)))


def _pair():
    pyro.set_rng_seed(0)
    return VAE(x_dim=X_DIM, z_dim=2, hidden=(8,)), MeanFieldGuide(x_dim=X_DIM, z_dim=2, hidden=(8,))


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_the_option_sets_of_every_device_pass_through_torch_compile(device_type):
    """torch validates mode/options at the call, on any device: the CUDA set is checked here on the CPU
    (the crash measured on an H200 was mode and options given together)."""
    with warnings.catch_warnings():  # torch's compiler, loaded on its first call, imports modules that warn of themselves
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = torch.compile(lambda t: t * 2 + 1, **inductor_settings(device_type))
        assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 3.0))
        assert "mode" not in inductor_settings(device_type)
        with pytest.raises(RuntimeError, match="Either mode or options"):  # the old, crashing combination
            torch.compile(lambda t: t, mode="reduce-overhead", options={"fallback_random": True})


def test_the_backend_is_inductor_on_the_cpu_and_a_cuda_graph_on_cuda():
    assert resolve_backend("auto", torch.device("cpu")) == "inductor"
    assert resolve_backend("auto", torch.device("cuda", 0)) == "cudagraph"
    assert resolve_backend("graph", torch.device("cuda", 0)) == "graph"
    with pytest.raises(ValueError, match="needs tensors on a CUDA device"):
        resolve_backend("cudagraph", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("tensorrt", torch.device("cpu"))


def _raising(message):
    def fail(*args, **kwargs):
        raise RuntimeError(message)

    return fail


def test_a_compiler_that_raises_at_the_call_falls_back_to_the_eager_step(monkeypatch):
    monkeypatch.setattr(torch, "compile", _raising("Either mode or options can be specified, but both can't be"))
    model, guide = _pair()
    trainer = Trainer(model, guide, TrainConfig(epochs=2, batch_size=10, compile="on", eval_every=0, progress=False))
    lines = []
    monkeypatch.setattr("ppl_vae.progress.write", lines.append)
    history = trainer.fit(_data(), None)
    assert isinstance(trainer.step_fn, EagerStep) and len(history) == 2
    assert "torch.compile refused the graph: RuntimeError: Either mode or options" in trainer.step_fn.reason
    assert len(lines) == 1 and "training with the eager step" in lines[0]


def test_a_replay_that_raises_on_its_first_call_falls_back_to_the_eager_step(monkeypatch):
    """A CUDA graph is captured on its first call: its errors (a host copy during capture, say) come
    with the first replay, which the same guard covers."""
    monkeypatch.setattr(
        capture_module, "compile_graph", lambda *a, **k: _raising("operation not permitted when stream is capturing")
    )
    model, guide = _pair()
    objective, x = get_objective("elbo"), _data(10)
    trainer = Trainer(model, guide, TrainConfig(progress=False, compile="off"), objective=objective)
    trainer._capture_params(x)
    params = list(trainer.params.values())
    lines = []
    step = make_step("on", objective, model, guide, params, x, steps_to_go=10, log=lines.append)
    assert isinstance(step, EagerStep) and "operation not permitted when stream is capturing" in step.reason
    assert all(p.grad is None for p in params)  # nothing of the failed replay is left behind
    step(x)
    assert all(p.grad is not None for p in params)


@pytest.mark.parametrize("where", ["the call", "the first replay"])
def test_log_px_chunks_fall_back_when_the_compiler_or_the_first_replay_raises(monkeypatch, where):
    model, guide = _pair()
    x = _data(12)
    torch.manual_seed(1)
    eager = log_px(model, guide, x, k=6, chunk_k=3, compile="off")
    if where == "the call":
        monkeypatch.setattr(torch, "compile", _raising("inductor exploded"))
    else:
        monkeypatch.setattr(capture_module, "compile_graph", lambda *a, **k: _raising("replay exploded"))
    lines = []
    monkeypatch.setattr("ppl_vae.progress.write", lines.append)
    torch.manual_seed(1)
    fallen = log_px(model, guide, x, k=6, chunk_k=3, compile="on")
    assert torch.allclose(fallen.per_point, eager.per_point)  # the eager chunks, on the same draws
    assert lines and all("run eagerly" in line and "exploded" in line for line in lines)


class _PrecisionProbe(nn.Module):
    """A linear-Gaussian pair that records the TF32 setting each time the model runs, by mode."""

    def __init__(self):
        super().__init__()
        self.dec = nn.Linear(2, X_DIM)
        self.seen = {"train": set(), "eval": set()}

    def forward(self, x):
        self.seen["train" if self.training and torch.is_grad_enabled() else "eval"].add(torch.backends.cuda.matmul.allow_tf32)
        pyro.module("model", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_is_used_only_in_training_steps_and_only_when_asked(tf32):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    model, guide = _PrecisionProbe(), AffineGuide(X_DIM, 2)
    x = torch.randn(40, X_DIM)
    cfg = TrainConfig(epochs=2, batch_size=10, eval_every=1, eval_k=4, progress=False, tf32=tf32, compile="off")
    Trainer(model, guide, cfg).fit(x, x[:10])
    assert model.seen["train"] == {tf32}
    assert model.seen["eval"] == {False}  # validation ELBO and log p(x) in full float32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with tf32_matmul(True):  # a caller's global setting does not reach log p(x) unless asked
        model.seen["eval"].clear()
        log_px(model, guide, x[:5], k=3)
        assert model.seen["eval"] == {False} and torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(ValueError, match="k \\(importance samples\\)"):
        log_px(model, guide, x[:5], k=0)
