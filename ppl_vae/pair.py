"""A model/guide pair: built from names (or a user's ``file.py:name``), its parameters created and
loaded, and restored from a checkpoint as a trained pair, not as a trainer.

The spec of a run (data set, model, guide and their options) is stored in the checkpoint
(``config.meta``), so a checkpoint alone rebuilds the pair.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro.poutine as poutine
import torch

from . import hooks, param_store
from .capture import module_of, same_draws
from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig
from .device import seed_everything
from .labels import label_args
from .registry import GUIDES, LOCAL_DATASETS, MODELS, PAIRED_NAMES
from .user_code import is_file_ref, load_user_callable, resolve_ref


def check_pair_names(model: str | None, guide: str | None) -> None:
    """Built-in names or ``file.py:name`` references to files that exist (None: not given)."""
    for name, known in ((model, MODELS), (guide, GUIDES)):
        if name is None:
            continue
        if is_file_ref(name):
            resolve_ref(name)
        elif name not in known:
            raise ValueError(f"{known.unknown(name)}, or your own as path/to/file.py:name")
    built_in = model is not None and guide is not None and not is_file_ref(model) and not is_file_ref(guide)
    for paired in PAIRED_NAMES:
        if built_in and (model == paired) != guide.startswith(paired):
            raise ValueError(
                f"guide '{guide}' does not fit model '{model}': the {paired} model and the {paired} guide go together"
            )
    if built_in and (model == "hierarchical") != guide.startswith("hierarchical"):
        fits = "hierarchical or hierarchical_iaf" if model == "hierarchical" else "a one-layer guide (mean_field, iaf, ...)"
        raise ValueError(f"guide '{guide}' does not fit model '{model}': give {fits}")


def build_pair(spec: dict[str, Any], x_dim: int, image_shape=None):
    """Model and guide named by ``spec["model"]`` / ``spec["guide"]`` with their keyword options:
    registry names, or a user's own ``file.py:name`` (:mod:`ppl_vae.user_code`)."""
    model_name, guide_name = spec.get("model", "vae"), spec.get("guide", "mean_field")
    check_pair_names(model_name, guide_name)
    shared: dict = {}  # a model and a guide from one class of the user's share its instance
    try:
        if is_file_ref(model_name):
            model = load_user_callable(model_name, x_dim, image_shape, shared)
        else:
            kwargs = dict(spec.get("model_kwargs", {}))
            if image_shape is not None and "image_shape" in inspect.signature(MODELS[model_name]).parameters:
                kwargs.setdefault("image_shape", tuple(image_shape))  # what a PixelCNN decoder runs over
            model = MODELS[model_name](x_dim=x_dim, **kwargs)
        if is_file_ref(guide_name):
            guide = load_user_callable(guide_name, x_dim, image_shape, shared)
        else:
            guide = GUIDES[guide_name](x_dim=x_dim, **spec.get("guide_kwargs", {}))
    except TypeError as err:
        raise ValueError(f"bad options for model '{model_name}' or guide '{guide_name}': {err}") from None
    hooks.attach_guide(model, guide)
    return model, guide


def capture_params(run_once, device: torch.device) -> dict[str, torch.Tensor]:
    """Every parameter a pair registers, created by ``run_once()`` (the pair or its objective run
    once, drawing no numbers the run would see), as unconstrained tensors by name."""
    with poutine.trace(param_only=True) as capture, same_draws(device):
        run_once()
    params, seen = {}, set()
    for name, site in sorted(capture.trace.nodes.items()):
        tensor = site["value"].unconstrained()
        if id(tensor) not in seen:  # one module registered under two names (Pyro's example VAE)
            seen.add(id(tensor))
            params[name] = tensor
    param_store.mark_own()
    if not params:
        raise ValueError(
            "the model and guide register no parameters: wrap networks with pyro.module(name, net) "
            "or make them PyroModules, and create other parameters with pyro.param"
        )
    return params


def model_only_params(model, guide, x: torch.Tensor, params: dict[str, torch.Tensor], device) -> list[str]:
    """The names in ``params`` that the model registers and the guide does not (a VampPrior's encoder
    calls are the guide's): the decoder and the prior."""
    with poutine.trace(param_only=True) as in_guide, same_draws(device):
        guide(x)
    with poutine.trace(param_only=True) as in_model, same_draws(device):
        model(x)  # alone: its latent sites draw from the prior
    return sorted(n for n in params if n in in_model.trace.nodes and n not in in_guide.trace.nodes)


# what makes a run's p(x, z) (and its data) another one: --model-from refuses a checkpoint that differs
MODEL_META = ("dataset", "data_sha256", "scale", "layout", "image_shape", "model", "model_kwargs")


