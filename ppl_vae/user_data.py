"""A user's own data from one path: an ``.npz``, an ``.npy`` or a folder of images.

- ``.npz``: ``x_train`` (required), ``x_val`` or ``x_valid``, ``x_test`` (optional), labels
  ``y_train``, ``y_val``/``y_valid``, ``y_test`` (optional).
- ``.npy``: one array of data points.
- a folder: image files (PNG, JPEG, BMP, GIF, PGM), all of one size; or sub-folders ``train``,
  ``val`` (or ``valid``) and ``test`` holding them.

Any layout per point: ``(N, D)``, ``(N, H, W)``, ``(N, C, H, W)`` or channels-last ``(N, H, W, C)``;
points are flattened and the image shape is kept (a ``D``-vector that is a square number of pixels
is shown as a square image). ``layout="auto"`` reads a 4-D array whose last axis is 1, 3 or 4 after
two sides that are not as channels-last, one whose second axis is so as channels-first, and refuses
one it cannot tell (``layout="nchw"`` or ``"nhwc"`` says). A missing validation or test split is cut from
the training points (10 % each, at least :data:`MIN_SPLIT` points, a fixed seed independent of the
training seed). Pixel range: :func:`ppl_vae.pixels.to_intensities`.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from .pixels import DataError, require_numbers, to_intensities

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".tif", ".tiff")
HOLD_OUT = 0.1
SPLIT_SEED = 0
MIN_SPLIT = 2  # a standard error over points needs two of them
LAYOUTS = ("auto", "nchw", "nhwc")
CHANNELS = (1, 3, 4)


def data_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a data file, or of a folder's files (names and contents, in sorted order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def image_shape_of(per_point: tuple[int, ...]) -> tuple[int, ...]:
    """The picture shape of one point: (H, W), (C, H, W), or a square (s, s) for a D-vector."""
    if len(per_point) == 1:
        side = math.isqrt(per_point[0])
        return (side, side) if side * side == per_point[0] else (1, per_point[0])
    if len(per_point) == 3 and per_point[0] == 1:
        return per_point[1:]
    return per_point


def _points(x: np.ndarray, what: str, layout: str = "auto") -> np.ndarray:
    require_numbers(x, what)
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{what} has shape {x.shape}; expected (N, D), (N, H, W), (N, C, H, W) or (N, H, W, C)")
    if x.shape[0] == 0:
        raise DataError(f"{what} is empty (shape {x.shape})")
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(1)
        if bad.any():
            raise DataError(f"{what} row {int(np.argmax(bad))} holds NaN or infinite values ({int(bad.sum())} rows do)")
    if x.ndim == 4 and _channels_last(x.shape, layout, what):
        x = np.moveaxis(x, -1, 1)
    return x


def _channels_last(shape: tuple, layout: str, what: str) -> bool:
    """Whether a 4-D array of images is (N, H, W, C): as ``layout`` says, or read from the shape."""
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {LAYOUTS}, got '{layout}'")
    if layout != "auto":
        return layout == "nhwc"
    last = shape[3] in CHANNELS and shape[1] not in CHANNELS and shape[2] not in CHANNELS
    first = shape[1] in CHANNELS and shape[2] not in CHANNELS and shape[3] not in CHANNELS
    if not (last and first) and (last or first or shape[1] != shape[3]):
        return last  # neither looks like channels: the documented (N, C, H, W)
    raise DataError(
        f"{what} has shape {shape}: cannot tell whether its channels come first (N, C, H, W) or last (N, H, W, C); "
        "say which with --layout nchw or --layout nhwc"
    )


def _read_images(folder: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    images, size, colour = [], None, False
    for f in files:
        try:
            with Image.open(f) as im:
                colour = colour or im.mode not in ("1", "L", "I", "I;16", "F", "LA", "P")
                images.append((f, im.convert("RGB") if colour else im.convert("L")))
        except OSError as err:
            raise DataError(f"cannot read image {f}: {err}") from None
        if size is None:
            size = images[-1][1].size
        elif images[-1][1].size != size:
            raise DataError(f"image {f} is {images[-1][1].size[0]}x{images[-1][1].size[1]}, the others {size[0]}x{size[1]}")
    arrays = [np.asarray(im.convert("RGB") if colour else im) for _, im in images]
    x = np.stack(arrays)  # uint8, (N, H, W) or (N, H, W, 3)
    return x.transpose(0, 3, 1, 2) if x.ndim == 4 else x


def _hold_out(x, y, n):
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    keep, out = perm[n:], perm[:n]
    return (x[keep], None if y is None else y[keep]), (x[out], None if y is None else y[out])


def _read_raw(path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``path`` by name (``x_train``, ``x_val``, ``x_test``, ``y_*``), each refused
    with one clean message when the file is not what its name says (truncated, random bytes)."""
    if path.is_dir():
        subs = {name: path / name for name in ("train", "val", "valid", "test") if (path / name).is_dir()}
        if "train" in subs:
            return {f"x_{'val' if k == 'valid' else k}": _read_images(p) for k, p in subs.items()}
        return {"x_train": _read_images(path)}
    if path.suffix not in (".npy", ".npz"):
        raise DataError(f"data path {path}: expected an .npz or .npy file, or a folder of images")
    kind = "an .npy array" if path.suffix == ".npy" else "an .npz archive of arrays"
    try:
        with open(path, "rb") as handle:  # closed even when numpy fails half-way through a truncated archive
            return _arrays(handle, path)
    except DataError:
        raise
    except Exception:  # truncated archives (BadZipFile), random bytes, pickled objects: one message for all
        raise DataError(
            f"cannot read {path} as {kind}: it is truncated, or not a NumPy file (write it with numpy.save or numpy.savez)"
        ) from None


