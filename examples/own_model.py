r"""Your own model, guide and data through the command line.

This file is what a Pyro user writes: a two-latent-layer VAE with a pixel plate,

.. math::

    z_2 \sim \mathcal{N}(0, I), \quad z_1 \mid z_2 \sim \mathcal{N}(\mu(z_2), \sigma(z_2)^2),
    \quad x_d \mid z_1 \sim \mathrm{Bernoulli}(f_d(z_1)) \text{ for each pixel } d,

and a bottom-up guide q(z1 | x) q(z2 | z1). ppl_vae trains and scores it unchanged::

    ppl-vae train --data my_images.npz --model examples/own_model.py:TwoLayerVAE.model \
        --guide examples/own_model.py:TwoLayerVAE.guide --epochs 20 --out runs/mine
    ppl-vae evaluate runs/mine --k 1000

``TwoLayerVAE`` is instantiated once with the data's ``x_dim``, and its ``model`` and ``guide``
methods share that instance, as in Pyro's VAE example. Run this file to do the above on 5,000
MNIST digits (saved first as an .npz, as your own data would be).
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
from torch import nn
from torch.nn.functional import softplus


class TwoLayerVAE(nn.Module):
    def __init__(self, x_dim=784, z1_dim=16, z2_dim=4, hidden=128):
        super().__init__()
        self.z1_dim, self.z2_dim = z1_dim, z2_dim
        self.decoder = nn.Sequential(nn.Linear(z1_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))
        self.prior_z1 = nn.Sequential(nn.Linear(z2_dim, hidden // 2), nn.Tanh(), nn.Linear(hidden // 2, 2 * z1_dim))
        self.encoder_z1 = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z1_dim))
        self.encoder_z2 = nn.Sequential(nn.Linear(z1_dim, hidden // 2), nn.Tanh(), nn.Linear(hidden // 2, 2 * z2_dim))

    @staticmethod
    def gaussian(net, h):
        loc, raw = net(h).chunk(2, dim=-1)
        return dist.Normal(loc, softplus(raw) + 1e-3).to_event(1)

    def model(self, x):
        pyro.module("two_layer_vae", self)
        # data points along dim -2, pixels along dim -1; latents carry a singleton pixel dim
        with pyro.plate("data", x.shape[0], dim=-2):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(1, self.z2_dim), 1.0).to_event(1))
            z1 = pyro.sample("z1", self.gaussian(self.prior_z1, z2))
            logits = self.decoder(z1).squeeze(-2)
            with pyro.plate("pixels", x.shape[-1], dim=-1):
                pyro.sample("x", dist.Bernoulli(logits=logits), obs=x)

    def guide(self, x):
        pyro.module("two_layer_vae", self)
        with pyro.plate("data", x.shape[0], dim=-2):
            z1 = pyro.sample("z1", self.gaussian(self.encoder_z1, x.unsqueeze(-2)))
            pyro.sample("z2", self.gaussian(self.encoder_z2, z1))


def main(args):
    from ppl_vae import load_dataset
    from ppl_vae.cli import main as ppl_vae

    data = load_dataset("mnist5k")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        npz = folder / "digits.npz"
        folder.mkdir(parents=True, exist_ok=True)
        as_bytes = lambda x: (x.numpy() * 255).round().astype(np.uint8).reshape(-1, 28, 28)  # noqa: E731
        np.savez(
            npz,
            x_train=as_bytes(data.train.x[: args.n_train]),
            x_val=as_bytes(data.val.x[: args.n_eval]),
            x_test=as_bytes(data.test.x[: args.n_eval]),
        )
        here = Path(__file__).resolve()
        run = folder / "run"
        common = ["--no-progress", "--device", args.device]
        train = ["train", "--data", str(npz), "--model", f"{here}:TwoLayerVAE.model", "--guide", f"{here}:TwoLayerVAE.guide"]
        train += ["--epochs", str(args.epochs), "--objective", args.objective, "--eval-every", "0", "--test-k", str(args.k)]
        if ppl_vae([*train, "--seed", str(args.seed), "--out", str(run), "--overwrite", *common]) != 0:
            raise SystemExit("training failed")
        if ppl_vae(["evaluate", str(run), "--k", str(args.k), *common]) != 0:
            raise SystemExit("evaluation failed")
        report = json.loads((run / f"eval-k{args.k}" / "evaluation.json").read_text())
    rows = [
        {
            "model": "TwoLayerVAE (examples/own_model.py)",
            "log_px": report["log_px"],
            "log_px_se": report["log_px_se"],
            "k": report["k"],
        }
    ]
    print(f"log p(x) = {rows[0]['log_px']:.2f} ± {rows[0]['log_px_se']:.2f} (K={rows[0]['k']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--objective", default="iwae:k=5")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--k", type=int, default=500, help="importance samples for test log p(x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="keep the data and the run here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="write the result as JSON here")
    main(parser.parse_args())
