"""Atomic, code-free checkpoints.

A checkpoint is a ``torch.save`` file of tensors, numbers, strings, lists and
dicts only, loaded with ``torch.load(weights_only=True)``: loading one never runs
pickled code. It is written to a temporary file in the same folder, flushed to
disk and renamed over the old one, so a crash mid-write leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "ppl_vae-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, of another format, or does not fit the model."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename, fsync of the folder.

    A failure (a full disk, say) raises :class:`CheckpointError` and leaves the previous
    checkpoint as it was; leftovers of writes killed earlier are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".*.tmp"):  # a write killed before its rename
        stale.unlink(missing_ok=True)
    state = {"format": FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write checkpoint {path}: {err.strerror or err}; the previous checkpoint is kept"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        runs = sorted(str(p.parent) for p in path.parent.glob("*/checkpoint.pt"))  # a comparison's folder, say
        hint = f": {path.parent} holds the runs {', '.join(runs[:6])}; name one of them" if runs else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign files raise many kinds of errors; torch's advice to load
        # them without weights_only (running their pickled code) is not advice to pass on
        raise CheckpointError(
            f"checkpoint {path} cannot be read: it is truncated or not a ppl_vae checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    return state
