"""Training speed: ppl_vae's compiled and eager steps against plain Pyro, pythae and hand-written PyTorch.

Every variant trains the same networks (the default VAE: MLP 784-400-10, Bernoulli likelihood,
diagonal Gaussian encoder; or the two-stochastic-layer network of Burda et al.) with Adam on the
same device-resident MNIST digits, and is timed per epoch. Variants run in interleaved rounds
(round r runs every variant once, fresh), each for ``--epochs`` epochs of which the first is
warm-up (allocations, capture and compilation); a variant's figure is the median over rounds of
its median timed epoch. Ratios are against the hand-written eager PyTorch loop of the same
network and estimator, measured in the same run; absolute seconds mean something only on a GPU.

    python benchmarks/train_speed.py                  # the table's rows on mnist5k
    python benchmarks/train_speed.py --cases full100,full20 --data-dir ../shared/data   # full MNIST epochs

Variants: ``hand-written`` (eager PyTorch), ``hand-written compiled`` (its loss under
``torch.compile``), ``ppl_vae compiled`` / ``ppl_vae eager`` (the package's Trainer with
``compile='on'`` / ``'off'``), ``plain Pyro SVI`` (``SVI.step`` per batch with Pyro's
``Trace_ELBO``, or ``RenyiELBO(alpha=0)`` for IWAE, as in Pyro's VAE example), ``pythae 0.1.2``
(its VAE and its own trainer, on data binarised once: it has no dynamic binarisation; one
layer, ELBO only; skipped when pythae is not installed).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import tempfile
import time
import warnings

import pyro
import pyro.optim
import torch
from torch import nn

from ppl_vae import TrainConfig, Trainer, load_dataset
from ppl_vae.device import resolve_device
from ppl_vae.guides import HierarchicalGuide, MeanFieldGuide
from ppl_vae.models import VAE, HierarchicalVAE

from log_px_speed import hand_log_weights

# --------------------------------------------------------------------------- networks


def make_pair(layers: int, device):
    if layers == 1:
        return VAE(z_dim=10, hidden=(400,)).to(device), MeanFieldGuide(z_dim=10, hidden=(400,)).to(device)
    return HierarchicalVAE().to(device), HierarchicalGuide().to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _loss_fn(model, guide, k: int):
    """Minus the ELBO (k=1) or the IWAE bound, summed over the batch: the hand-written estimator."""

    def loss(xb):
        log_w = hand_log_weights(model, guide, xb, k)
        bound = log_w[0] if k == 1 else torch.logsumexp(log_w, 0) - math.log(k)
        return -bound.sum()

    return loss


# --------------------------------------------------------------------------- variants: each returns seconds per epoch


def timed_epochs(x, cfg, step) -> list[float]:
    """Seconds per epoch of ``step(minibatch)`` over dynamically binarised, shuffled data on the device;
    the losses ``step`` returns are summed and read once per epoch."""
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    times = []
    for _ in range(cfg.epochs):
        _sync(cfg.device)
        start = time.perf_counter()
        xb_all = torch.bernoulli(x, generator=gen)
        perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
        total = 0.0
        for i in range(0, x.shape[0], cfg.batch_size):
            total = total + step(xb_all[perm[i : i + cfg.batch_size]])
        float(total)
        _sync(cfg.device)
        times.append(time.perf_counter() - start)
    return times


def hand_written(x, cfg, compiled=False):
    torch.manual_seed(cfg.seed)
    model, guide = make_pair(cfg.layers, cfg.device)
    opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-3)
    loss_fn = _loss_fn(model, guide, cfg.k)
    if compiled:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loss_fn = torch.compile(loss_fn, dynamic=False)

    def step(xb):
        loss = loss_fn(xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return timed_epochs(x, cfg, step)


def ppl_vae_trainer(x, cfg, compile="on"):
    pyro.set_rng_seed(cfg.seed)
    model, guide = make_pair(cfg.layers, cfg.device)
    objective = "elbo" if cfg.k == 1 else f"iwae:k={cfg.k}"
    config = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        device=str(cfg.device),
        objective=objective,
        eval_every=0,
        progress=False,
        seed=cfg.seed,
        compile=compile,
    )
    trainer = Trainer(model, guide, config)
    history = trainer.fit(x, None, dynamic=True)
    if compile == "on" and not trainer.step_fn.compiled:
        raise RuntimeError(f"the step did not compile: {trainer.step_fn.reason}")
    return [r["seconds"] for r in history]


def plain_pyro(x, cfg):
    """Pyro's VAE example: SVI.step per minibatch, its own Adam wrapper, the loss read back each step."""
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    model, guide = make_pair(cfg.layers, cfg.device)
    loss = pyro.infer.Trace_ELBO() if cfg.k == 1 else pyro.infer.RenyiELBO(alpha=0, num_particles=cfg.k, vectorize_particles=True)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=loss)
    return timed_epochs(x, cfg, svi.step)


def pythae_vae(x, cfg):
    """pythae's VAE with the same encoder and decoder sizes and its own BaseTrainer; per-epoch time
    is (T(epochs) - T(1)) / (epochs - 1), so its set-up and final save are not counted."""
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE as PythaeVAE
    from pythae.models import VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 20))

        def forward(self, x):
            mu, log_var = self.net(x.reshape(x.shape[0], -1)).chunk(2, -1)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(10, 400), nn.ReLU(), nn.Linear(400, 784))

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    data = torch.bernoulli(x.cpu(), generator=torch.Generator().manual_seed(cfg.seed))

    def run(epochs):
        torch.manual_seed(cfg.seed)
        model = PythaeVAE(VAEConfig(input_dim=(784,), latent_dim=10, reconstruction_loss="bce"), Encoder(), Decoder())
        with tempfile.TemporaryDirectory() as out:
            tc = BaseTrainerConfig(
                output_dir=out,
                num_epochs=epochs,
                learning_rate=1e-3,
                per_device_train_batch_size=cfg.batch_size,
                no_cuda=cfg.device.type != "cuda",
                seed=cfg.seed,
            )
            logging.disable(logging.WARNING)  # pythae logs its set-up and every epoch on stdout
            try:
                trainer = BaseTrainer(model, BaseDataset(data, torch.zeros(len(data))), training_config=tc)
                start = time.perf_counter()
                trainer.train()
                return time.perf_counter() - start
            finally:
                logging.disable(logging.NOTSET)

    one = run(1)
    many = run(cfg.epochs)
    return [one, *([(many - one) / (cfg.epochs - 1)] * (cfg.epochs - 1))]