def fix_model_from(checkpoint, model, guide, x: torch.Tensor, params: dict[str, torch.Tensor], device, meta=None) -> dict:
    """Load the model's own parameters (:func:`model_only_params`) from ``checkpoint`` and hold them
    fixed: they leave ``params`` (what the step differentiates and the optimizer moves) and are
    returned by name (none without a ``checkpoint``). Where both runs record their spec (``meta``,
    as the command line does), a model or data that differ (:data:`MODEL_META`; a likelihood of the
    same shapes, say) are refused."""
    from .config import differences

    if not checkpoint:
        return {}
    names = model_only_params(model, guide, x, params, device)
    if not names:
        raise ValueError(f"--model-from {checkpoint}: the model registers no parameters of its own to take from it")
    try:
        state = load_checkpoint(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"--model-from: {err}") from None
    saved_meta = (state.get("config") or {}).get("meta") or {}
    if meta and saved_meta:
        changed = differences({k: saved_meta.get(k) for k in MODEL_META}, {k: meta.get(k) for k in MODEL_META})
        if changed:
            raise CheckpointError(
                f"--model-from {checkpoint}: its model or data differ from this run's ({'; '.join(changed[:4])}); "
                "only the guide may change"
            )
    saved = state["params"]
    missing = [n for n in names if n not in saved]
    shapes = [
        f"{n} {tuple(saved[n].shape)} vs {tuple(params[n].shape)}"
        for n in names
        if n in saved and saved[n].shape != params[n].shape
    ]
    if missing or shapes:
        raise CheckpointError(
            f"--model-from {checkpoint}: its model does not match this one (missing {missing[:3]}, other shapes "
            f"{shapes[:3]}); train with the same --model, --z-dim, --hidden and data"
        )
    fixed = {}
    with torch.no_grad():  # they keep requires_grad (Pyro registers only those); the step asks for no gradient of them
        for n in names:
            fixed[n] = params.pop(n)
            fixed[n].copy_(saved[n].to(fixed[n].device))
    return fixed


