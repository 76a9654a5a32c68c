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
  compiled by ``torch.compile`` (inductor; on CUDA with CUDA graphs) and replayed.
  Random draws stay torch's own random operations (``fallback_random``), so the
  compiled step consumes the generators exactly as the eager one does: the same seed
  gives the same draws, and resume stays exact.

Capture is verified: on the first batch of each shape the graph and the eager step run
on the same draws and must agree. Anything that cannot be captured (a value read back
to Python to choose a branch, a host sync, an unsupported operation) or that disagrees
falls back to the eager step with one line saying why.
"""

from __future__ import annotations

import contextlib
import warnings

import pyro
import torch

COMPILE_MODES = ("auto", "on", "off")
# 'auto' compiles a run only when it has at least this many steps to go: on 2 CPU cores a
# capture and inductor compile cost 5-20 s, about 3,000 eager steps of the default VAE
AUTO_MIN_STEPS = 2000
MAX_SHAPES = 4


class CaptureError(RuntimeError):
    """The step could not be captured as a graph; the message says why."""


def module_of(fn) -> torch.nn.Module | None:
    """The module a model or guide is, or whose bound method it is (``vae.model`` as in Pyro's examples)."""
    module = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    return module if isinstance(module, torch.nn.Module) else None


def buffers_of(*fns) -> list[torch.Tensor]:
    """The registered buffers of the modules behind ``fns``, in a fixed order (read afresh each
    call: a model may replace one between steps, as the ACN prior does with its code bank)."""
    out, seen = [], set()
    for fn in fns:
        module = module_of(fn)
        if module is None:
            continue
        for b in module.buffers():
            if id(b) not in seen:
                seen.add(id(b))
                out.append(b)
    return out


class EagerStep:
    """The objective's ``differentiable_loss`` and ``backward``, run in Python every step."""

    compiled = False
    reason = "compile off"

    def __init__(self, objective, model, guide, params: list[torch.Tensor]):
        self.objective, self.model, self.guide, self.params = objective, model, guide, params

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        loss = self.objective.differentiable_loss(self.model, self.guide, x)
        for p in self.params:
            p.grad = None
        loss.backward()
        return loss.detach()


@contextlib.contextmanager
def traceable_pyro():
    """Pyro with its per-step host reads switched off, for the length of a capture.

    Pyro 1.9's ``Trace_ELBO`` and ``TraceMeanField_ELBO`` read each site's log-density
    back to Python (``torch_item``) and test the loss for NaN (``warn_if_nan``) every step;
    both are host synchronisations that no graph can hold. Here the first keeps the
    value as a detached tensor (the same number) and the second is left to the trainer's
    own NaN guard. Distribution validation (a data-dependent check) is off too: the
    trainer validated the pair on the data before training.
    """
    import pyro.infer.trace_elbo as trace_elbo
    import pyro.infer.trace_mean_field_elbo as trace_mean_field_elbo

    def item(value):
        return value.detach() if torch.is_tensor(value) else value

    saved = []
    for mod in (trace_elbo, trace_mean_field_elbo):
        for name, replacement in (("torch_item", item), ("warn_if_nan", lambda *a, **k: None)):
            if hasattr(mod, name):
                saved.append((mod, name, getattr(mod, name)))
                setattr(mod, name, replacement)
    try:
        with pyro.validation_enabled(False):
            yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def capture_graph(fn, inputs: list[torch.Tensor], backend: str = "inductor"):
    """``fn(*inputs)`` recorded once as a graph of tensor operations (forward, and backward where
    ``fn`` asks autograd for gradients), compiled by inductor unless ``backend == "graph"``.

    The inputs are the very tensors ``fn`` reaches (parameters, buffers): tracing binds each
    use of them to a graph input, so later calls read their current values. Raises
    :class:`CaptureError` with the reason when ``fn`` cannot be traced.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        with traceable_pyro(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = make_fx(fn)(*inputs)
    except Exception as err:  # whatever stops tracing means: run eagerly
        raise CaptureError(_why(err)) from None
    if backend == "inductor":
        cuda = any(t.device.type == "cuda" for t in inputs)
        # on CUDA the replay is one CUDA graph; random draws stay torch's own operations on every device
        graph = torch.compile(graph, dynamic=False, mode="reduce-overhead" if cuda else None, options={"fallback_random": True})
    return graph


def params_of(*fns) -> list[torch.Tensor]:
    """Every tensor a pair may train: its modules' parameters and Pyro's param store (unconstrained)."""
    out, seen = [], set()
    modules = [m for m in (module_of(fn) for fn in fns) if m is not None]
    tensors = [p for m in modules for p in m.parameters()]
    tensors += [p for _, p in pyro.get_param_store().named_parameters()]
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _why(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "_local_scalar_dense" in str(err) or "data-dependent" in str(err):
        return "the model, guide or objective reads a tensor's value in Python (data-dependent control flow or a host sync)"
    return f"{type(err).__name__}: {text[:200]}"


class CompiledStep:
    """Loss and gradients from a graph captured once per input shape (see the module docstring).

    ``backend``: ``"inductor"`` compiles the captured graph with ``torch.compile``;
    ``"graph"`` replays the captured graph as it is (no compiler: the Python of Pyro's
    handlers is gone, the operations run one by one). ``verify`` compares the first
    replay of each shape with the eager step on the same draws, to ``rtol``.
    """

    compiled = True

    def __init__(
        self,
        objective,
        model,
        guide,
        params: list[torch.Tensor],
        backend: str = "inductor",
        verify: bool = True,
        rtol: float = 1e-3,
        log=print,
    ):
        if backend not in ("inductor", "graph"):
            raise ValueError(f"backend must be 'inductor' or 'graph', got '{backend}'")
        self.eager = EagerStep(objective, model, guide, params)
        self.objective, self.model, self.guide, self.params = objective, model, guide, params
        self.backend, self.verify, self.rtol, self.log = backend, verify, rtol, log
        self.graphs: dict[tuple, tuple | None] = {}
        self.reason = f"compiled ({backend})"

    # ------------------------------------------------------------------ capture

    def _state(self) -> list[torch.Tensor]:
        """Tensors that change between steps without being parameters: buffers and the objective's scalars."""
        state = getattr(self.objective, "state_tensors", None)
        return buffers_of(self.model, self.guide) + (list(state()) if state is not None else [])

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
        if x.device.type == "cuda":
            # a new training iteration: the CUDA graph may reuse the last replay's output memory
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad():
            out = graph(x, *state, *self.params)
        grads = iter(out[1:])
        for p, u in zip(self.params, used):
            p.grad = next(grads) if u else None
        return out[0]

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
        """Capture (and verify) the graph for ``x``'s shape; raises :class:`CaptureError`."""
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
            graph, used = self._capture(x, state)
            try:
                if self.verify:
                    self._check(graph, used, x, state)
                else:
                    with same_draws(x.device):
                        self._run(graph, used, x, state)
            except CaptureError:
                raise
            except Exception as err:  # the compiler refusing the graph
                raise CaptureError(_why(err)) from None
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


@contextlib.contextmanager
def same_draws(device: torch.device):
    """Leave the global generators (CPU and ``device``) as they were."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


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
    step = CompiledStep(objective, model, guide, params, log=log)
    try:
        with same_draws(example.device):
            step.prepare(example)
    except CaptureError as err:
        eager.reason = f"eager: the step could not be compiled ({err})"
        log(f"ppl_vae: training with the eager step: {err}")
        return eager
    return step
