"""A user's own data: --data files and folders, the pixel range decided from the data, every split
checked before training, NumPy and float64 inputs from Python, portable checkpoints."""

import json
import re
import warnings

import numpy as np
import pytest
import torch

from ppl_vae import TrainConfig, Trainer, load_dataset, log_px
from ppl_vae.cli import main
from ppl_vae.guides import MeanFieldGuide
from ppl_vae.models import VAE
from ppl_vae.pixels import DataError, DataNote, to_intensities

RNG = np.random.default_rng(0)


def _digits_uint8(n=60, side=8):
    return (RNG.random((n, side, side)) * 255).astype(np.uint8)


def test_float_intensities_in_a_named_data_set_are_not_divided_by_255_again(tmp_path):
    """The regression: mnist.npz holding floats in [0, 1] was divided by 255 (scored -54.8 nats, 0 active units)."""
    x = RNG.random((120, 28, 28)).astype(np.float32)
    y = RNG.integers(0, 10, 120)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:30], y_test=y[:30])
    data = load_dataset("mnist", tmp_path)
    assert data.train.x.max() > 0.99 and abs(float(data.train.x.mean()) - float(x.mean())) < 0.01
    np.savez(
        tmp_path / "mnist.npz",
        x_train=(x * 255).astype(np.uint8),
        y_train=y,
        x_test=(x[:30] * 255).astype(np.uint8),
        y_test=y[:30],
    )
    assert abs(float(load_dataset("mnist", tmp_path).train.x.mean()) - float(x.mean())) < 0.01


def test_pixel_range_is_decided_from_the_data():
    assert to_intensities(np.array([[0, 255]], dtype=np.uint8), "x").tolist() == [[0.0, 1.0]]
    assert to_intensities(np.array([[0.0, 0.5]]), "x").tolist() == [[0.0, 0.5]]
    assert to_intensities(np.array([[0, 1]]), "x").tolist() == [[0.0, 1.0]]  # integer 0/1: binary already
    with pytest.raises(DataError, match=r"values in \[0, 200\].*--scale 255"):
        to_intensities(np.array([[0.0, 200.0]]), "x")
    assert to_intensities(np.array([[0.0, 200.0]]), "x", scale="255").max() == pytest.approx(200 / 255)
    with pytest.raises(DataError, match=r"values in \[-1, 1\]"):
        to_intensities(np.array([[-1.0, 1.0]]), "x")
    with pytest.raises(DataError, match="NaN"):
        to_intensities(np.array([[np.nan, 1.0]]), "x")
    with pytest.raises(DataError, match="dtype"):
        to_intensities(np.array([["a", "b"]]), "x")


