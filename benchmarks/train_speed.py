"""Training speed of ppl_vae's loop against a hand-written PyTorch loop of the same network.

Both train the same VAE (MLP 784-H-Z, Bernoulli likelihood, diagonal Gaussian encoder,
single-sample reparameterised ELBO, Adam) on the same device-resident, dynamically
binarised data for the same number of epochs. The report is the ratio of seconds
per epoch (ppl_vae / hand-written), measured in the same run; absolute seconds are
printed too and are meaningful only on a GPU. Also timed: the loop without its NaN
guard (the guard reads one boolean from the device per step) and the IWAE objective
with k=5 (five times the network work, against the one-sample reference).

    python benchmarks/train_speed.py --epochs 5 --device auto
"""

import argparse
import json
import time

import torch
from torch import nn

from ppl_vae import TrainConfig, Trainer, load_dataset
from ppl_vae.device import resolve_device
from ppl_vae.guides import MeanFieldGuide
from ppl_vae.models import VAE
from ppl_vae.nn import bounded_scale


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand_written(x, epochs, batch_size, z_dim, hidden, device, seed):
    """The reference: plain PyTorch, same networks and estimator, no Pyro."""
    torch.manual_seed(seed)
    model, guide = VAE(z_dim=z_dim, hidden=(hidden,)).to(device), MeanFieldGuide(z_dim=z_dim, hidden=(hidden,)).to(device)
    opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = x.to(device)
    times = []
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        xb_all = torch.bernoulli(x, generator=gen)
        perm = torch.randperm(x.shape[0], generator=gen, device=device)
        total = torch.zeros((), device=device)
        for i in range(0, x.shape[0], batch_size):
            xb = xb_all[perm[i : i + batch_size]]
            loc, raw = guide.encoder.net(xb).split(z_dim, -1)
            scale = bounded_scale(raw)
            z = loc + scale * torch.randn_like(loc)
            log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
            log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
            logits = model.decoder(z)
            log_lik = -nn.functional.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(-1)
            loss = -(log_lik + log_prior - log_q).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        total.item()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def ppl_vae_loop(x, epochs, batch_size, z_dim, hidden, device, seed, objective, nan_policy="stop"):
    torch.manual_seed(seed)
    model, guide = VAE(z_dim=z_dim, hidden=(hidden,)), MeanFieldGuide(z_dim=z_dim, hidden=(hidden,))
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        device=str(device),
        objective=objective,
        eval_every=0,
        progress=False,
        seed=seed,
        nan_policy=nan_policy,
    )
    history = Trainer(model, guide, cfg).fit(x, None, dynamic=True)
    return [r["seconds"] for r in history]


def main(args):
    device = resolve_device(args.device)
    x = load_dataset(args.dataset, args.data_dir).train.x
    if args.n:
        x = x[: args.n]
    common = dict(epochs=args.epochs, batch_size=args.batch_size, z_dim=args.z_dim, hidden=args.hidden, device=device, seed=0)
    results = {
        "device": str(device),
        "torch": torch.__version__,
        "dataset": args.dataset,
        "n": x.shape[0],
        **{k: v for k, v in vars(args).items() if k != "device"},
    }
    # first epoch of each is warm-up (allocations, kernels); the median of the rest is reported
    med = lambda t: sorted(t[1:])[len(t[1:]) // 2] if len(t) > 1 else t[0]  # noqa: E731
    ref = med(hand_written(x, **common))
    variants = {
        "ppl_vae elbo": dict(objective="elbo"),
        "ppl_vae elbo, NaN guard off": dict(objective="elbo", nan_policy="off"),
        "ppl_vae iwae:k=5": dict(objective="iwae:k=5"),
    }
    results["hand_written_s_per_epoch"] = ref
    print(f"device {device}, {x.shape[0]} points, batch {args.batch_size}, {args.epochs} epochs (median after the first)")
    print(f"{'hand-written PyTorch (elbo)':<30} {ref:8.3f} s/epoch   1.00x")
    for name, kw in variants.items():
        t = med(ppl_vae_loop(x, **kw, **common))
        results[name] = {"s_per_epoch": t, "ratio": t / ref}
        print(f"{name:<30} {t:8.3f} s/epoch   {t / ref:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--n", type=int, default=0, help="use only the first N training points (0: all)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--z-dim", type=int, default=10)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    main(p.parse_args())
