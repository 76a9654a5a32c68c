"""Labels: pairs written model(x, y=None) train on batches that carry one-hot labels (the labelled
points on model(x, y) plus the classifier's loss, the others on model(x)); a conditional model is
scored by log p(x | y); the built-in ssvae and cvae and the command line's --labelled."""

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae import TrainConfig, Trainer, log_px
from ppl_vae.data import load_dataset
from ppl_vae.labels import (
    LabelledObjective,
    check_labels,
    choose_labelled,
    classification_error,
    conditioned,
    joined,
    label_columns,
)
from ppl_vae.objectives import get_objective

W = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-2.0, 1.5]])  # class means of a 2-D point


class Mixture(torch.nn.Module):
    """y ~ Cat(1/3), x ~ N(W[y], I); the guide's classifier q(y|x) = Cat(softmax(A x + b)), y enumerated."""

    def __init__(self, means=W):
        super().__init__()
        self.classify = torch.nn.Linear(2, 3)
        self.means = torch.nn.Parameter(means.clone())  # the class means: learnt when training

    def model(self, x, y=None):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.OneHotCategorical(torch.full((x.shape[0], 3), 1 / 3)), obs=y)
            pyro.sample("x", dist.Normal(y @ self.means, 1.0).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("mixture", self)
        with pyro.plate("data", x.shape[0]):
            if y is None:
                pyro.sample("y", dist.OneHotCategorical(logits=self.classify(x)), infer={"enumerate": "parallel"})


def _log_joint(x, y):
    return dist.Normal(y @ W, 1.0).to_event(1).log_prob(x) + math.log(1 / 3)


def test_a_batch_with_labels_is_the_labelled_bound_plus_the_classifier_loss_plus_the_unlabelled_bound():
    torch.manual_seed(0)
    net = Mixture()
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    x = W[labels] + 0.5 * torch.randn(6, 2)
    keep = torch.tensor([True, False, True, False, False, True])
    batch = torch.cat([x, label_columns(labels, keep, 3)], -1)
    objective = LabelledObjective(get_objective("enum"), x_dim=2, aux_weight=2.5)
    loss = objective.differentiable_loss(net.model, net.guide, batch)
    onehot = torch.nn.functional.one_hot(labels, 3).float()
    q = torch.distributions.Categorical(logits=net.classify(x))
    labelled = -_log_joint(x[keep], onehot[keep]).sum() - 2.5 * q.log_prob(labels)[keep].sum()
    # unlabelled: -sum_u sum_y q(y|x) [log p(x, y) - log q(y|x)], every class enumerated
    eye = torch.eye(3)
    joint = torch.stack([_log_joint(x[~keep], eye[c].expand(int((~keep).sum()), 3)) for c in range(3)], -1)
    probs = q.probs[~keep]
    unlabelled = -(probs * (joint - probs.log())).sum()
    assert loss.item() == pytest.approx((labelled + unlabelled).item(), abs=1e-4)
    # pixels alone (validation, scoring) go to the objective as they are
    plain = objective.differentiable_loss(net.model, net.guide, x)
    assert plain.item() == pytest.approx(get_objective("enum").differentiable_loss(net.model, net.guide, x).item(), abs=1e-5)


def test_labels_teach_the_classifier_and_none_leaves_it_at_chance():
    torch.manual_seed(1)
    labels = torch.randint(0, 3, (600,))
    x = W[labels] + 0.7 * torch.randn(600, 2)
    test_labels = torch.randint(0, 3, (400,))
    test_x = W[test_labels] + 0.7 * torch.randn(400, 2)
    errors = {}
    for per_class in (5, None):
        net = Mixture(means=0.1 * torch.randn(3, 2, generator=torch.Generator().manual_seed(3)))
        config = TrainConfig(epochs=10, batch_size=100, lr=0.05, objective="enum", progress=False, eval_every=0, seed=0)
        train_y = None if per_class is None else label_columns(labels, choose_labelled(labels, per_class, 0), 3)
        Trainer(net.model, net.guide, config).fit(x, train_y=train_y)
        errors[per_class] = classification_error(net.guide, test_x, test_labels)["classification_error"]
    # three well-separated classes, their means learnt from a small random start: 15 labels name the
    # components (Bayes error ~6%); without labels the mixture is learnt but its components' names are
    # a permutation of the classes (error ~1/3 or more unless lucky: not with this seed)
    assert errors[5] < 0.15, errors  # measured 0.07 (Bayes error ~0.06)
    assert errors[5] < errors[None] - 0.2, errors  # measured 0.615 without labels


def test_labelled_points_are_chosen_per_class_from_the_seed():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    a, b = choose_labelled(labels, 3, seed=4), choose_labelled(labels, 3, seed=4)
    assert torch.equal(a, b) and a.sum() == 9
    assert [int(a[labels == c].sum()) for c in range(3)] == [3, 3, 3]
    assert not torch.equal(a, choose_labelled(labels, 3, seed=5))
    assert choose_labelled(labels, None, 0).all()
    with pytest.raises(ValueError, match="class 2 has only 5"):
        choose_labelled(labels, 6, 0)
    with pytest.raises(ValueError, match="positive number"):
        choose_labelled(labels, 0, 0)


def test_bad_labels_are_named():
    with pytest.raises(ValueError, match="has none: give y_train"):
        check_labels(None, 5, "training data")
    with pytest.raises(ValueError, match="5 points and labels of shape \\(4,\\)"):
        check_labels(torch.zeros(4), 5, "training data")
    with pytest.raises(ValueError, match="whole numbers"):
        check_labels(torch.tensor([0.0, 1.5]), 2, "training data")
    with pytest.raises(ValueError, match="found -1"):
        check_labels(torch.tensor([0, -1]), 2, "training data")


def test_a_pair_that_takes_no_labels_is_refused_with_how_to_write_it():
    from ppl_vae.guides import MeanFieldGuide
    from ppl_vae.models import VAE

    x = torch.bernoulli(torch.full((20, 6), 0.4))
    train_y = label_columns(torch.arange(20) % 2, torch.ones(20, dtype=torch.bool), 2)
    trainer = Trainer(
        VAE(6, 2, hidden=(4,)), MeanFieldGuide(6, 2, hidden=(4,)), TrainConfig(epochs=1, progress=False, eval_every=0)
    )
    with pytest.raises(ValueError, match=r"takes only the data: write it model\(x, y=None\)"):
        trainer.fit(x, train_y=train_y)


class LinearConditional(torch.nn.Module):
    """z ~ N(0, I), x | y, z ~ N(z + M[y], s^2 I): p(x | y) = N(M[y], (1 + s^2) I) exactly; the guide is
    the exact posterior, so every importance weight is p(x | y)."""

    needs_labels = True
    classes = 3

    def __init__(self, s=0.5):
        super().__init__()
        self.s, self.m = s, torch.tensor([[1.0, -1.0], [0.0, 2.0], [-3.0, 0.5]])
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def model(self, x, y):
        pyro.module("lc", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + y @ self.m + 0 * self.dummy, self.s).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("lc", self)
        v = self.s**2 / (1 + self.s**2)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal((x - y @ self.m) / (1 + self.s**2), math.sqrt(v)).to_event(1))


