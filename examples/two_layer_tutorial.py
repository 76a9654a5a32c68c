"""Tutorial: write a model with two latent layers and its guide from scratch in plain Pyro,
train it with two objectives, and score it with log p(x).

The model is z2 -> z1 -> x, every conditional a Gaussian (or Bernoulli for x) whose
parameters come from a small network; the guide runs bottom-up, x -> z1 -> z2. The
only thing the package asks: every sample site sits in ``pyro.plate("data")``.

    python examples/two_layer_tutorial.py --epochs 20
"""

import argparse
import json

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae import TrainConfig, Trainer, elbo_terms, load_dataset, log_px


def gaussian_net(d_in, hidden, d_out):
    """A network returning the mean and a positive scale of a diagonal Gaussian."""
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 2 * d_out))

    def head(h):
        loc, raw = net(h).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw) + 1e-3

    head.net = net
    return head


def make_two_layer(x_dim=784, z1=16, z2=4, hidden=200):
    p_z1 = gaussian_net(z2, hidden // 2, z1)  # p(z1 | z2)
    p_x = nn.Sequential(nn.Linear(z1, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))  # logits of p(x | z1)
    q_z1 = gaussian_net(x_dim, hidden, z1)  # q(z1 | x)
    q_z2 = gaussian_net(z1, hidden // 2, z2)  # q(z2 | z1)
    decoder = nn.ModuleList([p_z1.net, p_x])
    encoder = nn.ModuleList([q_z1.net, q_z2.net])

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(z2)
            h2 = pyro.sample("z2", dist.Normal(zeros, zeros + 1.0).to_event(1))
            h1 = pyro.sample("z1", dist.Normal(*p_z1(h2)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=p_x(h1)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            h1 = pyro.sample("z1", dist.Normal(*q_z1(x)).to_event(1))
            pyro.sample("z2", dist.Normal(*q_z2(h1)).to_event(1))

    return model, guide


def main(args):
    data = load_dataset("mnist5k")
    train_x, val_x, test_x = data.train.x[: args.n_train], data.eval_x("val")[: args.n_eval], data.eval_x("test")[: args.n_eval]
    rows = []
    for objective in args.objectives.split(";"):
        pyro.set_rng_seed(args.seed)
        model, guide = make_two_layer(z1=args.z1, z2=args.z2, hidden=args.hidden)
        trainer = Trainer(
            model,
            guide,
            TrainConfig(
                epochs=args.epochs, objective=objective, device=args.device, seed=args.seed, eval_every=0, progress=False
            ),
        )
        history = trainer.fit(train_x, val_x, dynamic=True)
        x = test_x.to(trainer.device)
        with torch.no_grad():
            est = log_px(model, guide, x, k=args.k)
            bound = elbo_terms(model, guide, x)
        rows.append(
            {
                "objective": objective,
                "log_px": est.log_px,
                "log_px_se": est.log_px_se,
                "k": est.k,
                "elbo": bound.elbo,
                "rate": bound.rate,
                "distortion": bound.distortion,
                "val_elbo": history[-1]["val_elbo"],
            }
        )
    print(f"{'objective':<10} {'test log p(x)':>16} {'K':>6} {'ELBO':>9} {'rate':>7} {'distortion':>11}")
    for r in rows:
        print(
            f"{r['objective']:<10} {r['log_px']:>9.2f} ± {r['log_px_se']:<4.2f} {r['k']:>6} {r['elbo']:>9.2f} {r['rate']:>7.2f} {r['distortion']:>11.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", default="elbo;iwae:k=5", help="objective specs separated by ';'")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--z1", type=int, default=16)
    p.add_argument("--z2", type=int, default=4)
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--k", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    main(p.parse_args())
