r"""The training step: one minibatch's loss and gradients, eager or compiled.

The loop (:mod:`ppl_vae.train`) calls ``step(x)``, which returns the detached loss and
leaves each parameter's gradient in ``.grad``; the optimizer, the NaN guard and the
checkpoints stay in the loop. Two steps share that interface:

- :class:`EagerStep` runs the objective's Pyro code (guide trace, model replay,
  per-point log-weights) and ``backward`` every step.
- :class:`CompiledStep` runs that Python once per input shape under
  ``make_fx``, which records the forward *and* backward as one graph of tensor
  operations, with the data, the parameters, the modules' buffers and the
  objective's changing scalars (the KL warm-up's beta) as inputs. The graph is then
  compiled (:mod:`ppl_vae.capture`: inductor on the CPU, one CUDA graph of eager's own
  kernels on CUDA) and replayed. Random draws stay torch's own random operations, so the
  compiled step consumes the generators exactly as the eager one does: the same seed
  gives the same draws, and resume stays exact.

Capture is verified: on the first batch of each shape the graph and the eager step run
on the same draws and must agree. Anything that cannot be captured (a value read back
to Python to choose a branch, a host sync, an unsupported operation), that the compiler
raises on (at the call, the compile or the first replay) or that disagrees falls back to
the eager step with one line saying why: a compile problem never ends a run.
"""

from __future__ import annotations

import warnings

import torch

from . import hooks
from .capture import CaptureError, buffers_of, capture_graph, resolve_backend, same_draws, why
from .config import COMPILE_MODES

# 'auto' compiles a run only when it has at least this many steps to go: on 2 CPU cores a
# capture and inductor compile cost 5-20 s, about 3,000 eager steps of the default VAE
AUTO_MIN_STEPS = 2000
MAX_SHAPES = 4


class EagerStep:
    """The objective's ``differentiable_loss`` and ``backward``, run in Python every step."""

    compiled = False
    reason = "compile off"

    def __init__(self, objective, model, guide, params: list[torch.Tensor]):
        self.objective, self.model, self.guide, self.params = objective, model, guide, params

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        loss = self.objective.differentiable_loss(self.model, self.guide, x)
        # the gradients of these parameters only: parameters held fixed (TrainConfig.model_from) get none
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        for p, g in zip(self.params, grads):
            p.grad = g
        return loss.detach()


