"""Tutorial: write a model with two latent layers and its guide from scratch in plain Pyro,
train it with two objectives, and score it with log p(x).

The model is z2 -> z1 -> x, every conditional a Gaussian (or Bernoulli for x) whose
parameters come from a small network; the guide runs bottom-up, x -> z1 -> z2. The
only thing the package asks: every sample site sits in ``pyro.plate("data")``. The two
functions that build them are registered under a name (one line each), and
``ppl_vae.compare.compare`` trains and scores the pair with each objective on one budget.

    python examples/two_layer_tutorial.py --epochs 20 --objectives elbo,iwae:k=5,vr:alpha=0.5,k=5
"""

import argparse
import json
import tempfile

import pyro
import pyro.distributions as dist
from torch import nn

from ppl_vae import TrainConfig, load_dataset
from ppl_vae.cli_options import split_specs
from ppl_vae.compare import compare, markdown_table
from ppl_vae.registry import GUIDES, MODELS


def gaussian_net(d_in, hidden, d_out):
    """A network returning the mean and a positive scale of a diagonal Gaussian."""
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 2 * d_out))

    def head(h):
        loc, raw = net(h).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw) + 1e-3

    head.net = net
    return head


def two_layer_model(x_dim=784, z1=16, z2=4, hidden=200):
    p_z1 = gaussian_net(z2, hidden // 2, z1)  # p(z1 | z2)
    p_x = nn.Sequential(nn.Linear(z1, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))  # logits of p(x | z1)
    decoder = nn.ModuleList([p_z1.net, p_x])

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(z2)
            h2 = pyro.sample("z2", dist.Normal(zeros, zeros + 1.0).to_event(1))
            h1 = pyro.sample("z1", dist.Normal(*p_z1(h2)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=p_x(h1)).to_event(1), obs=x)

    return model


def two_layer_guide(x_dim=784, z1=16, z2=4, hidden=200):
    q_z1 = gaussian_net(x_dim, hidden, z1)  # q(z1 | x)
    q_z2 = gaussian_net(z1, hidden // 2, z2)  # q(z2 | z1)
    encoder = nn.ModuleList([q_z1.net, q_z2.net])

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            h1 = pyro.sample("z1", dist.Normal(*q_z1(x)).to_event(1))
            pyro.sample("z2", dist.Normal(*q_z2(h1)).to_event(1))

    return guide


def main(args):
    MODELS.register("two_layer", two_layer_model)  # a name for each, as for a built-in
    GUIDES.register("two_layer", two_layer_guide)
    layers = {"z1": args.z1, "z2": args.z2, "hidden": args.hidden}
    spec = {"dataset": "mnist5k", "model": "two_layer", "guide": "two_layer", "model_kwargs": layers, "guide_kwargs": layers}
    data = load_dataset("mnist5k").subset(args.n_train, args.n_eval)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(epochs=args.epochs, device=args.device, seed=args.seed, eval_every=0, progress=False, out=tmp)
        rows = compare(spec, config, split_specs(args.objectives), test_k=args.k, data=data)
    print(markdown_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2, default=str)
    failed = [r["variant"] for r in rows if r["status"] != "ok"]
    if failed:  # the table says why; a script that ran on must not exit as if all went well
        raise SystemExit(f"{len(failed)} of {len(rows)} variants failed: {', '.join(failed)}")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objectives", default="elbo,iwae:k=5", help="objective specs, as ppl-vae compare takes them")
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