VARIANTS = {
    "hand-written": hand_written,
    "hand-written compiled": lambda x, cfg: hand_written(x, cfg, compiled=True),
    "ppl_vae compiled": lambda x, cfg: ppl_vae_trainer(x, cfg, "on"),
    "ppl_vae eager": lambda x, cfg: ppl_vae_trainer(x, cfg, "off"),
    "plain Pyro SVI": plain_pyro,
    "pythae 0.1.2": pythae_vae,
}


def have_pythae() -> bool:
    try:
        import pythae  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- rows


class Case:
    def __init__(self, name, layers, k, batch_size, n, epochs, device, seed=0):
        self.name, self.layers, self.k, self.batch_size, self.n = name, layers, k, batch_size, n
        self.epochs, self.device, self.seed = epochs, device, seed


def time_case(case: Case, x, rounds: int, variants: list[str]) -> dict:
    names = [v for v in variants if not (v == "pythae 0.1.2" and (case.layers != 1 or case.k != 1))]
    x = x[: case.n].to(case.device)
    per_round: dict[str, list[float]] = {v: [] for v in names}
    for _ in range(rounds):
        for v in names:
            times = VARIANTS[v](x, case)
            per_round[v].append(statistics.median(times[1:]))
    med = {v: statistics.median(t) for v, t in per_round.items()}
    ref = med["hand-written"]
    return {
        "case": case.name,
        "n": x.shape[0],
        "steps_per_epoch": -(-x.shape[0] // case.batch_size),
        "s_per_epoch": med,
        "ratio": {v: t / ref for v, t in med.items()},
    }


def markdown(results: list[dict], device: str) -> str:
    variants = list(VARIANTS)
    lines = [
        f"device: {device}; seconds per epoch (ratio to hand-written eager PyTorch)",
        "",
        "| case | steps/epoch | " + " | ".join(variants) + " |",
        "|" + " --- |" * (len(variants) + 2),
    ]
    for r in results:
        cells = [f"{r['s_per_epoch'][v]:.3f} ({r['ratio'][v]:.2f}×)" if v in r["s_per_epoch"] else "—" for v in variants]
        lines.append(f"| {r['case']} | {r['steps_per_epoch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args):
    logging.getLogger("pyro").setLevel(logging.WARNING)  # RenyiELBO announces its plate guess
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    skip_pythae = args.no_pythae or not have_pythae()
    x = load_dataset("mnist5k").train.x
    e, n = args.epochs, args.n
    cases = {
        "vae100": (x, Case("VAE elbo, batch 100", 1, 1, 100, n, e, device)),
        "vae20": (x, Case("VAE elbo, batch 20", 1, 1, 20, n // 5, e, device)),
        "vae-iwae50": (x, Case("VAE iwae k=50, batch 100", 1, 50, 100, n // 5, e, device)),
        "2layer": (x, Case("2-layer elbo, batch 100", 2, 1, 100, n, e, device)),
        "2layer-iwae50": (x, Case("2-layer iwae k=50, batch 100", 2, 50, 100, n // 5, e, device)),
    }
    if args.data_dir:
        full = load_dataset("mnist", args.data_dir).train.x
        for b in (100, 20):
            cases[f"full{b}"] = (full, Case(f"full MNIST, VAE elbo, batch {b}", 1, 1, b, full.shape[0], 2, device))
    unknown = set(args.cases.split(",")) - set(cases)
    if unknown:
        raise SystemExit(f"unknown cases {sorted(unknown)}; known: {', '.join(cases)} (full100, full20 need --data-dir)")
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    if "hand-written" not in variants or set(variants) - set(VARIANTS):
        raise SystemExit(f"--variants must include hand-written (the reference) and name only: {', '.join(VARIANTS)}")
    if skip_pythae and "pythae 0.1.2" in variants:
        variants.remove("pythae 0.1.2")
    results = []
    for key in args.cases.split(","):
        x, case = cases[key]
        r = time_case(case, x, 1 if key.startswith("full") else args.rounds, variants)
        results.append(r)
        print(markdown([r], str(device)).splitlines()[-1], flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    table = markdown(results, name)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "pythae": not skip_pythae, "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cases",
        default="vae100,vae20,vae-iwae50,2layer,2layer-iwae50",
        help="comma-separated: vae100, vae20, vae-iwae50, 2layer, 2layer-iwae50 (mnist5k); full100, full20 (full MNIST, "
        "needs --data-dir)",
    )
    p.add_argument("--variants", default=None, help=f"comma-separated subset of: {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--data-dir", default=None, help="folder with mnist.npz or the MNIST IDX files (for full100, full20)")
    p.add_argument("--n", type=int, default=4000, help="training points per epoch at batch 100 (a fifth at batch 20 and k=50)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per variant and round, the first one warm-up")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median over rounds is reported")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--no-pythae", action="store_true", help="leave pythae out even where it is installed")
    p.add_argument("--json", default=None)
    main(p.parse_args())
