"""The layout of a run folder, written down in one place, and the rules that keep runs apart.

A training run's folder holds::

    checkpoint.pt          the last state (every epoch, --checkpoint-every, Ctrl-C)
    best.pt                the state at the end of the best epoch by validation log p(x)
    metrics.csv            one row per finished epoch, rewritten from the checkpoint's history
    tensorboard/           the same per-epoch metrics as TensorBoard events (--tensorboard)
    result.json            test scores and the history
    reconstructions.png    samples.png
    eval-k<K>/             one folder per ``ppl-vae evaluate --k K``: evaluation.json, .md,
                           posterior.nc and the report's pictures (eval-best-k<K>/ for best.pt)
    sample-n<N>/           one folder per ``ppl-vae sample --n N``: samples.png, reconstructions.png

A comparison's folder holds compare.md/.csv/.json, its figures and one run folder per variant.

Rules: a new run gets a new folder (``runs/<dataset>-<model>-<guide>-<objective>-<time>``);
a non-empty folder is refused unless the run resumes it (``--resume``) or replaces it
(``--overwrite``, which removes the files named above and nothing else); once a run writes a
new checkpoint, the evaluations and samples of the old one (``eval-k*``, ``sample-n*``; those of
``best.pt`` when a new best epoch replaces it) are removed, so no report is left beside a
checkpoint it does not describe.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
METRICS_NAME = "metrics.csv"
RESULT_NAME = "result.json"
TENSORBOARD_DIR = "tensorboard"
PICTURES = ("reconstructions.png", "samples.png")
EVALUATION_FILES = ("evaluation.json", "evaluation.md", "evaluation.html")
RUN_FILES = (CHECKPOINT_NAME, BEST_NAME, METRICS_NAME, RESULT_NAME, *PICTURES, TENSORBOARD_DIR)
METRICS = (
    "epoch", "step", "train_loss", "val_elbo", "val_rate", "val_distortion", "val_log_px", "val_log_px_se", "val_k",
    "seconds", "lr", "skipped_batches",
)  # fmt: skip
COMPARE_FILES = ("compare.md", "compare.csv", "compare.json", "validation_curves.png", "rate_distortion.png")
EVAL_PREFIX = "eval-"
SAMPLE_PREFIX = "sample-"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=]+", "_", str(text)).strip("_") or "run"


def new_run_folder(*parts: str, root: str = "runs") -> Path:
    """``root/<parts joined by ->-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``... if that exists already."""
    stem = "-".join(_slug(Path(p).stem if "/" in str(p) else p) for p in parts if p) + time.strftime("-%Y%m%d-%H%M%S")
    path, i = Path(root) / stem, 1
    while path.exists():
        i += 1
        path = Path(root) / f"{stem}-{i}"
    return path


# what evaluate and sample write: reports, the ArviZ export, pictures
REPORT_SUFFIXES = (".json", ".md", ".html", ".nc", ".png")


def stale_evaluations(folder: Path, checkpoint: str | None = None) -> list[Path]:
    """The folders ``evaluate`` and ``sample`` wrote beside a checkpoint (``checkpoint.pt`` or
    ``best.pt`` by name; every one without): named as they name them and holding only such files
    (a folder of the user's that happens to be called ``eval-x`` stays)."""
    stem = "" if checkpoint in (None, CHECKPOINT_NAME) else f"{_slug(Path(checkpoint).stem)}-"
    named = re.compile(rf"({EVAL_PREFIX}|{SAMPLE_PREFIX}){re.escape(stem)}[kn]\d" if checkpoint else ".")
    found = (p for prefix in (EVAL_PREFIX, SAMPLE_PREFIX) for p in Path(folder).glob(prefix + "*") if p.is_dir())
    ours = (p for p in found if named.match(p.name))
    return sorted(p for p in ours if all(f.is_file() and f.suffix in REPORT_SUFFIXES for f in p.iterdir()))


def remove_stale_outputs(folder: str | Path, checkpoint: str | None = None) -> str | None:
    """Remove the evaluations and samples of ``checkpoint`` (a name in ``folder``; all without),
    which a new one replaces; the line saying so."""
    removed = []
    for old in stale_evaluations(Path(folder), checkpoint):
        shutil.rmtree(old)
        removed.append(old.name + "/")
    return f"removed from {folder} (a new checkpoint replaces the run they described): {', '.join(removed)}" if removed else None


def claim_run_folder(out: str | Path, resume: bool = False, overwrite: bool = False, files=RUN_FILES) -> list[str]:
    """Check that ``out`` may take this run; returns lines saying what was removed.

    A file, or a non-empty folder without ``resume`` or ``overwrite``, is refused with the fix.
    ``overwrite`` removes the run's files (``files``) and its evaluations here; a resumed run's
    evaluations stay until it writes its first checkpoint (:func:`remove_stale_outputs`): a resume
    that is refused (other settings, say) loses nothing.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; name a folder for the run's outputs")
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    notes: list[str] = []
    if not path.is_dir() or not any(path.iterdir()):
        return notes
    if not (resume or overwrite):
        raise ValueError(
            f"output folder {path} is not empty (it holds {', '.join(sorted(p.name for p in path.iterdir())[:4])}); "
            "continue its run with --resume, replace it with --overwrite, or choose another --out"
        )
    removed = []
    if overwrite:
        for name in files:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
                removed.append(name)
            elif target.exists():
                target.unlink()
                removed.append(name)
        for sub in path.iterdir():  # a comparison's variants are run folders of their own
            if sub.is_dir() and (sub / "checkpoint.pt").exists() and files is COMPARE_FILES:
                shutil.rmtree(sub)
                removed.append(sub.name + "/")
    if removed:
        notes.append(f"removed from {path} (the run is replaced): {', '.join(removed)}")
    stale = remove_stale_outputs(path) if overwrite else None
    return notes + ([stale] if stale else [])


def write_metrics(history: list[dict], folder: str | Path) -> Path:
    """``metrics.csv`` from the history (atomically): a resumed run's file holds each epoch once."""
    import csv

    path = Path(folder) / METRICS_NAME
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)
    return path


