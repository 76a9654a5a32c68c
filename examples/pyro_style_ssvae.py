"""Pyro code as people write it: a VAE with a discrete class latent y beside a Gaussian style z,
written in the style of Pyro's semi-supervised VAE example (``examples/vae/ss_vae_M2.py``), whose
networks concatenate ``[x, y]`` and ``[z, y]`` with ``torch.cat`` and so do not broadcast over a
leading sample dimension.

    p(x, y, z) = Cat(y | 1/C) N(z | 0, I) Bernoulli(x | decoder([z, y]))
    q(y, z | x) = Cat(y | encoder_y(x)) N(z | encoder_z([x, y]))

Here every point is unlabelled (y is summed out by sampling it in the guide: an unsupervised
M2, a mixture of VAEs). ppl_vae finds that the pair does not broadcast, says so once, and runs its
particles one at a time: ``elbo`` (Pyro's score-function term for y) and ``vimco:k=5`` train it,
and ``log_px`` scores it. Run: ``python examples/pyro_style_ssvae.py --epochs 20`` (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class SSVAE(nn.Module):
    """y ~ Cat(1/C), z ~ N(0, I), x ~ Bernoulli(decoder([z, y])); the guide samples y, then z given [x, y]."""

    def __init__(self, x_dim: int = 784, z_dim: int = 10, classes: int = 10, hidden: int = 200):
        super().__init__()
        self.z_dim, self.classes = z_dim, classes
        self.encoder_y = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus(), nn.Linear(hidden, classes))
        self.encoder_z = nn.Sequential(nn.Linear(x_dim + classes, hidden), nn.Softplus(), nn.Linear(hidden, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim + classes, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))

    def model(self, xs):
        pyro.module("ss_vae", self)
        batch = xs.shape[0]
        with pyro.plate("data", batch):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(batch, self.z_dim), 1.0).to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(xs.new_ones(batch, self.classes) / self.classes))
            logits = self.decoder(torch.cat([zs, ys], -1))  # as the example does: no broadcasting
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)

    def guide(self, xs):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            ys = pyro.sample("y", dist.OneHotCategorical(logits=self.encoder_y(xs)))
            loc, raw = self.encoder_z(torch.cat([xs, ys], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def main(argv=None) -> list[dict]:
    from ppl_vae import TrainConfig, Trainer, log_px
    from ppl_vae.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--objectives", default="elbo,vimco:k=5", help="comma-separated objective specs")
    parser.add_argument("--n-train", type=int, default=1000, help="training digits (of 8x8 digits)")
    parser.add_argument("--n-eval", type=int, default=300, help="test digits scored")
    parser.add_argument("--k", type=int, default=100, help="importance samples per test digit")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    data = load_dataset("digits")
    train, test = data.train.x[: args.n_train], data.eval_x("test")[: args.n_eval]
    rows = []
    for objective in args.objectives.split(","):
        net = SSVAE(x_dim=data.x_dim, z_dim=4, classes=10, hidden=args.hidden)
        config = TrainConfig(
            epochs=args.epochs, batch_size=100, lr=3e-3, objective=objective, progress=False, eval_every=0, seed=0,
            device=args.device,
        )  # fmt: skip
        trainer = Trainer(net.model, net.guide, config)
        trainer.fit(train, dynamic=True)
        est = log_px(net.model, net.guide, test.to(trainer.device), k=args.k, seed=0)
        rows.append({"objective": objective, "log_px": est.log_px, "se": est.log_px_se, "k": est.k, "n": est.n})
        print(f"{objective}: test log p(x) {est.log_px:.2f} ± {est.log_px_se:.2f} (K={est.k}, {est.n} digits)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
