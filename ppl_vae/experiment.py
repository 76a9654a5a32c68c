"""Named experiments: build a model/guide pair from names, train, score, report.

This is what ``ppl-vae train`` / ``evaluate`` and ``make run`` call. The spec of a
run (data set, model, guide and their options) is stored in the checkpoint, so a
checkpoint alone rebuilds the pair.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint
from .data import Dataset, load_dataset
from .device import seed_everything
from .epoch_log import best_summary
from .evaluate import active_units, elbo_terms, log_px
from .faults import check_pair_on_data
from .plots import save_aggregate_view, save_pictures
from .train import CHECKPOINT_NAME, TrainConfig, Trainer


def check_pair_names(model: str | None, guide: str | None) -> None:
    """Built-in names or ``file.py:name`` references to files that exist (None: not given)."""
    from ppl_vae.guides import GUIDES
    from ppl_vae.models import MODELS

    from .user_code import is_file_ref, resolve_ref

    for what, name, known in (("model", model, MODELS), ("guide", guide, GUIDES)):
        if name is None:
            continue
        if is_file_ref(name):
            resolve_ref(name)
        elif name not in known:
            raise ValueError(f"unknown {what} '{name}'; known: {', '.join(sorted(known))}, or your own as path/to/file.py:name")
    built_in = model is not None and guide is not None and not is_file_ref(model) and not is_file_ref(guide)
    if built_in and (model == "hierarchical") != guide.startswith("hierarchical"):
        fits = "hierarchical or hierarchical_iaf" if model == "hierarchical" else "a one-layer guide (mean_field, iaf, ...)"
        raise ValueError(f"guide '{guide}' does not fit model '{model}': give {fits}")


def build_pair(spec: dict[str, Any], x_dim: int, image_shape=None):
    """Model and guide named by ``spec["model"]`` / ``spec["guide"]`` with their keyword options:
    built-in names, or a user's own ``file.py:name`` (:mod:`ppl_vae.user_code`)."""
    from ppl_vae.guides import GUIDES
    from ppl_vae.models import MODELS

    from .user_code import is_file_ref, load_user_callable

    model_name, guide_name = spec.get("model", "vae"), spec.get("guide", "mean_field")
    check_pair_names(model_name, guide_name)
    shared: dict = {}  # a model and a guide from one class of the user's share its instance
    try:
        if is_file_ref(model_name):
            model = load_user_callable(model_name, x_dim, image_shape, shared)
        else:
            model = MODELS[model_name](x_dim=x_dim, **spec.get("model_kwargs", {}))
        if is_file_ref(guide_name):
            guide = load_user_callable(guide_name, x_dim, image_shape, shared)
        else:
            guide = GUIDES[guide_name](x_dim=x_dim, **spec.get("guide_kwargs", {}))
    except TypeError as err:
        raise ValueError(f"bad options for model '{model_name}' or guide '{guide_name}': {err}") from None
    if hasattr(model, "attach_guide"):  # priors that read the guide (vamp, acn)
        model.attach_guide(guide)
    return model, guide


def dataset_of(spec: dict[str, Any]) -> Dataset:
    return load_dataset(spec["dataset"], spec.get("data_dir"), spec.get("binarize", "dynamic"), spec.get("scale", "auto"))


def train_x_of(data: Dataset) -> tuple[torch.Tensor, bool]:
    """Training tensor and whether it is binarised dynamically on the device."""
    if data.binarize == "dynamic":
        return data.train.x, True
    return data.eval_x("train"), False


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _fmt_log_px(r: dict) -> str:
    if r.get("log_px") is None:
        return "none: " + r.get("log_px_note", "not estimated")
    return f"{r['log_px']:.2f} ± {r['log_px_se']:.2f} (K={r['k']}, Monte Carlo SE {r['log_px_mc_se']:.3f})"