NPZ_KEYS = ("x_train", "x_val", "x_valid", "x_test", "y_train", "y_val", "y_valid", "y_test")


def _arrays(handle, path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npy":
        return {"x_train": np.load(handle, allow_pickle=False)}
    raw = {}
    with np.load(handle, allow_pickle=False) as f:
        if "x_train" not in f.files:
            raise DataError(f"{path} has no array 'x_train' (it has {f.files}); name the training points x_train")
        _refuse_misspelt_splits(f.files, path)
        for key in NPZ_KEYS:
            if key in f.files:
                raw[key.replace("valid", "val")] = f[key]
    return raw


def _refuse_misspelt_splits(names: list[str], path: Path) -> None:
    """Other arrays are left alone, but one named almost as a split ('x_tset') is a typo that would
    silently lose that split (a test split held out of x_train instead, say)."""
    import difflib

    for name in names:
        if name in NPZ_KEYS:
            continue
        close = difflib.get_close_matches(name.lower(), NPZ_KEYS, n=1, cutoff=0.75)
        if close:
            raise DataError(
                f"{path.name} holds an array '{name}', not read: did you mean '{close[0]}'? (the arrays read are "
                f"{', '.join(NPZ_KEYS)})"
            )


def _labels(y, what: str) -> np.ndarray:
    """Class labels as int64, one per point: whole numbers from 0 (as the k-NN accuracy and the
    classifier count them), refused otherwise with the first offending row."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}: one class label per point (N,); from one-hot rows take y.argmax(1)")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{what} holds {y.dtype} values: class labels must be whole numbers 0, 1, 2, ...")
    bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)) | (y < 0)) if y.dtype.kind == "f" else np.flatnonzero(y < 0)
    if bad.size:
        raise DataError(
            f"{what} row {bad[0]} is {y[bad[0]]}: class labels must be whole numbers 0, 1, 2, ... ({bad.size} rows are not)"
        )
    return y.astype(np.int64)


def _splits(raw: dict, path: Path, layout: str) -> dict:
    """``{split: (x, y)}`` for the splits ``raw`` holds, each checked, channels-first."""
    splits = {}
    for split in ("train", "val", "test"):
        x = raw.get(f"x_{split}")
        if x is None:
            continue
        x = _points(x, f"{path.name} x_{split}", layout)
        y = raw.get(f"y_{split}")
        if y is not None:
            y = _labels(y, f"{path.name} y_{split}")
            if len(y) != len(x):
                raise DataError(f"{path.name}: y_{split} has {len(y)} labels for {len(x)} points in x_{split}")
        splits[split] = (x, y)
    shapes = {k: v[0].shape[1:] for k, v in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{path.name}: the splits' points have different shapes {shapes}; every split needs the same")
    return splits


def load_data_file(path: str | os.PathLike, scale: str = "auto", layout: str = "auto"):
    """``((train, val, test), image_shape)`` from ``path``, each split ``(x (N, D) float32, labels | None)``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    splits = _splits(_read_raw(path), path, layout)
    train_x, train_y = splits["train"]
    for split in ("test", "val"):
        if split not in splits:
            n = max(MIN_SPLIT, int(round(HOLD_OUT * len(splits["train"][0]))))
            if len(train_x) - n < MIN_SPLIT:
                raise DataError(
                    f"{path.name}: {len(train_x)} training points are too few to hold out a {split} split of at least "
                    f"{MIN_SPLIT} points and keep {MIN_SPLIT} to train on (a standard error needs two points); give more "
                    "points, or x_val and x_test of your own"
                )
            (train_x, train_y), splits[split] = _hold_out(train_x, train_y, n)
    splits["train"] = (train_x, train_y)
    out = []
    for split in ("train", "val", "test"):
        x, y = splits[split]
        flat = to_intensities(x.reshape(len(x), -1), f"{path.name} {split} split", scale)
        out.append((flat, y))  # labels are int64 from _labels
    return tuple(out), image_shape_of(tuple(train_x.shape[1:]))
