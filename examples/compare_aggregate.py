"""Does a penalty on the aggregate posterior q(z) give a more Gaussian q(z), and sharper
reconstructions, than the VAE's per-point KL at the same budget?

Runs ``ppl-vae compare --preset aggregate``: VAE, beta-VAE, InfoVAE, WAE-MMD, SWAE, CWAE and a
sparse autoencoder, with the same networks, epochs and seed on MNIST digits, and prints per
method the reconstruction error (-E log p(x|z), nats), log p(x) where the model has a density
to estimate it with, the tests of q(z) against N(0, I) (small p-values: q(z) is not the prior)
and active units. The figures ``samples_side_by_side.png`` and ``aggregate_posteriors.png`` go
into ``--out``.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main(args):
    from ppl_vae import load_dataset
    from ppl_vae.cli import main as ppl_vae

    data = load_dataset("mnist5k")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        npz = folder / "digits.npz"
        as_bytes = lambda x: (x.numpy() * 255).round().astype(np.uint8)  # noqa: E731
        np.savez(
            npz,
            x_train=as_bytes(data.train.x[: args.n_train]),
            x_val=as_bytes(data.val.x[: args.n_eval]),
            x_test=as_bytes(data.test.x[: args.n_eval]),
            y_test=data.test.labels[: args.n_eval].numpy(),
        )
        argv = ["compare", "--preset", "aggregate", "--data", str(npz), "--epochs", str(args.epochs), "--seed", str(args.seed)]
        argv += ["--z-dim", str(args.z_dim), "--hidden", str(args.hidden), "--test-k", str(args.k), "--eval-every", "0"]
        if ppl_vae([*argv, "--out", str(folder / "compare"), "--overwrite", "--no-progress", "--device", args.device]) != 0:
            raise SystemExit("the comparison failed")
        rows = json.loads((folder / "compare" / "compare.json").read_text())["rows"]
    keep = ("variant", "test_distortion", "log_px", "log_px_se", "k", "active_units", "mmd2", "p_value", "radius_p_value")
    rows = [{key: r.get(key) for key in keep} for r in rows]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--z-dim", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--k", type=int, default=500, help="importance samples for test log p(x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="keep the data, runs and figures here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="write the table as JSON here")
    main(parser.parse_args())
