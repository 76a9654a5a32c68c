"""How to train: :class:`TrainConfig`, each option declared once with whether it belongs to the
run's identity (what a resumed run must agree on) or only to how this process runs it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

NAN_POLICIES = ("stop", "skip", "off")
# "step" reads the guard's flag every step; "deferred" keeps it on the device (faults.DeferredGuard) and
# reads it every faults.DEFERRED_READ_EVERY steps, at checkpoints and epoch ends; "auto" defers for a
# compiled step on CUDA, where a host read each step would stall the replayed graphs
NAN_CHECKS = ("auto", "step", "deferred")
COMPILE_MODES = ("auto", "on", "off")
MAX_SEED = 2**32 - 1  # NumPy's generators take seeds below 2**32


def _run(default=None, factory=None):
    """An option of how this process runs: a resumed run may change it."""
    if factory is not None:
        return field(default_factory=factory, metadata={"identity": False})
    return field(default=default, metadata={"identity": False})


@dataclass
class TrainConfig:
    """How to train; a resumed run must agree on every option but those marked as this run's own.

    ``eval_every``: estimate validation log p(x) with ``eval_k`` importance samples every
    that many epochs (0: never). ``out``: folder for the checkpoint. ``lr_decay``: the
    learning rate's factor per epoch (an exponential schedule). ``checkpoint_every``: also
    checkpoint every that many steps (0: at epoch ends only). ``nan_policy``: on a
    non-finite loss or gradient, ``"stop"`` with a message naming the step and the bad
    site, ``"skip"`` the batch and count it, or ``"off"`` (no check). ``early_stop``: end
    training once that many epochs have passed since the best validation log p(x) (the
    validation ELBO when ``eval_every`` is 0); 0 = never. The best epoch's checkpoint is kept
    as ``best.pt`` beside ``checkpoint.pt`` either way. ``tensorboard``: also write the
    per-epoch metrics as TensorBoard scalars into ``out/tensorboard``. ``adam_eps``: Adam's
    epsilon. ``lr_stages``: ``[[epochs, lr], ...]``, a piecewise-constant learning rate (the
    first ``epochs`` at ``lr``, and so on; the last rate after the last stage), in place of
    ``lr``/``lr_decay``. ``time_limit``: seconds after which training stops at the next step
    as on Ctrl-C (checkpoint saved; resume continues exactly), 0 = none. ``compile``: the
    compiled step and log p(x) chunks (``auto``, ``on``, ``off``). ``tf32``: float32 matrix
    products in TF32 on CUDA while training (validation and test log p(x) stay in full float32).
    ``model_from``: a checkpoint (or run folder) whose model parameters (the decoder and prior,
    not the guide's) this run starts from and holds fixed, so only the guide trains: several guides
    scored on one shared decoder. ``data_init``: before the first step of a new run, let a model
    that defines ``init_from_data`` (the package's models: the decoder's output bias at the data's
    per-pixel mean) set parameters from the training data; resume never re-initialises. ``aux_weight``:
    with labels (``Trainer.fit(train_y=...)``), the weight per labelled point of the classifier's loss
    -log q(y | x); None: Kingma et al. (2014)'s alpha = 0.1 N / N_labelled. ``label``: the progress bar's name for the run. ``meta``: the run's data, model and guide spec
    (what the command line records).
    """

    epochs: int = _run(10)
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    device: str = _run("auto")
    objective: str = "elbo"
    eval_every: int = _run(5)
    eval_k: int = _run(100)
    out: str | None = _run(None)
    progress: bool = _run(True)
    lr_decay: float = 1.0
    checkpoint_every: int = _run(0)
    nan_policy: str = _run("stop")
    compile: str = _run("auto")
    nan_check: str = _run("auto")
    epoch_lines: bool = _run(False)
    early_stop: int = _run(0)
    tensorboard: bool = _run(False)
    adam_eps: float = 1e-8
    lr_stages: list | None = None
    time_limit: float = _run(0.0)
    tf32: bool = _run(False)
    data_init: bool = _run(True)
    model_from: str | None = None
    aux_weight: float | None = None
    label: str = _run("train")
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {self.seed}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be 0 (never) or positive, got {self.eval_every}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be 0 (epoch ends only) or positive, got {self.checkpoint_every}")
        for name, allowed in (("nan_policy", NAN_POLICIES), ("compile", COMPILE_MODES), ("nan_check", NAN_CHECKS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got '{getattr(self, name)}'")
        if self.lr_stages is not None:
            self.lr_stages = [[int(e), float(lr)] for e, lr in self.lr_stages]
            if not self.lr_stages or any(e < 1 or not lr > 0 for e, lr in self.lr_stages):
                raise ValueError(f"lr_stages must be [[epochs >= 1, lr > 0], ...], got {self.lr_stages}")
            if self.lr_decay != 1.0:
                raise ValueError("give lr_stages or lr_decay, not both")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be positive, got {self.adam_eps}")
        if not self.time_limit >= 0:  # nan too
            raise ValueError(f"time_limit must be 0 (none) or positive seconds, got {self.time_limit}")
        if self.aux_weight is not None and not self.aux_weight >= 0:
            raise ValueError(f"aux_weight must be 0 or positive, got {self.aux_weight}")
        if self.early_stop < 0:
            raise ValueError(f"early_stop must be 0 (never) or a positive number of epochs, got {self.early_stop}")

    @classmethod
    def from_dict(cls, saved: dict, **changes) -> TrainConfig:
        """A config from a checkpoint's record (options added since it was written take their
        defaults), with ``changes`` applied."""
        known = {f.name for f in fields(cls)}
        saved = dict(saved)
        meta = dict(saved.get("meta") or {})
        if "progress_label" in meta:  # where versions before 0.1 kept the label: not part of the run
            saved.setdefault("label", meta.pop("progress_label"))
            saved["meta"] = meta
        unknown = sorted(set(saved) - known)
        if unknown:
            raise ValueError(f"the recorded configuration has options this version does not know: {unknown}")
        return cls(**{**saved, **changes})

    def identity(self) -> dict:
        """What a checkpoint must match to be resumed under this config."""
        values = asdict(self)
        return {f.name: values[f.name] for f in fields(self) if f.metadata.get("identity", True)}

    def changes_from(self, saved: TrainConfig) -> list[str]:
        """Each identity option (nested ones by their path) whose value differs from ``saved``'s,
        as ``name: old -> new``."""
        return differences(saved.identity(), self.identity())


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Each key (nested ones by their path) whose value differs between two dicts, as ``key: old -> new``."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif _plain(a) != _plain(b):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _plain(value):
    """Tuples as lists, all the way down (a checkpoint may give back either)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