def load_params(params: dict[str, torch.Tensor], state: dict) -> None:
    """Copy a checkpoint's parameters into ``params``, naming any that do not match."""
    missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint parameters do not match this model and guide (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    with torch.no_grad():
        for name, p in params.items():
            if state[name].shape != p.shape:
                raise CheckpointError(
                    f"checkpoint parameter '{name}' has shape {tuple(state[name].shape)}, this model's has {tuple(p.shape)}"
                    f"{_likely_cause(name)}"
                )
            p.copy_(state[name].to(p.device))


def named_buffers(model, guide) -> dict[str, torch.Tensor]:
    """The modules' buffers by name (``model.<name>``, ``guide.<name>``): state that is not a parameter
    but decides the pair's answers, such as the random orderings of an IAF's MADE masks."""
    out = {}
    for prefix, fn in (("model", model), ("guide", guide)):
        module = module_of(fn)
        if module is not None:
            out.update({f"{prefix}.{name}": b for name, b in module.named_buffers()})
    return out


def load_buffers(model, guide, saved: dict) -> None:
    """Copy a checkpoint's buffers into the pair's by name (a checkpoint written before they were
    saved has none: the pair is then rebuilt under the run's seed, which draws them alike)."""
    with torch.no_grad():
        for name, b in named_buffers(model, guide).items():
            if name not in saved:
                continue
            if saved[name].shape != b.shape:
                raise CheckpointError(
                    f"checkpoint buffer '{name}' has shape {tuple(saved[name].shape)}, this pair's has {tuple(b.shape)}"
                )
            b.copy_(saved[name].to(b.device))


def _likely_cause(name: str) -> str:
    if "encoder" in name or "guide" in name:
        return " (the data's width or the guide's z_dim differs from the checkpoint's)"
    return " (the data's width or the model's z_dim/hidden sizes differ from the checkpoint's)"


def set_training(model, guide, mode: bool) -> None:
    """``train(mode)`` on the modules behind the pair (dropout, and the ACN prior's mixture in eval)."""
    for fn in (model, guide):
        module = module_of(fn)
        if module is not None:
            module.train(mode)


@dataclass
class TrainedPair:
    """A pair restored from a checkpoint: its spec (``config.meta``), config and trained epochs."""

    model: Any
    guide: Any
    config: TrainConfig
    epoch: int
    device: torch.device
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> dict:
        return self.config.meta


def restore_pair(
    path: str | Path,
    device: str = "auto",
    data: str | None = None,
    data_dir: str | None = None,
    model: str | None = None,
    guide: str | None = None,
    need_data: bool = True,
):
    """``(pair, dataset)`` rebuilt from a checkpoint, the pair in evaluation mode; ``pair.notes``
    says what differs from the recorded run.

    ``data`` (a file or folder) or ``data_dir`` (the folder of a named data set) replace the
    recorded location; the recorded SHA-256 of a data file is checked either way, and a change is
    noted. ``model`` and ``guide`` (names or ``file.py:name``) replace the recorded ones; with
    ``data`` they also open a checkpoint written by the Trainer from Python, which records
    neither. With ``need_data=False`` a checkpoint whose data are gone still loads (the dataset
    is then ``None``: samples only).
    """
    from .data import dataset_of, train_x_of
    from .device import resolve_device

    state = load_checkpoint(path)
    spec = _restored_spec(state, path, model, guide, data)
    param_store.fresh()  # the pair's parameters are the checkpoint's, not those of an earlier pair of the same names
    if "dataset" not in spec and data is not None:
        data = None  # it named the data set itself
    config = TrainConfig.from_dict(dict(state["config"]), device=device, out=None, meta=spec)
    notes, missing = _relocate_data(spec, data, data_dir)
    dev = resolve_device(device)
    if missing:
        if need_data or "image_shape" not in spec:
            raise CheckpointError(
                f"the data this checkpoint was trained on, {spec['dataset']}, is not there any more; pass --data PATH"
            )
        return _without_data(state, config, dev, notes), None
    dataset = dataset_of(spec)
    seed_everything(config.seed)  # as training built it: random buffers (MADE orderings) drawn alike
    model_fn, guide_fn = _to(build_pair(spec, dataset.x_dim, dataset.image_shape), dev)
    train_x = train_x_of(dataset)[0].to(dev)
    hooks.refresh(model_fn, train_x)  # data-dependent state must exist before the first trace
    params = capture_params(lambda: _run_pair(model_fn, guide_fn, dataset.eval_x("val", dev)[:2]), dev)
    load_params(params, state["params"])
    load_buffers(model_fn, guide_fn, state.get("buffers", {}))
    hooks.refresh(model_fn, train_x)  # and follow the loaded weights
    set_training(model_fn, guide_fn, False)
    return TrainedPair(model_fn, guide_fn, config, state["epoch"], dev, notes), dataset


def _restored_spec(state: dict, path, model, guide, data) -> dict:
    spec = dict(state["config"].get("meta") or {})
    for key, value in (("model", model), ("guide", guide)):
        if value is not None:
            spec[key] = resolve_ref(value) if is_file_ref(value) else value
    if "dataset" not in spec and data is not None:
        spec["dataset"] = str(Path(data).resolve())
    if "dataset" not in spec or "model" not in spec or "guide" not in spec:
        raise CheckpointError(
            f"checkpoint {path} does not say which data, model and guide it was trained with (written by Trainer from "
            "Python?): pass --data PATH, --model and --guide (built-in names or path/to/file.py:name)"
        )
    return spec


def _relocate_data(spec: dict, data, data_dir) -> tuple[list[str], bool]:
    """Point ``spec`` at ``data`` or ``data_dir`` where given; notes on what changed, and whether the
    recorded data file is gone."""
    from .user_data import data_fingerprint

    notes = []
    if data is not None:
        if not Path(data).exists():
            raise CheckpointError(f"--data {data} does not exist")
        notes.append(f"data: {Path(data).resolve()} instead of the recorded {spec['dataset']}")
        spec.update(dataset=str(Path(data).resolve()), data_dir=None)
    elif data_dir is not None:
        if spec.get("dataset") not in LOCAL_DATASETS:  # as train refuses it: the folder would not be read
            raise CheckpointError(
                f"--data-dir is read by the data sets kept in local files ({', '.join(LOCAL_DATASETS)}); this checkpoint's "
                f"data ({spec.get('dataset')}) are not one of them: drop --data-dir (--data PATH names a file)"
            )
        notes.append(f"data folder: {data_dir} instead of the recorded {spec.get('data_dir')}")
        spec["data_dir"] = data_dir
    recorded = spec.get("data_sha256")
    if recorded and Path(spec["dataset"]).exists():
        if data_fingerprint(spec["dataset"]) != recorded:
            notes.append(
                f"note: the data at {spec['dataset']} differ from the data the model was trained on (content hash "
                "differs): the scores are of other points"
            )
    elif recorded:
        notes.append(f"the training data {spec['dataset']} are not there: samples only, no reconstructions")
        return notes, True
    return notes, False


def _to(pair, device):
    for fn in pair:
        module = module_of(fn)
        if module is not None:
            module.to(device)
    return pair


def _run_pair(model, guide, x: torch.Tensor) -> None:
    args = label_args(model, x)  # a conditional model runs with labels
    trace = poutine.trace(guide).get_trace(*args)
    poutine.replay(model, trace=trace)(*args)


def _without_data(state: dict, config: TrainConfig, device, notes) -> TrainedPair:
    """The trained pair from the checkpoint alone, its input size read from the recorded image shape."""
    image_shape = tuple(config.meta["image_shape"])
    x_dim = int(torch.tensor(image_shape).prod())
    model, guide = _to(build_pair(config.meta, x_dim, image_shape), device)
    if hooks.reads_training_data(model):
        raise CheckpointError("this model's prior reads the training data (acn): pass --data PATH")
    params = capture_params(lambda: _run_pair(model, guide, torch.zeros(2, x_dim, device=device)), device)
    load_params(params, state["params"])
    set_training(model, guide, False)
    return TrainedPair(model, guide, config, state["epoch"], device, notes)
