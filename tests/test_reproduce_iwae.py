"""benchmarks/reproduce_iwae.py: the paper's schedule, and a cell run in pieces ends where a whole run ends."""

import importlib.util
import json
from pathlib import Path

import pytest

from ppl_vae.checkpoint import load_checkpoint

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce_iwae.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("reproduce_iwae", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_schedule_is_the_papers(script):
    assert script.FULL_PASSES == 3280 and [p for p, _ in script.SCHEDULE] == [1, 3, 9, 27, 81, 243, 729, 2187]
    assert script.SCHEDULE[0][1] == 1e-3 and script.SCHEDULE[7][1] == pytest.approx(1e-4)
    assert set(script.PAPER) <= set(script.CELLS) and script.CELLS["2L-iwae50"] == (2, "iwae:k=50", None, "normal")


def test_a_cell_run_in_pieces_scores_as_an_uninterrupted_one(script, tmp_path, capsys, monkeypatch):
    from ppl_vae.train import Trainer

    from helpers import StepClock

    monkeypatch.setattr(Trainer, "clock", StepClock(tick=1 / 64))  # --minutes 0.025 is 96 steps, on any machine
    common = ["--cell", "2L-iwae5", "--dataset", "mnist5k", "--passes", "1", "--test-k", "20", "--test-n", "30",
              "--no-progress", "--device", "cpu", "--compile", "off"]  # fmt: skip
    assert script.main([*common, "--out", str(tmp_path / "whole")]) == 0
    # the first piece is scored where it stopped (a push), and the pieces after it still end where a whole run ends
    assert script.main([*common, "--out", str(tmp_path / "cut"), "--minutes", "0.025", "--score-when-stopped"]) == 0
    pushed = json.loads((tmp_path / "cut" / "2L-iwae5" / "result.json").read_text())
    assert pushed["steps"] == 96 and pushed["passes"] == round(96 / -(-pushed["n_train"] // 20), 3) < 1
    assert "at step 96" in pushed["stopped"] and pushed["nll"] > 0
    pieces, step = 1, 96
    while (status := script.main([*common, "--out", str(tmp_path / "cut"), "--minutes", "0.025"])) == 3:
        pieces += 1
        reached = load_checkpoint(tmp_path / "cut" / "2L-iwae5")["step"]
        assert reached == step + 96, (pieces, reached)
        step = reached
    assert status == 0 and pieces >= 1 and "run the same command to continue" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "2L-iwae5" / "result.json").read_text())
    cut = json.loads((tmp_path / "cut" / "2L-iwae5" / "result.json").read_text())
    assert cut["nll"] == whole["nll"] and cut["steps"] == whole["steps"] and cut["passes"] == 1 and "stopped" not in cut
    assert set(cut["active_units"]) == {"z1", "z2", "total"} and cut["paper_nll"] == 83.89
    assert script.main([*common, "--out", str(tmp_path / "cut")]) == 0  # finished: read back, not retrained
    assert "finished already" in capsys.readouterr().out
    assert script.main(["--table", "--out", str(tmp_path / "cut")]) == 0
    assert "| 2L-iwae5 | iwae:k=5 | 83.89 |" in capsys.readouterr().out


@pytest.mark.parametrize("folder, message", [("none", "none does not exist"), ("empty", "no mnist.npz and no IDX files")])
def test_missing_data_is_one_line_and_exit_2(script, tmp_path, capsys, folder, message):
    (tmp_path / "empty").mkdir()
    status = script.main(["--cell", "1L-vae1", "--data-dir", str(tmp_path / folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("reproduce_iwae.py: error: ") and message in err and "Traceback" not in err


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("iwae_reference", SCRIPT.with_name("iwae_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("layers", [1, 2])
def test_the_plain_pytorch_reference_is_the_cells_network_initialisation_and_bound(script, reference, layers):
    import torch

    from ppl_vae.device import seed_everything
    from ppl_vae.objectives import get_objective

    seed_everything(0)
    model, guide = script.build_pair(layers)
    torch.manual_seed(0)
    plain = reference.Reference(layers)
    ours = list(model.parameters()) + list(guide.parameters())
    assert all(torch.equal(a, b) for a, b in zip(plain.model_parameters() + plain.guide_parameters(), ours, strict=True))
    intensities = torch.rand(200, 784, generator=torch.Generator().manual_seed(1)) ** 4
    model.init_from_data(intensities)
    plain.init_from_data(intensities)
    assert torch.equal(plain.decoder[-1].bias, model.decoder[-1].bias)
    x = torch.bernoulli(intensities[:6])
    for spec, kind in (("iwae:k=5", "iwae"), ("elbo:k=5", "elbo")):
        objective = get_objective(spec)
        objective.differentiable_loss(model, guide, x)  # a first call may run the pair once to read its plates
        torch.manual_seed(3)
        ours = objective.differentiable_loss(model, guide, x)
        our_grads = torch.autograd.grad(ours, list(model.parameters()) + list(guide.parameters()))
        torch.manual_seed(3)
        theirs = -reference.bound(plain.log_weights(x, 5), kind).sum()
        their_grads = torch.autograd.grad(theirs, plain.model_parameters() + plain.guide_parameters())
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-3)  # the same draws give the same loss
        for a, b in zip(their_grads, our_grads, strict=True):  # and the same gradient (no detached term on either side)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


def test_a_reference_run_in_pieces_ends_as_a_whole_one_and_sits_beside_its_cell(script, tmp_path, capsys):
    common = ["--cell", "1L-iwae5", "--dataset", "mnist5k", "--train-n", "400", "--test-k", "20", "--test-n", "30",
              "--no-progress", "--device", "cpu", "--compile", "off"]  # fmt: skip
    assert script.main([*common, "--passes", "2", "--reference", "--out", str(tmp_path / "whole")]) == 0
    for passes in ("1", "2"):  # the second command continues the first's checkpoint
        assert script.main([*common, "--passes", passes, "--reference", "--out", str(tmp_path / "cut")]) == 0
    read = lambda out: json.loads((out / "reference" / "1L-iwae5" / "result.json").read_text())  # noqa: E731
    whole, cut = read(tmp_path / "whole"), read(tmp_path / "cut")
    assert cut["nll"] == whole["nll"] and cut["passes"] == 2 and cut["trained_by"] == "reference"
    assert cut["data_init"].startswith("decoder's output bias")
    assert script.main([*common, "--passes", "2", "--out", str(tmp_path / "cut")]) == 0  # the ppl_vae cell beside it
    capsys.readouterr()
    assert script.main(["--table", "--out", str(tmp_path / "cut")]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1L-iwae5")][0].split(" | ")
    ours, plain, diff = (float(row[i].split(" ± ")[0]) for i in (3, 5, 6))
    assert diff == pytest.approx(ours - plain, abs=0.011) and " ± " in row[6] and row[10] == "data"
    # the cell continued past its reference: two budgets are not paired
    assert script.main([*common, "--passes", "3", "--out", str(tmp_path / "cut")]) == 0
    capsys.readouterr()
    assert script.main(["--table", "--out", str(tmp_path / "cut")]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1L-iwae5")][0].split(" | ")
    assert row[6] == "not paired: ppl_vae 3 passes, K 20; reference 2 passes, K 20"
    # the other initialisation in a folder trained with it is refused; the reference has no DReG cell
    assert script.main([*common, "--passes", "2", "--no-data-init", "--out", str(tmp_path / "cut")]) == 2
    assert "with the data-informed initialisation and the command asks without it" in capsys.readouterr().err
    assert script.main(["--cell", "2L-dreg50", "--dataset", "mnist5k", "--reference", "--out", str(tmp_path / "d")]) == 2
    assert "--reference is written for the paper's cells" in capsys.readouterr().err


def test_the_table_over_seeds_counts_the_trainings_randomness(script, tmp_path, capsys):
    """Three seeds of a cell and its reference: the paired column is the mean of the per-seed
    differences, and its SE adds their spread over seeds to the test images' noise."""
    import math

    import torch

    shifts = [0.5, -0.1, 0.2, 9.0]  # reference's log p(x) minus ppl_vae's, per seed; the last at 40 passes
    per_image = torch.linspace(-1.0, 1.0, 40, dtype=torch.float64)  # the same per-image wiggle each seed
    folders = [tmp_path / f"seed{s}" for s in range(4)]
    for folder, shift in zip(folders, shifts):
        for sub, values in (("", -90.0 + 0 * per_image), ("reference", -90.0 + shift + per_image)):
            cell = folder / sub / "1L-vae1"
            cell.mkdir(parents=True)
            torch.save(values.float(), cell / "per_point.pt")
            result = {"cell": "1L-vae1", "objective": "elbo", "paper_nll": 86.76, "nll": float(-values.mean()), "nll_se": 0.1,
                      "k": 10, "n_test": 40, "passes": 40 if shift == 9.0 else 13, "full_passes": 3280, "active_units": {"z": 5, "total": 5},
                      "data_init": "decoder", "train_seconds": 60.0, "eval_seconds": 1.0}  # fmt: skip
            (cell / "result.json").write_text(json.dumps(result))
    assert script.main(["--table", "--out", str(folders[0]), "--seeds-out", *map(str, folders[1:])]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1L-vae1")][0].split(" | ")
    mean = sum(shifts[:3]) / 3  # another budget's seed is left out
    seeds_var = sum((s - mean) ** 2 for s in shifts[:3]) / 2 / 3
    images_var = per_image.var().item() / 40
    assert row[6] == f"{mean:+.2f} ± {math.sqrt(seeds_var + images_var):.2f} (3 seeds)"
    assert row[3] == "90.00 (seeds: 90.00, 90.00, 90.00)" and row[5].startswith(f"{90 - mean:.2f} (seeds: ")
    # one seed: the test images' noise only, as before
    assert script.main(["--table", "--out", str(folders[0])]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1L-vae1")][0].split(" | ")
    assert row[6] == f"{shifts[0]:+.2f} ± {math.sqrt(images_var):.2f}"
