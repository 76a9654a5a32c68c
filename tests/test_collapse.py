"""The strong-decoder experiment from the command line: a PixelCNN-decoder VAE trains, resumes to
the bit, is evaluated and sampled; the ACN options reach the prior; every new option is checked
before training; and ``compare --preset collapse`` runs its eight rows end to end."""

import json

import pytest
import torch

from ppl_vae.checkpoint import load_checkpoint
from ppl_vae.cli import main

TINY = ["--dataset", "digits", "--z-dim", "3", "--hidden", "16", "--test-k", "4", "--eval-k", "3", "--eval-n", "60",
        "--no-progress", "--device", "cpu"]  # fmt: skip
PIXELCNN = ["--decoder", "pixelcnn", "--pixelcnn-layers", "1", "--pixelcnn-channels", "4"]


def _train(out, *extra, epochs=2):
    return main(["train", *TINY, *PIXELCNN, "--epochs", str(epochs), "--out", str(out), *extra])


def test_a_pixelcnn_vae_trains_resumes_to_the_bit_evaluates_and_samples(tmp_path, capsys):
    assert _train(tmp_path / "whole", epochs=2) == 0
    assert _train(tmp_path / "split", epochs=1) == 0
    assert _train(tmp_path / "split", "--resume", epochs=2) == 0
    capsys.readouterr()
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["params"]
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["params"]
    assert whole.keys() == split.keys() and all(torch.equal(whole[k], split[k]) for k in whole)
    result = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert result["config"]["meta"]["model_kwargs"]["decoder"] == "pixelcnn" and result["n"] == 60
    assert result["data_init"].startswith("not applied: the PixelCNN decoder")
    assert 0 <= result["code_knn"]["knn_accuracy"] <= 1 and result["code_knn"]["points"] == 60
    assert main(["evaluate", str(tmp_path / "whole" / "checkpoint.pt"), "--k", "4", "--no-progress", "--device", "cpu"]) == 0
    assert "k-NN accuracy of the codes" in capsys.readouterr().out
    assert main(["sample", str(tmp_path / "whole" / "checkpoint.pt"), "--n", "4", "--device", "cpu"]) == 0
    assert (tmp_path / "whole" / "sample-n4" / "samples.png").stat().st_size > 100


def test_acn_options_reach_the_prior_and_its_ordered_coding_cost_is_reported(tmp_path, capsys):
    out = tmp_path / "acn"
    args = ["train", *TINY, "--prior", "acn", "--acn-neighbours", "3", "--acn-hidden", "8,8", "--epochs", "1"]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ordered coding cost (ACN)" in printed
    # its importance-sampled score is a code length under a prior that reads the training codes, and says so
    assert "test coding cost (ACN)" in printed and "test log p(x)" not in printed
    result = json.loads((out / "result.json").read_text())
    assert result["log_px_is"] == "acn coding cost"
    assert result["config"]["meta"]["model_kwargs"]["prior_kwargs"] == {"num_neighbours": 3, "hidden": [8, 8]}
    o = result["ordered_coding"]
    assert o["ordered_coding_cost"] == pytest.approx(o["ordered_rate"] + o["distortion"])
    assert o["ordered_rate"] > 0 and o["first_code_nats"] >= 0
    params = load_checkpoint(out / "checkpoint.pt")["params"]
    assert [tuple(v.shape) for k, v in params.items() if "prior_net" in k and k.endswith("weight")] == [(8, 3), (8, 8), (6, 8)]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--decoder", "pixelcnn", "--likelihood", "gaussian"], "not --likelihood gaussian"),
        (["--pixelcnn-layers", "2"], "give --decoder pixelcnn too"),
        (["--decoder", "pixelcnn", "--pixelcnn-channels", "0"], "--pixelcnn-channels must be at least 1"),
        (["--decoder", "pixelcnn", "--pixelcnn-layers", "-1"], "--pixelcnn-layers must be 0 or more"),
        (["--acn-neighbours", "3"], "give --prior acn too"),
        (["--prior", "acn", "--acn-neighbours", "0"], "--acn-neighbours must be at least 1"),
        (["--prior", "acn", "--acn-hidden", "8,0"], "--acn-hidden widths must be positive"),
        (["--prior", "acn", "--acn-neighbours", "5000"], "need more training points than K"),
        (["--eval-n", "1"], "--eval-n must be at least 2"),
        (["--model", "hierarchical", "--decoder", "pixelcnn"], "not an option of the hierarchical model"),
    ],
)
def test_bad_decoder_and_prior_options_are_refused_before_training(tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out), *extra]) != 0
    err = capsys.readouterr().err
    assert message in err, err
    assert not (out / "checkpoint.pt").exists()


def test_a_pixelcnn_decoder_on_data_that_are_not_grey_images_is_refused(tmp_path, capsys):
    """Colour images are refused (a flat vector loads as a 1-row image, which a PixelCNN models exactly)."""
    import numpy as np

    path = tmp_path / "colour.npz"
    rng = np.random.default_rng(0)
    shape = (3, 4, 4)
    np.savez(
        path,
        x_train=rng.integers(0, 2, (80, *shape)).astype("float32"),
        x_test=rng.integers(0, 2, (20, *shape)).astype("float32"),
    )
    assert main(["train", "--data", str(path), *PIXELCNN, "--epochs", "1", "--test-k", "2", "--eval-k", "2", "--no-progress",
                 "--out", str(tmp_path / "v")]) != 0  # fmt: skip
    assert "a PixelCNN decoder needs grey images" in capsys.readouterr().err


def test_compare_preset_collapse_trains_its_eight_rows(tmp_path, capsys):
    out = tmp_path / "collapse"
    args = ["compare", "--preset", "collapse", *TINY, "--pixelcnn-layers", "1", "--pixelcnn-channels", "4",
            "--acn-neighbours", "3", "--epochs", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "k-NN accuracy" in table and "ordered coding cost" in table
    rows = json.loads((out / "compare.json").read_text())["rows"]
    names = [r["variant"] for r in rows]
    assert names == [f"{d} | {p}" for d in ("MLP", "PixelCNN") for p in ("N(0,I)", "VampPrior", "free bits 0.25/dim", "ACN")]
    assert all(r["status"] == "ok" and 0 <= r["knn_accuracy"] <= 1 for r in rows)
    assert [r["ordered_coding_cost"] is not None for r in rows] == [False, False, False, True] * 2
    assert "free_bits=0.25" in rows[2]["objective"]
    with pytest.raises(SystemExit):
        main(["compare", "--preset", "nope", *TINY])
    assert main(["compare", "--preset", "collapse", "--decoder", "pixelcnn", *TINY, "--out", str(tmp_path / "x")]) != 0
    assert "chooses the decoders and priors itself" in capsys.readouterr().err
