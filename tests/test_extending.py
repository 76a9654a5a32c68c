"""Extending the package takes what the README's "Extending ppl_vae" says and nothing more: a new
objective is a function and a registry line, a new diagnostic a function and a stage entry, a new
guide family a file and a registry line; and checkpoints written by earlier versions still load."""

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from ppl_vae import registry
from ppl_vae.cli import main

TINY = ["--dataset", "digits", "--epochs", "1", "--hidden", "8", "--z-dim", "2", "--test-k", "4", "--eval-every", "0"]
TINY += ["--no-progress", "--device", "cpu"]
OLD = Path(__file__).parent / "data" / "checkpoint_0.1.0_bdd6050.pt"


@pytest.fixture
def registered():
    """Entries a test adds, removed after it."""
    added = []

    def add(table, name, entry):
        table.register(name, entry)
        added.append((table, name))

    yield add
    for table, name in added:
        table.unregister(name)


def tempered_iwae(k: int = 2, temperature: float = 2.0, max_plate_nesting=None):
    """A new objective, written on per-point log-weights: log mean exp(log w / T) * T."""
    from ppl_vae.objectives import PerPointObjective, log_mean_exp

    class Tempered(PerPointObjective):
        def point_surrogate(self, terms):
            bound = temperature * log_mean_exp(terms.log_weights() / temperature)
            return bound, bound

    return Tempered(k, max_plate_nesting)


def test_a_new_objective_is_one_function_and_one_registry_line(registered, tmp_path, capsys):
    registered(registry.OBJECTIVES, "tempered", tempered_iwae)  # the one line
    assert main(["train", "--objective", "tempered:k=3,temperature=1.5", *TINY, "--out", str(tmp_path / "r")]) == 0
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["objective_resolved"] == "tempered:k=3,temperature=1.5" and result["log_px"] < 0
    assert main(["compare", "--objectives", "elbo,tempered:k=2", *TINY, "--out", str(tmp_path / "c")]) == 0
    assert "| tempered:k=2 | ok |" in capsys.readouterr().out


def test_a_new_diagnostic_is_one_function_and_one_stage(monkeypatch, tmp_path):
    from ppl_vae import scoring
    from ppl_vae.evaluate import posterior_means

    def mean_code_norm(s):  # the new diagnostic
        means = posterior_means(s.model, s.guide, s.sub)
        return {"mean_code_norm": {site: float(m.norm(dim=-1).mean()) for site, m in means.items()}}

    stages = [*scoring.STAGES, scoring.Stage("mean code norm", mean_code_norm, when=lambda s: s.level == "full")]
    monkeypatch.setattr(scoring, "STAGES", stages)  # the one entry
    assert main(["train", *TINY, "--out", str(tmp_path / "r")]) == 0
    assert main(["evaluate", str(tmp_path / "r"), "--k", "3", "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "r" / "eval-k3" / "evaluation.json").read_text())
    assert report["mean_code_norm"]["z"] > 0 and "mean code norm" in report["stage_seconds"]


GUIDE_FILE = '''
"""A Laplace encoder: one file."""
import pyro.distributions as dist
from torch import nn

from ppl_vae.guides.base import OneSiteGuide


class LaplaceGuide(OneSiteGuide):
    def __init__(self, x_dim=784, z_dim=10, hidden=(400,), site="z"):
        super().__init__(x_dim, z_dim, site)
        self.net = nn.Sequential(nn.Linear(x_dim, hidden[0]), nn.Tanh(), nn.Linear(hidden[0], 2 * z_dim))

    def posterior(self, x):
        loc, raw = self.net(x).chunk(2, dim=-1)
        return dist.Laplace(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)
'''


def test_a_new_guide_family_is_one_file_and_one_registry_line(registered, tmp_path, monkeypatch):
    (tmp_path / "laplace_guide.py").write_text(textwrap.dedent(GUIDE_FILE))
    monkeypatch.syspath_prepend(str(tmp_path))
    registered(registry.GUIDES, "laplace", "laplace_guide:LaplaceGuide")  # the one line
    assert main(["train", "--guide", "laplace", "--objective", "iwae:k=2", *TINY, "--out", str(tmp_path / "r")]) == 0
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["guide"] == "laplace" and result["log_px"] < 0
    assert main(["evaluate", str(tmp_path / "r"), "--k", "3", "--no-progress", "--device", "cpu"]) == 0


def test_a_checkpoint_of_the_previous_version_evaluates_and_resumes(tmp_path):
    """Written by commit bdd6050 (before this redesign): `ppl-vae train --dataset digits --epochs 2 --hidden 8
    --z-dim 2 --test-k 5 --eval-k 3 --eval-every 1 --objective iwae`."""
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(OLD, run / "checkpoint.pt")
    assert main(["evaluate", str(run), "--k", "5", "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((run / "eval-k5" / "evaluation.json").read_text())["epochs"] == 2
    argv = [
        "train",
        "--dataset",
        "digits",
        "--hidden",
        "8",
        "--z-dim",
        "2",
        "--test-k",
        "5",
        "--eval-k",
        "3",
        "--eval-every",
        "1",
    ]
    argv += ["--objective", "iwae", "--no-progress", "--device", "cpu", "--out", str(run), "--resume"]
    assert main([*argv, "--epochs", "3"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and len(state["history"]) == 3 and state["config"]["label"] == "train"
