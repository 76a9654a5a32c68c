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
    pieces, step = 0, 0
    while (status := script.main([*common, "--out", str(tmp_path / "cut"), "--minutes", "0.025"])) == 3:
        pieces += 1
        reached = load_checkpoint(tmp_path / "cut" / "2L-iwae5")["step"]
        assert reached == step + 96, (pieces, reached)
        step = reached
    assert status == 0 and pieces >= 1 and "run the same command to continue" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "2L-iwae5" / "result.json").read_text())
    cut = json.loads((tmp_path / "cut" / "2L-iwae5" / "result.json").read_text())
    assert cut["nll"] == whole["nll"] and cut["steps"] == whole["steps"] and cut["passes"] == 1
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