def evaluation_folder(checkpoint: str | Path, k: int, out: str | Path | None = None, overwrite: bool = False, **setting) -> Path:
    """Where ``evaluate --k K`` writes: ``--out``, or a folder beside the checkpoint named by its
    setting: ``eval-k<K>/``, with ``-n<N>`` (the first N points), ``-seed<S>`` and ``-data-<name>``
    (other data) where they are not the defaults; ``eval-best-k<K>/`` for ``best.pt``.

    A folder that already holds an evaluation is refused unless ``overwrite``: a quick check never
    replaces a costly report silently.
    """
    path = _output_folder(checkpoint, EVAL_PREFIX, f"k{k}", out, "evaluation's outputs", setting)
    done = path / EVALUATION_FILES[0]
    if done.exists() and not overwrite:
        raise ValueError(
            f"{path} already holds an evaluation ({done.name}); pass --overwrite to replace it, or --out for another folder"
        )
    return path


def sample_folder(checkpoint: str | Path, n: int, out: str | Path | None = None, overwrite: bool = False, **setting) -> Path:
    """Where ``sample --n N`` writes: ``sample-n<N>/`` beside the checkpoint (with ``-seed<S>``,
    ``-data-<name>`` as :func:`evaluation_folder`; the same setting draws the same pictures, so
    they are simply redrawn), or ``--out``, where pictures already there (a training run's own,
    say) are refused unless ``overwrite``."""
    path = _output_folder(checkpoint, SAMPLE_PREFIX, f"n{n}", out, "pictures", setting)
    there = [name for name in PICTURES if (path / name).exists()]
    if out is not None and there and not overwrite:
        raise ValueError(
            f"{path} already holds {' and '.join(there)}; pass --overwrite to replace them, or --out for another folder"
        )
    return path


def _output_folder(checkpoint, prefix: str, first: str, out, what: str, setting: dict) -> Path:
    """``out`` (refused if a file), or ``<prefix>[<checkpoint stem>-]<first>[-<key><value>...]``
    beside the checkpoint, naming the settings that are not the defaults."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ValueError(f"--out {path} is a file; name a folder for the {what}")
        return path
    ckpt = Path(checkpoint)
    stem = "" if ckpt.is_dir() or ckpt.name == CHECKPOINT_NAME else f"{_slug(ckpt.stem)}-"
    parts = [f"{prefix}{stem}{first}"]
    parts += [f"{key}{_slug(Path(str(value)).stem)}" for key, value in setting.items() if value]
    return (ckpt if ckpt.is_dir() else ckpt.parent) / "-".join(parts)


# --------------------------------------------------------------------------- what each file records


def provenance(device, command: list[str] | None = None) -> dict:
    """What produced a result: package versions, the device, the command line (``command``, or
    this process's arguments) and the git commit."""
    import platform
    import subprocess
    import sys

    import pyro
    import torch

    from . import __version__

    try:
        import arviz

        arviz_version = arviz.__version__
    except ImportError:
        arviz_version = None
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "versions": {"ppl_vae": __version__, "torch": torch.__version__, "pyro": pyro.__version__, "arviz": arviz_version,
                     "python": platform.python_version()},
        "device_name": name,
        "command": list(command) if command is not None else sys.argv,
        "git_commit": commit or None,
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