@pytest.mark.parametrize(
    "layout, image_shape",
    [((60, 64), (8, 8)), ((60, 8, 8), (8, 8)), ((60, 1, 8, 8), (8, 8)), ((60, 3, 4, 5), (3, 4, 5)), ((60, 7), (1, 7))],
)
def test_any_array_layout_keeps_its_image_shape(tmp_path, layout, image_shape):
    x = (RNG.random(layout) * 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    data = load_dataset(str(tmp_path / "x.npy"))
    assert data.image_shape == image_shape and data.x_dim == int(np.prod(layout[1:]))
    # 10 % each for validation and test, cut from the points with a fixed seed
    assert (len(data.train), len(data.val), len(data.test)) == (48, 6, 6)


def test_an_npz_with_its_own_splits_and_labels(tmp_path):
    x = _digits_uint8(80)
    np.savez(tmp_path / "d.npz", x_train=x[:50], y_train=np.arange(50) % 3, x_valid=x[50:65], x_test=x[65:], y_test=np.zeros(15))
    data = load_dataset(str(tmp_path / "d.npz"))
    assert (len(data.train), len(data.val), len(data.test)) == (50, 15, 15)
    assert data.train.labels.tolist()[:4] == [0, 1, 2, 0] and data.val.labels is None
    np.savez(tmp_path / "bad.npz", x_train=x[:50], x_test=_digits_uint8(10, side=7))
    with pytest.raises(DataError, match="different shapes"):
        load_dataset(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "nolabels.npz", x_train=x[:50], y_train=np.zeros(49))
    with pytest.raises(DataError, match="49 labels for 50 points"):
        load_dataset(str(tmp_path / "nolabels.npz"))
    np.savez(tmp_path / "nox.npz", images=x)
    with pytest.raises(DataError, match="no array 'x_train'"):
        load_dataset(str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "extra.npz", x_train=x[:50], x_test=x[50:], x_valid=x[50:], x_mean=x.mean(0), y_train=np.arange(50.0) % 3)
    assert load_dataset(str(tmp_path / "extra.npz")).train.labels.tolist()[:4] == [0, 1, 2, 0]


@pytest.mark.parametrize(
    "arrays, message",
    [  # each was read without a word before: a split lost to a typo, labels cast to 0 or crashing after training
        ({"x_tset": 10}, "holds an array 'x_tset', not read: did you mean 'x_test'?"),
        ({"Y_train": 50}, "holds an array 'Y_train', not read: did you mean 'y_train'?"),
        ({"y_train": np.linspace(0, 1, 50)}, "y_train row 1 is 0.0204"),
        ({"y_train": -(np.arange(50) % 3)}, "y_train row 1 is -1: class labels must be whole numbers 0, 1, 2, ... (33 rows"),
        ({"y_train": np.eye(3)[np.arange(50) % 3]}, "y_train has shape (50, 3): one class label per point"),
        ({"y_train": np.array(["a", "b"] * 25)}, "y_train holds <U1 values"),
    ],
)
def test_misnamed_splits_and_labels_that_are_not_classes_are_refused(tmp_path, arrays, message):
    x = _digits_uint8(60)
    arrays = {k: (x[:v] if isinstance(v, int) and k.startswith("x") else v) for k, v in arrays.items()}
    arrays = {k: (np.arange(v) % 3 if isinstance(v, int) else v) for k, v in arrays.items()}
    np.savez(tmp_path / "d.npz", x_train=x[:50], **arrays)
    with pytest.raises(DataError, match=re.escape(message)):
        load_dataset(str(tmp_path / "d.npz"))


def test_a_folder_of_images(tmp_path):
    from PIL import Image

    for split, n in (("train", 20), ("test", 5)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.fromarray(_digits_uint8(1, side=6)[0]).save(tmp_path / split / f"{i:03d}.png")
    data = load_dataset(str(tmp_path))
    assert data.image_shape == (6, 6) and (len(data.train), len(data.val), len(data.test)) == (18, 2, 5)
    Image.fromarray(_digits_uint8(1, side=5)[0]).save(tmp_path / "train" / "odd.png")
    with pytest.raises(DataError, match="odd.png is 5x5, the others 6x6"):
        load_dataset(str(tmp_path))


def test_fit_and_log_px_take_numpy_and_float64_with_a_note():
    x = (RNG.random((40, 16)) > 0.5).astype(np.float64)
    model, guide = VAE(x_dim=16, z_dim=2, hidden=(8,)), MeanFieldGuide(x_dim=16, z_dim=2, hidden=(8,))
    with pytest.warns(DataNote, match="float64 to float32"):
        Trainer(model, guide, TrainConfig(epochs=1, batch_size=20, eval_every=0, progress=False)).fit(x, None)
    with pytest.warns(DataNote):
        assert log_px(model, guide, x, k=5).n == 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 arrays need no note
        assert log_px(model, guide, x.astype(np.float32), k=5).n == 40
    with pytest.raises(DataError, match="uint8 pixels"):
        log_px(model, guide, torch.full((4, 16), 255, dtype=torch.uint8), k=5)


def _train_argv(data, out, *extra):
    return ["train", "--data", str(data), "--epochs", "1", "--hidden", "16", "--z-dim", "2", "--test-k", "5", "--eval-every", "0",
            "--out", str(out), "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def test_train_evaluate_and_sample_own_data_through_the_cli(tmp_path, capsys):
    x = _digits_uint8(100)
    np.save(tmp_path / "mine.npy", x)
    out = tmp_path / "run"
    assert main(_train_argv(tmp_path / "mine.npy", out)) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["meta"]["image_shape"] == [8, 8]
    assert result["config"]["meta"]["dataset"] == str((tmp_path / "mine.npy").resolve())
    assert len(result["config"]["meta"]["data_sha256"]) == 64
    # the data moved: evaluate says where to point it, and --data does
    (tmp_path / "mine.npy").rename(tmp_path / "moved.npy")
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "5", "--no-progress", "--device", "cpu"]) == 2
    assert "pass --data PATH" in capsys.readouterr().err
    assert (
        main(["evaluate", str(out), "--k", "5", "--no-progress", "--device", "cpu", "--data", str(tmp_path / "moved.npy")]) == 0
    )
    assert "instead of the recorded" in capsys.readouterr().err
    np.save(tmp_path / "other.npy", _digits_uint8(100))
    assert main(["sample", str(out), "--n", "4", "--device", "cpu", "--data", str(tmp_path / "other.npy")]) == 0
    assert "differ from the data the model was trained on" in capsys.readouterr().err
    assert (out / "sample-n4-data-other" / "samples.png").exists()


def test_a_test_split_of_another_shape_is_refused_before_training(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x_train=_digits_uint8(50), x_test=_digits_uint8(10, side=6))
    assert main(_train_argv(tmp_path / "d.npz", tmp_path / "run")) == 2
    assert "different shapes" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_vague_cases_found_by_trying_bad_inputs_now_say_what_is_wrong(tmp_path, capsys):
    np.savez(tmp_path / "real.npz", x_train=RNG.standard_normal((60, 16)).astype(np.float32))
    np.save(tmp_path / "words.npy", np.array([["a", "b"]]))
    (tmp_path / "boom.py").write_text("def model(x):\n    raise RuntimeError('boom')\n")
    cases = [
        (["--data", str(tmp_path / "real.npz"), "--scale", "none", "--likelihood", "gaussian"], "--binarize none"),
        (["--data", str(tmp_path / "words.npy")], "dtype <U1; expected numbers"),
        (
            [
                "--data",
                str(tmp_path / "real.npz"),
                "--scale",
                "none",
                "--binarize",
                "none",
                "--model",
                f"{tmp_path}/boom.py:model",
                "--guide",
                "mean_field",
            ],
            "the model cannot run on test data of shape (6, 16) at the guide's samples (z: (2, 10)): RuntimeError: boom "
            "(raised at",
        ),  # fmt: skip
    ]
    for extra, message in cases:
        assert main(["train", *extra, "--epochs", "1", "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Trace Shapes" not in err, err
    # real values with a Gaussian likelihood train when nothing binarises them
    argv = ["train", "--data", str(tmp_path / "real.npz"), "--scale", "none", "--binarize", "none", "--likelihood", "gaussian"]
    assert main([*argv, "--epochs", "1", "--test-k", "3", "--out", str(tmp_path / "ok"), "--no-progress", "--device", "cpu"]) == 0


def test_a_test_split_outside_the_likelihoods_support_is_refused_before_training(tmp_path, capsys):
    x = (RNG.random((60, 16)) > 0.5).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, x_test=RNG.random((10, 16)).astype(np.float32))  # test: grey levels
    argv = ["train", "--data", str(tmp_path / "d.npz"), "--binarize", "none", "--epochs", "1", "--out", str(tmp_path / "r")]
    assert main([*argv, "--no-progress", "--device", "cpu"]) == 2
    assert "test data row 0 lies outside the support" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