def test_a_conditional_pair_is_scored_by_its_exact_log_p_x_given_y():
    torch.manual_seed(2)
    net = LinearConditional()
    labels = torch.tensor([0, 2, 1, 1, 0])
    x = net.m[labels] + 1.3 * torch.randn(5, 2)
    est = log_px(*conditioned(net.model, net.guide, 2), joined(x, labels, 3), k=20, seed=0)
    exact = dist.Normal(net.m[labels], math.sqrt(1 + net.s**2)).to_event(1).log_prob(x).mean()
    assert est.log_px == pytest.approx(exact.item(), abs=1e-4)


def test_builtin_ssvae_trains_semi_supervised_and_cvae_conditioned():
    from ppl_vae.guides.labelled import CVAEGuide, SSVAEGuide
    from ppl_vae.models.labelled import CVAE, SSVAE

    data = load_dataset("digits").subset(300, 100)
    x, labels = data.train.x, data.train.labels
    test_x, test_labels = data.eval_x("test"), data.test.labels
    torch.manual_seed(0)
    model, guide = SSVAE(64, 4, 10, (32,)), SSVAEGuide(64, 4, 10, (32,), enumerate=True)
    config = TrainConfig(epochs=5, batch_size=30, lr=1e-2, objective="enum", progress=False, eval_every=0, aux_weight=10.0)
    trainer = Trainer(model, guide, config)
    trainer.fit(x, dynamic=True, train_y=label_columns(labels, choose_labelled(labels, 10, 0), 10))
    assert isinstance(trainer.objective, LabelledObjective)
    error = classification_error(guide, test_x, test_labels)
    assert error["classification_error"] < 0.5, error  # chance is 0.9; measured 0.24 (SE 0.04)
    assert math.isfinite(log_px(model, guide, test_x, k=10, seed=0).log_px)  # y summed inside each weight
    cvae, cguide = conditioned(CVAE(64, 4, 10, (32,)), CVAEGuide(64, 4, 10, (32,)), 64)
    Trainer(cvae, cguide, TrainConfig(epochs=2, batch_size=50, progress=False, eval_every=0)).fit(
        joined(x, labels, 10), dynamic=True
    )
    given = log_px(cvae, cguide, joined(test_x, test_labels, 10), k=10, seed=0)
    assert math.isfinite(given.log_px) and given.log_px < 0


