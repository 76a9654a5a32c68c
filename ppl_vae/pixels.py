"""What data must look like before a model sees them: numbers, finite, intensities in [0, 1]; and
the one error type for bad data, which names the file or input at fault."""

from __future__ import annotations

import warnings

import numpy as np
import torch


class DataError(ValueError):
    """A data set is missing, malformed or unsuitable; the message names the file or input."""


SCALES = ("auto", "255", "none")


def require_numbers(x: np.ndarray, what: str) -> None:
    """Refuse an array that does not hold numbers (strings, objects), naming its dtype."""
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{what} has dtype {x.dtype}; expected numbers (uint8 pixels or floats in [0, 1])")


def to_intensities(x: np.ndarray, what: str, scale: str = "auto") -> np.ndarray:
    """Pixels as float32 intensities in [0, 1], the range decided from the data, never assumed.

    ``auto``: unsigned bytes (0..255) are divided by 255, unless they hold only 0 and 1 (binary
    pixels, kept); numbers already in [0, 1] (floats, or integers 0/1) are kept; anything else is
    refused with the range found. ``255`` divides by 255 whatever the type (floats stored as
    0..255), and refuses data already in [0, 1] (dividing again would leave blank images);
    ``none`` keeps the values as they are.
    """
    if scale not in SCALES:
        raise DataError(f"scale must be one of {SCALES}, got '{scale}'")
    require_numbers(x, what)
    if x.size == 0:
        raise DataError(f"{what} is empty (shape {x.shape})")
    if scale == "255":
        hi = float(np.nanmax(x))
        if hi <= 1:
            raise DataError(
                f"{what}: --scale 255 divides by 255, and these values are already in [0, 1] (largest {hi:g}): the "
                "images would be blank; use --scale auto"
            )
        return x.astype(np.float32) / 255.0
    if scale == "auto" and x.dtype == np.uint8 and int(x.max()) > 1:
        return x.astype(np.float32) / 255.0
    out = x.astype(np.float32)
    if scale == "none":
        return out
    finite = np.isfinite(out)
    if not finite.all():
        raise DataError(f"{what} holds NaN or infinite values")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0 or hi > 1:
        hint = " (0..255 stored as numbers: pass --scale 255)" if lo >= 0 and hi <= 255 else ""
        raise DataError(
            f"{what} has values in [{lo:g}, {hi:g}] ({x.dtype}); pixel intensities must be uint8 0..255 or numbers in "
            f"[0, 1]{hint}; --scale none keeps values as they are, for a likelihood that takes them"
        )
    return out


# --------------------------------------------------------------------------- loaders


class DataNote(UserWarning):
    """Data were converted (NumPy to torch, float64 to float32); the message says how."""


def as_data_tensor(x, what: str = "data") -> torch.Tensor:
    """A float32 tensor from a tensor, a NumPy array or nested lists; a conversion that changes the
    precision (float64) or the type of container is announced with a :class:`DataNote` warning."""
    if isinstance(x, torch.Tensor):
        tensor = x
    elif isinstance(x, (np.ndarray, list, tuple)):
        array = np.asarray(x)
        require_numbers(array, what)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        raise DataError(f"{what} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if tensor.dtype == torch.float32:
        return tensor
    if tensor.dtype == torch.uint8 and tensor.numel() and int(tensor.max()) > 1:
        raise DataError(
            f"{what} holds uint8 pixels (0..255); divide by 255 for intensities in [0, 1] (load_dataset and --data do this)"
        )
    warnings.warn(f"{what}: converted {tensor.dtype} to float32 (the parameters' precision)", DataNote, stacklevel=3)
    return tensor.float()


def check_data(x: torch.Tensor, what: str = "data", unit_interval: bool = True, flat: bool = True) -> None:
    """Refuse empty data and non-finite values, and (by default) anything but a 2-D array of
    values in [0, 1], naming what is wrong."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if flat and x.dim() != 2:
        raise DataError(f"{what} must be a 2-D array (points, features), got shape {tuple(x.shape)}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise DataError(f"{what} is empty (no data points)")
    finite = torch.isfinite(x).reshape(x.shape[0], -1).all(1)
    if not finite.all():
        raise DataError(f"{what} holds NaN or infinite values (first at row {int((~finite).nonzero()[0])})")
    if unit_interval:
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > 1:
            raise DataError(f"{what} has values in [{lo:g}, {hi:g}]; pixel intensities must lie in [0, 1]")
