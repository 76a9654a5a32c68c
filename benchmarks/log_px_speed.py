"""log p(x) by importance sampling: ppl_vae's ``log_px`` (compiled and eager) against a hand-written
batched estimator of the same networks, time and (on CUDA) peak memory.

Both evaluate ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` per test image in chunks of
``--chunk-k`` samples x ``--batch`` images, keeping only a running log-sum-exp; the
networks are the Burda et al. one-layer (784-200-200-50) and two-layer (100-100-100 / 50-50-50)
models, untrained (speed does not depend on the weights). The protocol is K = 5,000 over the
10,000 MNIST test images; on a CPU use fewer (``--n``, ``--k``).

    python benchmarks/log_px_speed.py --data-dir ../shared/data --n 10000 --k 5000   # GPU
    python benchmarks/log_px_speed.py --n 500 --k 1000                                # CPU, mnist5k
"""

from __future__ import annotations

import argparse
import json
import math
import time

import pyro
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from ppl_vae import load_dataset, log_px
from ppl_vae.device import resolve_device
from ppl_vae.guides import HierarchicalGuide, MeanFieldGuide
from ppl_vae.models import VAE, HierarchicalVAE


def hand_log_weights(model, guide, x: torch.Tensor, k: int) -> torch.Tensor:
    """``log p(x, z) - log q(z | x)``, ``(k, B)``, written out for the package's VAE / MeanFieldGuide
    (one layer) and HierarchicalVAE / HierarchicalGuide (two layers, Bernoulli likelihood)."""
    if isinstance(guide, MeanFieldGuide):
        loc, scale = guide.encoder(x)
        z = loc + scale * torch.randn((k, *loc.shape), device=x.device)
        log_q = Normal(loc, scale).log_prob(z).sum(-1)
        log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
        logits = model.decoder(z)
    else:
        loc1, scale1 = guide.layers[0](x)
        z1 = loc1 + scale1 * torch.randn((k, *loc1.shape), device=x.device)
        loc2, scale2 = guide.layers[1](z1)
        z2 = loc2 + scale2 * torch.randn_like(loc2)
        log_q = Normal(loc1, scale1).log_prob(z1).sum(-1) + Normal(loc2, scale2).log_prob(z2).sum(-1)
        ploc, pscale = model.conditionals[0](z2)
        log_prior = Normal(0.0, 1.0).log_prob(z2).sum(-1) + Normal(ploc, pscale).log_prob(z1).sum(-1)
        logits = model.decoder(z1)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    return log_lik + log_prior - log_q


@torch.no_grad()
def hand_log_px(model, guide, x, k, chunk_k, batch):
    out = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        lse = torch.full((xb.shape[0],), -math.inf, device=x.device)
        for done in range(0, k, chunk_k):
            lse = torch.logaddexp(lse, torch.logsumexp(hand_log_weights(model, guide, xb, min(chunk_k, k - done)), 0))
        out.append(lse - math.log(k))
    return torch.cat(out)


def burda_pair(layers: int, device):
    if layers == 1:
        model = VAE(z_dim=50, hidden=(200, 200), activation="tanh")
        guide = MeanFieldGuide(z_dim=50, hidden=(200, 200), activation="tanh")
    else:
        model, guide = HierarchicalVAE(), HierarchicalGuide()
    return model.to(device).eval(), guide.to(device).eval()


def make_variants(model, guide, x, args) -> dict:
    """Name -> a call returning the mean log p(x); the first compiled call captures and compiles
    each chunk shape and is timed apart, as "(first call)"."""
    kw = dict(k=args.k, chunk_k=args.chunk_k, batch_size=args.batch)
    return {
        "hand-written": lambda: hand_log_px(model, guide, x, args.k, args.chunk_k, args.batch).mean().item(),
        "ppl_vae compiled (first call)": lambda: log_px(model, guide, x, compile="on", **kw).log_px,
        "ppl_vae compiled": lambda: log_px(model, guide, x, compile="on", **kw).log_px,
        "ppl_vae eager": lambda: log_px(model, guide, x, compile="off", **kw).log_px,
    }


def measure(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return value, time.perf_counter() - start, peak


def main(args):
    device = resolve_device(args.device)
    data = load_dataset("mnist", args.data_dir) if args.data_dir else load_dataset("mnist5k")
    x = torch.bernoulli(data.eval_x("test")[: args.n], generator=torch.Generator().manual_seed(0)).to(device)
    rows = []
    for layers in (1, 2):
        pyro.set_rng_seed(0)
        model, guide = burda_pair(layers, device)
        variants = make_variants(model, guide, x, args)
        if args.variants:
            keep = set(args.variants.split(",")) | {"hand-written"}
            variants = {name: fn for name, fn in variants.items() if name in keep}
        times: dict[str, list] = {v: [] for v in variants}
        for r in range(args.rounds):
            for name, fn in variants.items():
                if name.endswith("(first call)") and r > 0:
                    continue
                value, seconds, peak = measure(fn, device)
                times[name].append((seconds, peak, value))
        ref = sorted(t[0] for t in times["hand-written"])[len(times["hand-written"]) // 2]
        for name, ts in times.items():
            seconds, peak, value = sorted(ts)[len(ts) // 2]
            rows.append(
                {"layers": layers, "variant": name, "seconds": seconds, "ratio": seconds / ref, "peak_mib": peak, "log_px": value}
            )
            mem = f"{peak:.0f} MiB" if peak is not None else "n/a"
            print(
                f"{layers}-layer  {name:<30} {seconds:8.2f} s  {seconds / ref:5.2f}x  peak {mem:>9}  log p(x) {value:.2f}",
                flush=True,
            )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; K={args.k} over {x.shape[0]} images, chunks of {args.chunk_k} x {args.batch}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "k": args.k, "n": x.shape[0], "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder with mnist.npz (default: the mnist5k test images)")
    p.add_argument("--n", type=int, default=500, help="test images")
    p.add_argument("--k", type=int, default=1000, help="importance samples per image")
    p.add_argument("--chunk-k", type=int, default=100)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=None, help="comma-separated subset (hand-written is always timed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    main(p.parse_args())
