"""Pyro code as people write it: the semi-supervised VAE (Kingma et al. 2014, M2) and a conditional
VAE, written in the style of Pyro's examples (``examples/vae/ss_vae_M2.py``, ``examples/cvae``): the
networks concatenate ``[x, y]`` and ``[z, y]`` with ``torch.cat`` and so do not broadcast over a
leading sample dimension, and the pairs take labels as Pyro's do, ``model(xs, ys=None)``.

    SSVAE: p(x, y, z) = Cat(y | 1/C) N(z | 0, I) Bernoulli(x | decoder([z, y]))
           q(y, z | x) = Cat(y | encoder_y(x)) N(z | encoder_z([x, y]))   (y observed when given)
    CVAE:  p(x, z | y) = N(z | prior_net(y)) Bernoulli(x | generation_net([z, y]))
           q(z | x, y) = N(z | recognition_net([x, y]))

ppl_vae finds that the pairs do not broadcast, says so once, and runs their particles one at a time.
The SSVAE trains with a few labels per class (the others unlabelled: y sampled by its classifier),
its classifier's loss weighted as Kingma et al. weigh it; it is scored by log p(x) and by its test
classification error. The CVAE is conditioned on every label and scored by log p(x | y).
Run: ``python examples/pyro_style_ssvae.py --epochs 20`` (a few minutes on 2 CPU cores); from the
command line: ``ppl-vae train --model examples/pyro_style_ssvae.py:SSVAE.model --guide
examples/pyro_style_ssvae.py:SSVAE.guide --labelled 10 --objective vimco:k=5``.
"""

from __future__ import annotations

import argparse
import json

import pyro
import pyro.distributions as dist
import torch
from torch import nn


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Softplus(), nn.Linear(hidden, n_out))


class SSVAE(nn.Module):
    """y ~ Cat(1/C), z ~ N(0, I), x ~ Bernoulli(decoder([z, y])); the guide draws y unless it is given."""

    def __init__(self, x_dim: int = 784, z_dim: int = 10, classes: int = 10, hidden: int = 200):
        super().__init__()
        self.z_dim, self.classes = z_dim, classes
        self.encoder_y = _mlp(x_dim, hidden, classes)
        self.encoder_z = _mlp(x_dim + classes, hidden, 2 * z_dim)
        self.decoder = _mlp(z_dim + classes, hidden, x_dim)

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch = xs.shape[0]
        with pyro.plate("data", batch):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(batch, self.z_dim), 1.0).to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(xs.new_ones(batch, self.classes) / self.classes), obs=ys)
            logits = self.decoder(torch.cat([zs, ys], -1))  # as the example does: no broadcasting
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, raw = self.encoder_z(torch.cat([xs, ys], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


class CVAE(nn.Module):
    """A VAE conditioned on y: a prior network p(z | y), a generation network p(x | z, y) and a
    recognition network q(z | x, y); every point needs its label (``needs_labels``)."""

    needs_labels = True

    def __init__(self, x_dim: int = 784, z_dim: int = 10, classes: int = 10, hidden: int = 200):
        super().__init__()
        self.z_dim, self.classes = z_dim, classes
        self.prior_net = _mlp(classes, hidden, 2 * z_dim)
        self.generation_net = _mlp(z_dim + classes, hidden, x_dim)
        self.recognition_net = _mlp(x_dim + classes, hidden, 2 * z_dim)

    @staticmethod
    def _normal(params):
        loc, raw = params.chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)

    def model(self, xs, ys):
        pyro.module("cvae", self)
        with pyro.plate("data", xs.shape[0]):
            zs = pyro.sample("z", self._normal(self.prior_net(ys)))
            logits = self.generation_net(torch.cat([zs, ys], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    def guide(self, xs, ys):
        pyro.module("cvae", self)
        with pyro.plate("data", xs.shape[0]):
            pyro.sample("z", self._normal(self.recognition_net(torch.cat([xs, ys], -1))))


def main(argv=None) -> list[dict]:
    from ppl_vae import TrainConfig, Trainer, log_px
    from ppl_vae.data import load_dataset
    from ppl_vae.labels import choose_labelled, classification_error, conditioned, joined, label_columns

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--objectives", default="elbo,vimco:k=5", help="the SSVAE's objectives, comma-separated")
    parser.add_argument("--labelled", type=int, default=10, help="labelled training digits per class")
    parser.add_argument("--n-train", type=int, default=1000, help="training digits (of 8x8 digits)")
    parser.add_argument("--n-eval", type=int, default=300, help="test digits scored")
    parser.add_argument("--k", type=int, default=100, help="importance samples per test digit")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    data = load_dataset("digits")
    train, labels = data.train.x[: args.n_train], data.train.labels[: args.n_train]
    test, test_labels = data.eval_x("test")[: args.n_eval], data.test.labels[: args.n_eval]
    train_y = label_columns(labels, choose_labelled(labels, args.labelled, seed=0), 10)

    def config(objective):
        return TrainConfig(
            epochs=args.epochs, batch_size=100, lr=3e-3, objective=objective, progress=False, eval_every=0, seed=0,
            device=args.device,
        )  # fmt: skip

    rows = []
    for objective in args.objectives.split(","):
        net = SSVAE(x_dim=data.x_dim, z_dim=4, classes=10, hidden=args.hidden)
        trainer = Trainer(net.model, net.guide, config(objective))
        trainer.fit(train, dynamic=True, train_y=train_y)
        x = test.to(trainer.device)
        est = log_px(net.model, net.guide, x, k=args.k, seed=0)
        error = classification_error(net.guide, x, test_labels)["classification_error"]
        rows.append({"model": "SSVAE", "objective": objective, "log_px": est.log_px, "se": est.log_px_se,
                     "classification_error": error, "k": est.k, "n": est.n})  # fmt: skip
        print(f"SSVAE {objective}: test log p(x) {est.log_px:.2f} ± {est.log_px_se:.2f}, classification error "
              f"{100 * error:.1f}% ({args.labelled} labels per class, K={est.k}, {est.n} digits)")  # fmt: skip
    net = CVAE(x_dim=data.x_dim, z_dim=4, classes=10, hidden=args.hidden)
    model, guide = conditioned(net.model, net.guide, data.x_dim)  # rows of [x, one_hot(y)]
    trainer = Trainer(model, guide, config("elbo"))
    trainer.fit(joined(train, labels, 10), dynamic=True)
    est = log_px(model, guide, joined(test, test_labels, 10).to(trainer.device), k=args.k, seed=0)
    rows.append(
        {"model": "CVAE", "objective": "elbo", "log_px": est.log_px, "given": "y", "se": est.log_px_se, "k": est.k, "n": est.n}
    )
    print(f"CVAE elbo: test log p(x | y) {est.log_px:.2f} ± {est.log_px_se:.2f} (K={est.k}, {est.n} digits)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
