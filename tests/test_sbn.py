"""The sigmoid belief network: its log p(x) against exact enumeration, and the discrete-latent
objectives compared on it from the command line."""

import itertools
import json

import pytest
import torch

from ppl_vae import log_px
from ppl_vae.cli import main
from ppl_vae.guides import SBNGuide
from ppl_vae.models import SigmoidBeliefNet


def exact_log_px(model: SigmoidBeliefNet, x: torch.Tensor) -> torch.Tensor:
    """log p(x) per point, summing p(x, z) over every binary configuration of every layer."""
    layers = [torch.tensor(list(itertools.product([0.0, 1.0], repeat=d))) for d in model.z_dims]
    total = []
    for zs in itertools.product(*layers):
        log_p = torch.distributions.Bernoulli(logits=model.top_logits).log_prob(zs[-1]).sum()
        for level in range(len(zs) - 1, 0, -1):
            log_p = log_p + torch.distributions.Bernoulli(logits=model.down[level - 1](zs[level])).log_prob(zs[level - 1]).sum()
        total.append(log_p + torch.distributions.Bernoulli(logits=model.decoder(zs[0])).log_prob(x).sum(-1))
    return torch.logsumexp(torch.stack(total), 0)


def test_log_px_of_a_small_sbn_matches_exact_enumeration():
    torch.manual_seed(0)
    model, guide = SigmoidBeliefNet(x_dim=5, z_dims=(3, 2)), SBNGuide(x_dim=5, z_dims=(3, 2))
    x = torch.bernoulli(torch.full((20, 5), 0.4))
    with torch.no_grad():
        exact = exact_log_px(model, x)
        est = log_px(model, guide, x, k=20000, seed=0, compile="off")
    # 32 configurations and 20,000 draws: the importance-sampling bias is far below the tolerance
    torch.testing.assert_close(est.per_point, exact, atol=0.02, rtol=0)


def test_the_discrete_objectives_are_compared_on_it_in_one_command(tmp_path, capsys):
    out = tmp_path / "cmp"
    run = ["--dataset", "digits", "--model", "sbn", "--z-dims", "8,4", "--epochs", "1", "--test-k", "20",
           "--eval-every", "0", "--no-progress", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(["compare", "--objectives", "vimco:k=3,rws:k=3,tracegraph", *run]) == 0
    rows = json.loads((out / "compare.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert len(rows) == 3 and all(-80 < r["log_px"] < -20 for r in rows), rows
    capsys.readouterr()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--guide", "mean_field"], "the sbn model and the sbn guide go together"),
        (["--z-dim", "5"], "--z-dim: not an option of the sbn model (it takes --z-dims)"),
        (["--objective", "dreg:k=2"], "use vimco:k=K or rws:k=K"),
    ],
)
def test_what_does_not_fit_it_is_refused_by_name(tmp_path, capsys, extra, message):
    run = ["train", "--dataset", "digits", "--model", "sbn", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")]
    assert main([*run, *extra]) == 2
    assert message in capsys.readouterr().err