def train_and_report(
    spec: dict[str, Any],
    config: TrainConfig,
    test_k: int = 1000,
    resume: bool = False,
    aggregate_tests: bool = False,
    command: list[str] | None = None,
) -> dict:
    """Train per ``spec`` and ``config``, score the test set, write ``result.json`` and PNGs
    into ``config.out``, and return the result (``aggregate_tests``: see :func:`score`). Under torchrun
    every rank trains; rank 0 writes and returns the result, the others return None."""
    data = dataset_of(spec)
    config.meta = {**spec, "image_shape": list(data.image_shape)}
    seed_everything(config.seed)  # the networks' initial weights follow the seed too
    model, guide = build_pair(spec, data.x_dim, data.image_shape)
    trainer = Trainer(model, guide, config)
    train_x, dynamic = train_x_of(data)
    val_x = data.eval_x("val", trainer.device)
    # the test split is scored after training: refuse it now, not after the last epoch
    trainer.refresh(train_x.to(trainer.device))
    check_pair_on_data(model, guide, data.eval_x("test", trainer.device), "test data")
    history = trainer.fit(train_x, val_x, dynamic=dynamic, resume=resume)
    # with early stopping the run's answer is its best epoch (as Keras' restore_best_weights)
    scored_epoch = trainer.restore_best() if config.early_stop else None
    result = score(trainer, data, test_k, out=Path(config.out) if config.out else None, aggregate_tests=aggregate_tests)
    if result is None:  # another rank than 0 under torchrun: its share of log p(x) is in rank 0's result
        return None
    result["history"] = history
    result["step"] = trainer.step_fn.reason
    result["seconds_per_epoch"] = sum(r["seconds"] for r in history) / len(history)
    result["train_loss"] = history[-1]["train_loss"]
    result["val_elbo"] = history[-1]["val_elbo"]
    result["best"] = best_summary(history, config.eval_every, config.out)
    result["stopped_early"] = trainer.stopped_early is not None
    result["scored_epoch"] = scored_epoch or trainer.epoch
    result.update(provenance(trainer.device, command))
    if config.out:
        result["checkpoint"] = str(Path(config.out) / CHECKPOINT_NAME)
        write_json(result, Path(config.out) / "result.json")
    return result


def score(trainer: Trainer, data: Dataset, k: int, out: Path | None, aggregate_tests: bool = False) -> dict | None:
    """Test-set scores; a guide with a point mass (a deterministic encoder) gets ``log_px: None``
    with the reason in ``log_px_note``, and only its distortion (reconstruction error) of the ELBO
    terms. ``aggregate_tests`` adds the tests of q(z) against N(0, I) (``prior_match``).

    log p(x) draws each batch of test points from the run's seed (the same estimate however many
    processes share it); under torchrun the ranks share it and rank 0 alone computes the rest
    and returns the result (None elsewhere)."""
    from .aggregate import aggregate_samples, prior_match_tests
    from .evaluate import NoDensityError

    model, guide = trainer.model, trainer.guide
    trainer.set_training(False)
    test_x = data.eval_x("test", trainer.device)
    start = time.perf_counter()
    try:
        est = log_px(model, guide, test_x, k=k, progress=trainer.config.progress, seed=trainer.config.seed)
        note = None
    except NoDensityError as err:
        est, note = None, str(err)
    if not distributed.is_main():
        return None
    terms = elbo_terms(model, guide, test_x)
    result: dict[str, Any] = {
        "dataset": data.name,
        "device": str(trainer.device),
        "objective": trainer.config.objective,
        "model": trainer.config.meta.get("model"),
        "guide": trainer.config.meta.get("guide"),
        "epochs": trainer.epoch,
        "n_test": test_x.shape[0],
        "log_px": est.log_px if est else None,
        "log_px_se": est.log_px_se if est else None,
        "log_px_mc_se": est.mc_se if est else None,
        "k": est.k if est else None,
        "test_elbo": terms.elbo if est else None,
        "test_rate": terms.rate if est else None,
        "test_distortion": terms.distortion,
        "active_units": active_units(model, guide, test_x)["total"],
        "config": asdict(trainer.config),
    }
    if note:
        result["log_px_note"] = note
    codes = None
    if aggregate_tests:
        codes = aggregate_samples(model, guide, test_x[:500])
        result["prior_match"] = prior_match_tests(codes)
    result["eval_seconds"] = time.perf_counter() - start
    if out is not None:
        result["pictures"] = save_pictures(model, guide, test_x, data.image_shape, out)
        if codes is not None:
            labels = None if data.test.labels is None else data.test.labels[: codes.shape[0]]
            result["pictures"]["aggregate_posterior"] = str(save_aggregate_view(codes, labels, out / "aggregate_posterior.png"))
    return result


