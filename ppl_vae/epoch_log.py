"""What the loop does with a finished epoch besides its checkpoint: the best checkpoint, early
stopping, TensorBoard scalars and the one-line log.

The monitored quantity is validation log p(x) where it is estimated (``eval_every`` > 0) and
the validation ELBO otherwise; higher is better. ``best.pt`` is the checkpoint of the epoch
with the highest value so far. Early stopping with patience P ends training once P epochs have
passed since that epoch, checked whenever the quantity is measured; everything it needs is in
the history, so a resumed run decides as the uninterrupted one would.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from . import progress as bars
from .run_folder import BEST_NAME, TENSORBOARD_DIR, remove_stale_outputs

# metrics.csv column -> TensorBoard tag
TAGS = {
    "train_loss": "train/loss",
    "val_elbo": "val/elbo",
    "val_log_px": "val/log_px",
    "val_log_px_se": "val/log_px_se",
    "val_rate": "val/rate",
    "val_distortion": "val/distortion",
    "seconds": "time/seconds_per_epoch",
    "lr": "optim/lr",
    "skipped_batches": "train/skipped_batches",
}
MONITOR_NAMES = {
    "val_log_px": "validation log p(x)",
    "val_elbo": "validation ELBO",
    "val_distortion": "validation reconstruction error",
}
LOWER_IS_BETTER = ("val_distortion",)


def monitored(eval_every: int, density: bool = True) -> str:
    """The history column the best checkpoint and early stopping follow: validation log p(x) where
    it is estimated, else the validation ELBO; for a point-mass guide (no density, no ELBO) the
    reconstruction error."""
    if not density:
        return "val_distortion"
    return "val_log_px" if eval_every else "val_elbo"


def best_row(history: list[dict], monitor: str) -> dict | None:
    """The first epoch with the best finite ``monitor`` value (the highest; the lowest for an
    error), or None if none has one."""
    rows = [r for r in history if isinstance(r.get(monitor), float) and math.isfinite(r[monitor])]
    sign = -1.0 if monitor in LOWER_IS_BETTER else 1.0
    return max(rows, key=lambda r: sign * r[monitor]) if rows else None  # max keeps the first of equals


def patience_ran_out(history: list[dict], monitor: str, patience: int) -> dict | None:
    """The best row, when the last measured epoch is ``patience`` or more epochs after it."""
    if not patience:
        return None
    best = best_row(history, monitor)
    measured = [r for r in history if monitor in r]
    if best is None or not measured:
        return None
    return best if measured[-1]["epoch"] - best["epoch"] >= patience else None


def early_stop(history: list[dict], monitor: str, patience: int, epoch: int) -> tuple[int, str] | None:
    """``(best epoch, the line saying why)`` once ``patience`` epochs have passed since the best
    epoch, else None; read from the history, so a resumed run stops where it stopped."""
    best = patience_ran_out(history, monitor, patience)
    if best is None:
        return None
    line = (
        f"early stop after epoch {epoch}: {MONITOR_NAMES[monitor]} has not improved for {epoch - best['epoch']} epochs "
        f"(patience {patience}); the best, {best[monitor]:.2f} at epoch {best['epoch']}, is in best.pt"
    )
    return best["epoch"], line


def best_parameters(history: list[dict], monitor: str, kept: dict | None, path: Path | None) -> tuple[int | None, dict | None]:
    """The best epoch and its parameters: those ``kept`` in memory, or ``best.pt`` at ``path`` (after a
    resume); ``(None, None)`` when there is none."""
    from .checkpoint import load_checkpoint

    best = best_row(history, monitor)
    if best is None:
        return None, None
    params = kept
    if params is None and path is not None and path.exists():
        params = load_checkpoint(path)["params"]
    return (best["epoch"], params) if params is not None else (None, None)


def keep_as_best(checkpoint: Path) -> Path:
    """Copy ``checkpoint`` to ``best.pt`` beside it, atomically (a copy then a rename), so a
    crash leaves the previous best whole."""
    target = checkpoint.with_name(BEST_NAME)
    tmp = target.with_name(BEST_NAME + ".tmp")
    shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, target)
    note = remove_stale_outputs(target.parent, BEST_NAME)  # the reports of the best epoch before this one
    if note:
        bars.write(note)
    return target


def best_summary(history: list[dict], monitor: str, out: str | None) -> dict | None:
    """What result.json says of the best epoch."""
    best = best_row(history, monitor)
    if best is None:
        return None
    path = Path(out) / BEST_NAME if out else None
    return {
        "epoch": best["epoch"],
        "monitor": monitor,
        "value": best[monitor],
        "checkpoint": str(path) if path is not None and path.exists() else None,
    }


class TensorBoardLog:
    """Per-epoch scalars in ``OUT/tensorboard`` (global step = epoch), when ``tensorboard`` is installed.

    A resumed run purges the events of epochs after its checkpoint, so each epoch appears once.
    """

    def __init__(self, out: str | Path, done_epochs: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(Path(out) / TENSORBOARD_DIR), purge_step=done_epochs + 1)

    def write(self, row: dict) -> None:
        for key, tag in TAGS.items():
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag, value, global_step=row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def epoch_line(row: dict, epochs: int) -> str:
    """One line per epoch for a batch job's log, where no progress bar shows."""
    density = "val_elbo" in row or "val_log_px" in row  # a point-mass guide's row has only the distortion
    keys = ("train_loss", "val_elbo", "val_log_px") if density else ("train_loss", "val_distortion")
    shown = [f"{k} {row[k]:.2f}" for k in keys if k in row]
    if "val_log_px_se" in row:
        shown[-1] += f" ± {row['val_log_px_se']:.2f} (K={row['val_k']})"
    if row.get("skipped_batches"):
        shown.append(f"skipped {row['skipped_batches']}")
    return f"epoch {row['epoch']}/{epochs}: {', '.join(shown)}, {row['seconds']:.2f} s"


def log_epoch(row: dict, history: list[dict], config, tensorboard: TensorBoardLog | None, written: bool) -> None:
    """A finished epoch's logs: ``metrics.csv`` (where a checkpoint was ``written``), TensorBoard,
    and one line on standard output when asked or when no progress bar shows (rank 0 alone)."""
    from . import distributed, progress
    from .run_folder import write_metrics

    if written:
        write_metrics(history, config.out)
    if tensorboard is not None:
        tensorboard.write(row)
    if (config.epoch_lines or (config.progress and not progress.is_terminal())) and distributed.is_main():
        print(epoch_line(row, config.epochs), flush=True)
