r"""Recording a function of tensors once as a graph and replaying it: what the compiled training
step (:mod:`ppl_vae.step`) and the compiled log p(x) chunks (:mod:`ppl_vae.evaluate`) share.

``make_fx`` runs the function once and records every tensor operation it performs (Pyro's
handlers, the objective's arithmetic, autograd's backward) as one graph of aten operations, with
the given tensors as inputs. The graph is then replayed by one of three backends:

- ``"inductor"``: ``torch.compile`` of the graph (fused kernels; random draws stay torch's own
  operations through ``fallback_random``). The default on the CPU.
- ``"cudagraph"``: the recorded aten graph captured once in a CUDA graph and replayed, so the
  kernels are eager's own (and so are the random draws: measured on an H200, inductor's CUDA
  lowering of random operations drew other numbers than eager's even with ``fallback_random``,
  and the same-draws check refused it), launched at once. The default on CUDA.
- ``"graph"``: the recorded graph run as it is (no compiler; for tests and for debugging).

Whatever goes wrong while recording, compiling or first replaying becomes a :class:`CaptureError`
with a one-line reason, which the callers turn into the eager path: a compile problem never ends
a run.
"""

from __future__ import annotations

import contextlib
import warnings

import pyro
import torch

BACKENDS = ("auto", "inductor", "cudagraph", "graph")


class CaptureError(RuntimeError):
    """A function could not be captured, compiled or replayed as a graph; the message says why."""


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


@contextlib.contextmanager
def same_draws(device: torch.device):
    """Leave the global generators (CPU and ``device``) as they were."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


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


def why(err: BaseException) -> str:
    """One line saying why a capture failed."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "_local_scalar_dense" in str(err) or "data-dependent" in str(err):
        return "the model, guide or objective reads a tensor's value in Python (data-dependent control flow or a host sync)"
    return f"{type(err).__name__}: {text[:200]}"


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"``: inductor on the CPU, a CUDA graph of the recorded aten graph on CUDA."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got '{backend}'")
    if backend == "auto":
        return "cudagraph" if device.type == "cuda" else "inductor"
    if backend == "cudagraph" and device.type != "cuda":
        raise ValueError("the cudagraph backend replays CUDA graphs: it needs tensors on a CUDA device")
    return backend


def inductor_settings(device_type: str) -> dict:
    """``torch.compile``'s keyword arguments for the inductor backend on ``device_type``.

    Never ``mode`` and ``options`` together (torch refuses the pair at the call). Random draws
    stay torch's own operations on every device; on CUDA the compiled kernels replay as CUDA graphs.
    """
    options = {"fallback_random": True}
    if device_type == "cuda":
        options["triton.cudagraphs"] = True
    return {"dynamic": False, "options": options}


def record(fn, inputs: list[torch.Tensor]):
    """``fn(*inputs)`` recorded once as a graph of aten operations (forward, and backward where
    ``fn`` asks autograd for gradients); raises :class:`CaptureError` when it cannot be traced.

    The inputs are the very tensors ``fn`` reaches (parameters, buffers): tracing binds each
    use of them to a graph input, so a replay reads their current values.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        with traceable_pyro(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make_fx(fn)(*inputs)
    except Exception as err:  # whatever stops tracing means: run eagerly
        raise CaptureError(why(err)) from None


def compile_graph(graph, inputs: list[torch.Tensor], backend: str = "auto", clone_outputs: bool = False):
    """The recorded ``graph`` made ready to replay by ``backend`` (see the module docstring);
    ``clone_outputs``: a CUDA graph's replay returns copies of its outputs, not its own memory.

    Raises :class:`CaptureError` for anything the compiler raises; a CUDA graph is captured on its
    first call, so its errors come with the first replay (which callers run under the same guard).
    """
    device = next((t.device for t in inputs if torch.is_tensor(t)), torch.device("cpu"))
    backend = resolve_backend(backend, device)
    if backend == "graph":
        return graph
    if backend == "cudagraph":
        return CudaGraphReplay(graph, clone=clone_outputs)
    try:
        with warnings.catch_warnings():
            # the TF32 policy is the trainer's own choice (TrainConfig.tf32), not inductor's to advise
            warnings.filterwarnings("ignore", message=".*TensorFloat32 tensor cores.*")
            return torch.compile(graph, **inductor_settings(device.type))
    except Exception as err:
        raise CaptureError(f"torch.compile refused the graph: {why(err)}") from None


def capture_graph(fn, inputs: list[torch.Tensor], backend: str = "auto", clone_outputs: bool = False):
    """:func:`record` then :func:`compile_graph`."""
    return compile_graph(record(fn, inputs), inputs, backend, clone_outputs)


class CudaGraphReplay:
    """A recorded aten graph captured in one CUDA graph on its first call and replayed after.

    Inputs that require a gradient (parameters) are used in place: the optimizer updates them
    in place, so the graph reads their current values. Every other input (the data, buffers, a
    warm-up's beta) is copied into a static tensor of the graph before each replay. Outputs live
    in the graph's memory and are overwritten by the next replay: ``clone`` returns copies.
    """

    def __init__(self, graph, warmup: int = 2, clone: bool = False):
        self.graph, self.warmup, self.clone = graph, warmup, clone
        self.cuda_graph = None
        self.static_inputs: list[torch.Tensor] = []
        self.static_outputs = None

    def _bind(self, inputs) -> None:
        for static, value in zip(self.static_inputs, inputs):
            if static is not value:
                static.copy_(value)

    def _capture(self, inputs) -> None:
        self.static_inputs = [t if t.requires_grad else t.detach().clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():  # warm-up: cuBLAS handles, allocator pools
            for _ in range(self.warmup):
                self.graph(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph), torch.no_grad():
            self.static_outputs = self.graph(*self.static_inputs)
        self.cuda_graph = cuda_graph

    def __call__(self, *inputs):
        if self.cuda_graph is None:
            self._capture(inputs)
        self._bind(inputs)
        self.cuda_graph.replay()
        out = self.static_outputs
        if self.clone:
            return tuple(o.clone() for o in out) if isinstance(out, (tuple, list)) else out.clone()
        return out