def provenance(device: torch.device | str, command: list[str] | None = None) -> dict:
    """What produced a result: package versions, the device, the command line (``command``, or
    this process's arguments) and the git commit."""
    import platform
    import subprocess
    import sys

    import pyro

    from . import __version__

    try:
        import arviz

        arviz_version = arviz.__version__
    except ImportError:
        arviz_version = None
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "versions": {"ppl_vae": __version__, "torch": torch.__version__, "pyro": pyro.__version__, "arviz": arviz_version,
                     "python": platform.python_version()},
        "device_name": name,
        "command": list(command) if command is not None else sys.argv,
        "git_commit": commit,
    }  # fmt: skip


def strict_json(value):
    """``value`` with NaN and infinities as ``None``, so the JSON is strict (RFC 8259 has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(result: dict, path: Path) -> Path:
    """Write ``result`` as strict JSON (non-finite numbers as null), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(strict_json(result), indent=2, default=str, allow_nan=False))
    tmp.replace(path)
    return path


def report_table(result: dict) -> str:
    rows = [
        ("dataset", f"{result['dataset']} ({result['n_test']} test points)"),
        ("model / guide", f"{result['model']} / {result['guide']}, objective {result['objective']}"),
        ("device", result["device"]),
    ]
    if "train_loss" in result:
        rows.append(("train loss (nats/point)", f"{result['train_loss']:.2f}"))
        if result.get("test_elbo") is None and result.get("history"):  # a point-mass guide: no ELBO
            rows.append(("validation distortion", f"{result['history'][-1]['val_distortion']:.2f}"))
        else:
            rows.append(("validation ELBO", f"{result['val_elbo']:.2f}"))
    if result.get("test_elbo") is None:
        rows.append(("test distortion", f"{result['test_distortion']:.2f} (-E log p(x|z); a point-mass guide has no ELBO)"))
    else:
        rows.append(
            (
                "test ELBO",
                f"{result['test_elbo']:.2f} (rate {result['test_rate']:.2f}, distortion {result['test_distortion']:.2f})",
            )
        )
    rows += [
        ("test log p(x)", _fmt_log_px(result)),
        ("active units", f"{result['active_units']} (Cov_x E_q[u] > 0.01)"),
    ]
    best = result.get("best")
    if best:
        stop = f"; training stopped early after epoch {result['epochs']}" if result.get("stopped_early") else ""
        rows.append(
            (
                "best epoch",
                f"{best['epoch']} ({best['monitor']} {best['value']:.2f}){stop}; test scores are of epoch {result['scored_epoch']}",
            )
        )
    if "seconds_per_epoch" in result:
        rows.append(("time per epoch", f"{result['seconds_per_epoch']:.2f} s over {result['epochs']} epochs"))
    if "step" in result:
        rows.append(("training step", result["step"]))
    return format_table(rows)