def test_training_with_labels_resumes_exactly(tmp_path):
    data = load_dataset("digits").subset(200, 50)
    x, labels = data.train.x, data.train.labels
    train_y = label_columns(labels, choose_labelled(labels, 3, 0), 10)

    def run(epochs, resume):
        from ppl_vae.guides.labelled import SSVAEGuide
        from ppl_vae.models.labelled import SSVAE

        torch.manual_seed(0)
        model, guide = SSVAE(64, 3, 10, (16,)), SSVAEGuide(64, 3, 10, (16,))
        config = TrainConfig(epochs=epochs, batch_size=40, objective="vimco:k=3", progress=False, eval_every=0, out=str(tmp_path))
        trainer = Trainer(model, guide, config)
        trainer.fit(x, dynamic=True, resume=resume, train_y=train_y)
        return trainer.state_dict()

    run(1, False)
    resumed = run(2, True)
    (tmp_path / "checkpoint.pt").unlink()
    straight = run(2, False)
    assert all(torch.equal(resumed[n], straight[n]) for n in straight)


COMMON = ["--dataset", "digits", "--epochs", "1", "--test-k", "4", "--eval-every", "0", "--no-progress", "--device", "cpu"]


def test_command_line_ssvae_with_labels_reports_its_classification_error(tmp_path):
    from ppl_vae.cli import main

    out = tmp_path / "ss"
    args = ["train", "--model", "ssvae", "--guide", "ssvae_enum", "--objective", "enum", "--labelled", "5", "--z-dim", "4"]
    assert main([*args, "--hidden", "32", *COMMON, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    n_train = len(load_dataset("digits").train)
    assert result["labels"]["labelled"] == 50 and result["labels"]["aux_weight"] == pytest.approx(0.1 * n_train / 50)
    assert 0 <= result["classification_error"] <= 1 and result["classification_n"] == result["n"]
    assert main(["evaluate", str(out), "--k", "4", "--n-points", "30", "--device", "cpu", "--no-progress"]) == 0
    report = json.loads(next(out.glob("eval-*/evaluation.json")).read_text())
    assert report["classification_n"] == 30


def test_command_line_cvae_is_trained_and_evaluated_on_log_p_x_given_y(tmp_path):
    from ppl_vae.cli import main

    out = tmp_path / "cv"
    assert (
        main(["train", "--model", "cvae", "--labelled", "all", "--z-dim", "3", "--hidden", "16", *COMMON, "--out", str(out)]) == 0
    )
    result = json.loads((out / "result.json").read_text())
    assert result["labels"]["conditional"] and result["log_px"] < 0
    assert main(["evaluate", str(out), "--k", "4", "--n-points", "20", "--device", "cpu", "--no-progress"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "cvae"], "give --labelled all"),
        (["--model", "ssvae", "--aux-weight", "2"], "--aux-weight weighs"),
        (["--model", "ssvae", "--labelled", "5", "--aux-weight", "-1"], "--aux-weight must be 0 or positive"),
        (["--model", "vae", "--labelled", "5"], "takes only the data"),
        (["--model", "ssvae", "--labelled", "500"], "class 0 has only"),
        (["--model", "ssvae", "--guide", "mean_field"], "the ssvae model and the ssvae guide go together"),
    ],
)
def test_command_line_label_errors(tmp_path, capsys, extra, message):
    from ppl_vae.cli import main

    assert main(["train", *extra, *COMMON, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_labels_asked_of_data_without_them_are_refused(tmp_path, capsys):
    import numpy as np

    from ppl_vae.cli import main

    path = tmp_path / "nolabels.npz"
    np.savez(path, x_train=(np.random.default_rng(0).random((40, 16)) > 0.5).astype(np.float32))
    assert (
        main(["train", "--data", str(path), "--model", "ssvae", "--labelled", "2", *COMMON[2:], "--out", str(tmp_path / "r")])
        == 2
    )
    assert "has none: give y_train" in capsys.readouterr().err


def test_compare_with_labels_shows_the_classification_error(tmp_path):
    from ppl_vae.cli import main

    out = tmp_path / "cmp"
    args = ["compare", "--model", "ssvae", "--guide", "ssvae_enum", "--labelled", "3", "--objectives", "enum"]
    assert main([*args, "--z-dim", "3", "--hidden", "16", *COMMON, "--out", str(out)]) == 0
    table = (out / "compare.md").read_text()
    assert "test classification error" in table
    rows = json.loads((out / "compare.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert 0 <= rows[0]["classification_error"] <= 1


def test_a_guide_site_y_that_is_not_a_class_is_no_classifier():
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    assert classification_error(guide, torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)) is None
    net = Mixture()
    error = classification_error(net.guide, W[torch.tensor([0, 1, 2])], torch.tensor([0, 1, 2]))
    probs = torch.softmax(net.classify(W), -1)
    assert error["classification_error"] == pytest.approx((probs.argmax(-1) != torch.arange(3)).float().mean().item())


def test_a_classifier_scored_on_unlabelled_test_points_says_why_there_is_no_error_rate():
    from ppl_vae.guides.labelled import SSVAEGuide
    from ppl_vae.models.labelled import SSVAE
    from ppl_vae.report_text import report_rows
    from ppl_vae.scoring import score

    pyro.set_rng_seed(0)
    model, guide, x = SSVAE(64, 3, 10, (16,)), SSVAEGuide(64, 3, 10, (16,)), torch.bernoulli(torch.rand(20, 64))
    report = score(model, guide, x, k=3)  # no labels: was no word of the classifier at all
    assert "classification_error" not in report and "no labels" in report["classification_note"]
    assert any(row[0] == "test classification error" and "not measured" in row[1] for row in report_rows(report))
    labelled = score(model, guide, x, k=3, labels=torch.arange(20) % 10)
    assert 0 <= labelled["classification_error"] <= 1 and "classification_note" not in labelled