class CompiledStep:
    """Loss and gradients from a graph captured once per input shape (see the module docstring).

    ``backend`` (:data:`ppl_vae.capture.BACKENDS`): ``"auto"`` is inductor on the CPU and a CUDA
    graph of the recorded aten graph on CUDA; ``"graph"`` replays the recorded graph as it is (no
    compiler). ``verify`` compares the first replay of each shape with the eager step on the same
    draws, to ``rtol``.
    """

    compiled = True

    def __init__(
        self,
        objective,
        model,
        guide,
        params: list[torch.Tensor],
        backend: str = "auto",
        verify: bool = True,
        rtol: float = 1e-3,
        log=print,
    ):
        device = params[0].device if params else torch.device("cpu")
        self.backend = resolve_backend(backend, device)
        self.eager = EagerStep(objective, model, guide, params)
        self.objective, self.model, self.guide, self.params = objective, model, guide, params
        self.verify, self.rtol, self.log = verify, rtol, log
        self.graphs: dict[tuple, tuple | None] = {}
        self.reason = f"compiled ({self.backend})"

    # ------------------------------------------------------------------ capture

    def _state(self) -> list[torch.Tensor]:
        """Tensors that change between steps without being parameters: buffers and the objective's scalars."""
        return buffers_of(self.model, self.guide) + hooks.state_tensors(self.objective)

    def _capture(self, x: torch.Tensor, state: list[torch.Tensor]):
        n_state = len(state)
        used: list[bool] = []

        def step(x, *inputs):
            ps = inputs[n_state:]
            loss = self.objective.differentiable_loss(self.model, self.guide, x)
            grads = torch.autograd.grad(loss, ps, allow_unused=True)
            used[:] = [g is not None for g in grads]
            return (loss.detach(), *[g for g in grads if g is not None])

        return capture_graph(step, [x, *state, *self.params], self.backend), used

    def _run(self, graph, used, x, state) -> torch.Tensor:
        with torch.no_grad():
            out = graph(x, *state, *self.params)
        grads = iter(out[1:])
        for p, u in zip(self.params, used):
            p.grad = next(grads) if u else None
        return out[0].clone() if self.backend == "cudagraph" else out[0]  # the next replay overwrites its outputs

    def _check(self, graph, used, x, state) -> None:
        """Compiled and eager on the same draws: the loss and every gradient agree to ``rtol``."""
        with same_draws(x.device):
            eager_loss = self.eager(x)
            eager_grads = [None if p.grad is None else p.grad.clone() for p in self.params]
        with same_draws(x.device):
            loss = self._run(graph, used, x, state)
        bad = []
        if not torch.allclose(loss, eager_loss, rtol=self.rtol, atol=self.rtol):
            bad.append(f"loss {float(loss):.6g} vs eager {float(eager_loss):.6g}")
        for i, (p, g) in enumerate(zip(self.params, eager_grads)):
            if (p.grad is None) != (g is None):
                bad.append(f"parameter {i} has a gradient in one step only")
            elif g is not None:
                scale = g.abs().max().clamp(min=1.0)
                if not ((p.grad - g).abs().max() <= self.rtol * scale):
                    bad.append(f"gradient of parameter {i} differs by {float((p.grad - g).abs().max()):.3g}")
        for p in self.params:
            p.grad = None
        if bad:
            raise CaptureError("the compiled step disagrees with the eager one on the same draws: " + "; ".join(bad[:3]))

    def prepare(self, x: torch.Tensor) -> None:
        """Capture, compile and verify (or first replay) the graph for ``x``'s shape; anything that
        fails on the way raises :class:`CaptureError` with the reason."""
        key = (tuple(x.shape), x.dtype, x.device)
        if key in self.graphs:
            return
        if len(self.graphs) >= MAX_SHAPES:
            raise CaptureError(f"more than {MAX_SHAPES} input shapes (the batch shape keeps changing)")
        state = self._state()
        # torch's compiler, loaded and run here (the first call compiles), imports modules that
        # warn of their own deprecation
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                graph, used = self._capture(x, state)
                if self.verify:
                    self._check(graph, used, x, state)
                else:
                    with same_draws(x.device):
                        self._run(graph, used, x, state)
            except CaptureError:
                for p in self.params:
                    p.grad = None
                raise
            except Exception as err:  # the compiler raising at the call, the compile or the first replay
                for p in self.params:
                    p.grad = None
                raise CaptureError(why(err)) from None
        self.graphs[key] = (graph, used)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self.graphs:
            try:
                with same_draws(x.device):  # capturing draws no numbers the eager step would not
                    self.prepare(x)
            except CaptureError as err:
                self.graphs[key] = None
                self.log(f"ppl_vae: batches of shape {tuple(x.shape)} run eagerly: {err}")
        entry = self.graphs[key]
        if entry is None:
            return self.eager(x)
        return self._run(*entry, x, self._state())


def make_step(mode: str, objective, model, guide, params: list[torch.Tensor], example: torch.Tensor, steps_to_go: int, log=print):
    """The step for ``mode`` (``auto``/``on``/``off``), captured on ``example`` where compiled.

    ``auto`` compiles runs of at least :data:`AUTO_MIN_STEPS` steps and falls back to the
    eager step with one line when capture or its verification fails; ``on`` always tries,
    and falls back the same way (the line says why).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got '{mode}'")
    eager = EagerStep(objective, model, guide, params)
    if mode == "off":
        return eager
    if mode == "auto" and steps_to_go < AUTO_MIN_STEPS:
        eager.reason = f"eager: {steps_to_go} steps are too few to repay a compile (auto compiles from {AUTO_MIN_STEPS})"
        return eager
    try:
        step = CompiledStep(objective, model, guide, params, log=log)
        with same_draws(example.device):
            step.prepare(example)
    except CaptureError as err:
        eager.reason = f"eager: the step could not be compiled ({err})"
        log(f"ppl_vae: training with the eager step: {err}")
        return eager
    return step