def load_trained(
    path: str | Path,
    device: str = "auto",
    data: str | None = None,
    data_dir: str | None = None,
    model: str | None = None,
    guide: str | None = None,
    need_data: bool = True,
):
    """Rebuild ``(trainer, dataset, notes)`` from a checkpoint.

    ``data`` (a file or folder) or ``data_dir`` (the folder of a named data set) replace the
    recorded location; ``notes`` says so, and whether the data differ from those trained on.
    ``model`` and ``guide`` (names or ``file.py:name``) replace the recorded ones; with
    ``data`` they also open a checkpoint written by :class:`Trainer` from Python, which
    records neither. With ``need_data=False`` a checkpoint whose data file is gone still loads
    (the dataset is then ``None``).
    """
    from .user_code import is_file_ref, resolve_ref

    state = load_checkpoint(path)
    cfg = dict(state["config"])
    spec = dict(cfg.get("meta") or {})
    for key, value in (("model", model), ("guide", guide)):
        if value is not None:
            spec[key] = resolve_ref(value) if is_file_ref(value) else value
    if "dataset" not in spec and data is not None:
        spec["dataset"] = str(Path(data).resolve())
        data = None
    if "dataset" not in spec or "model" not in spec or "guide" not in spec:
        raise CheckpointError(
            f"checkpoint {path} does not say which data, model and guide it was trained with (written by Trainer from "
            "Python?): pass --data PATH, --model and --guide (built-in names or path/to/file.py:name)"
        )
    cfg.update(device=device, out=None)
    config = TrainConfig(**cfg)
    notes = []
    if data is not None or data_dir is not None:
        from .user_data import data_fingerprint

        if data is not None:
            if not Path(data).exists():
                raise CheckpointError(f"--data {data} does not exist")
            notes.append(f"data: {Path(data).resolve()} instead of the recorded {spec['dataset']}")
            spec.update(dataset=str(Path(data).resolve()), data_dir=None)
            digest = data_fingerprint(data)
            if spec.get("data_sha256") and digest != spec["data_sha256"]:
                notes.append("note: these data differ from the data the model was trained on (content hash differs)")
        else:
            notes.append(f"data folder: {data_dir} instead of the recorded {spec.get('data_dir')}")
            spec["data_dir"] = data_dir
    elif spec.get("data_sha256") and not Path(spec["dataset"]).exists():
        if need_data or "image_shape" not in spec:
            raise CheckpointError(
                f"the data this checkpoint was trained on, {spec['dataset']}, is not there any more; pass --data PATH"
            )
        notes.append(f"the training data {spec['dataset']} are not there: samples only, no reconstructions")
        return _without_data(state, spec, config), None, notes
    data = dataset_of(spec)
    model, guide = build_pair(spec, data.x_dim, data.image_shape)
    trainer = Trainer(model, guide, config)
    train_x = train_x_of(data)[0].to(trainer.device)
    trainer.refresh(train_x)  # data-dependent state must exist before the first trace
    trainer._capture_params(data.eval_x("val", trainer.device)[:2])
    _load_state(trainer, state)
    trainer.refresh(train_x)  # and follow the loaded weights
    trainer.set_training(False)
    return trainer, data, notes


def _load_state(trainer: Trainer, state: dict) -> None:
    trainer.load_params({k: v.to(trainer.device) for k, v in state["params"].items()})
    trainer.epoch = state["epoch"]


def _without_data(state: dict, spec: dict, config: TrainConfig) -> Trainer:
    """The trained pair from the checkpoint alone, its input size read from the recorded image shape."""
    image_shape = tuple(spec["image_shape"])
    x_dim = int(torch.tensor(image_shape).prod())
    model, guide = build_pair(spec, x_dim, image_shape)
    if hasattr(getattr(model, "prior", model), "refresh"):  # the VAE's refresh is its prior's
        raise CheckpointError("this model's prior reads the training data (acn): pass --data PATH")
    trainer = Trainer(model, guide, config)
    trainer._capture_params(torch.zeros(2, x_dim, device=trainer.device))
    _load_state(trainer, state)
    trainer.set_training(False)
    return trainer
