"""Burda, Grosse & Salakhutdinov (2016), Table 1: MNIST negative test log-likelihood (nats), on the
paper's protocol, one cell per command, in pieces that resume exactly.

Protocol: dynamic binarisation of MNIST's 60,000 training images (pixels resampled every pass);
the 10,000 test images binarised once, Bernoulli(intensity) with the package's fixed seed
(``ppl_vae.data.EVAL_BINARIZE_SEED``; the paper says only that the data were binarised
stochastically); tanh networks; 1 stochastic layer: x-200-200-z(50), decoder mirrored;
2 stochastic layers: x-200-200-z1(100)-100-100-z2(50), decoder mirrored (the package's
``HierarchicalVAE`` defaults); Bernoulli likelihood; Adam (0.9, 0.999, eps 1e-4), minibatch 20,
3^i passes at learning rate 0.001·10^(-i/7) for i = 0..7 (3,280 passes); log p(x) with
K = 5,000 on all test images; active units by Cov_x E_q[u] > 0.01.

    # one cell, in pieces: each piece stops cleanly after --minutes and the same command continues it
    python benchmarks/reproduce_iwae.py --cell 2L-iwae50 --data-dir ../shared/data --out runs/iwae --minutes 9
    # a stated reduced budget, the same for every cell (the first P passes of the schedule)
    python benchmarks/reproduce_iwae.py --cell 1L-vae1 --passes 13 --data-dir ../shared/data --out runs/iwae
    # its plain-PyTorch reference (no Pyro; the same networks, initialisation, optimiser and data),
    # into runs/iwae/reference/1L-vae1, scored by the same estimator on the same test images
    python benchmarks/reproduce_iwae.py --cell 1L-vae1 --passes 13 --reference --data-dir ../shared/data --out runs/iwae
    # the table of every finished cell, with paper, ppl_vae, reference and their paired difference
    python benchmarks/reproduce_iwae.py --table --out runs/iwae
    # over seeds: the same cells trained with --seed 1, 2 into other folders
    python benchmarks/reproduce_iwae.py --table --out runs/iwae --seeds-out runs/iwae-seed1 runs/iwae-seed2

The decoder's output bias starts at the training pixels' marginal log-odds (``--no-data-init``:
PyTorch's default), in the cell and its reference alike.

    # as far as fits in 8 minutes (a GPU push), scored where it stopped
    python benchmarks/reproduce_iwae.py --cell 1L-iwae50 --device cuda --data-dir ../shared/data --out runs/push --minutes 8 --score-when-stopped

Exit status: 0 when the cell is finished and scored (or, with --score-when-stopped, scored where
--minutes stopped it), 3 when a piece stopped at --minutes (run the same command again), 2 on bad
input.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

# negative test log-likelihood in nats, Burda et al. (2016) Table 1 (MNIST)
PAPER = {
    "1L-vae1": 86.76, "1L-vae5": 86.47, "1L-vae50": 86.35, "1L-iwae5": 85.54, "1L-iwae50": 84.78,
    "2L-vae1": 85.33, "2L-vae5": 85.01, "2L-vae50": 84.78, "2L-iwae5": 83.89, "2L-iwae50": 82.90,
}  # fmt: skip
OBJECTIVES = {"vae1": "elbo", "vae5": "elbo:k=5", "vae50": "elbo:k=50", "iwae5": "iwae:k=5", "iwae50": "iwae:k=50"}
# name -> (stochastic layers, objective, guide's flow, top-layer prior): the paper's cells, then
# what Pyro users have not had on this protocol: the DReG estimator, an IAF guide, a VampPrior
CELLS = {f"{layers}L-{name}": (layers, objective, None, "normal") for layers in (1, 2) for name, objective in OBJECTIVES.items()}
# (DReG with an IAF guide is not among them: its score term needs log q at a detached sample, and
# inverting an autoregressive flow takes one MADE pass per latent dimension, 100 for z1, per step;
# a VampPrior over IAF layers would need the same inverse for every pseudo-input)
CELLS.update({
    "2L-dreg50": (2, "dreg:k=50", None, "normal"),
    "2L-iwae50-iaf": (2, "iwae:k=50", "iaf", "normal"),
    "2L-dreg50-vamp": (2, "dreg:k=50", None, "vamp"),
})  # fmt: skip
SCHEDULE = [[3**i, 1e-3 * 10 ** (-i / 7)] for i in range(8)]  # [passes, learning rate]
FULL_PASSES = sum(p for p, _ in SCHEDULE)  # 3,280


def build_pair(layers: int, flow: str | None = None, prior: str = "normal"):
    """The paper's networks; for the extra rows an IAF in every guide layer (2 steps) and a
    VampPrior (500 pseudo-inputs, Tomczak & Welling's MNIST setting) on the top layer."""
    from ppl_vae.guides import HierarchicalGuide, MeanFieldGuide
    from ppl_vae.models import VAE, HierarchicalVAE

    if layers == 1:
        net = dict(x_dim=784, z_dim=50, hidden=(200, 200), activation="tanh")
        return VAE(**net), MeanFieldGuide(**net)
    model, guide = HierarchicalVAE(x_dim=784, prior=prior, num_components=500), HierarchicalGuide(x_dim=784, flow=flow)
    model.attach_guide(guide)
    return model, guide


def load(args):
    """(training intensities: all 60,000, binarised afresh each pass; the test set binarised once)."""
    import torch

    from ppl_vae.data import load_dataset

    data = load_dataset(args.dataset, data_dir=args.data_dir, binarize="dynamic")
    train = torch.cat([data.train.x, data.val.x])  # the loader holds 10,000 out for validation; the paper trains on all
    if args.train_n:
        train = train[: args.train_n]
    test = data.eval_x("test")
    if args.test_n:
        test = test[: args.test_n]
    return train, test


def run_cell(args) -> int:
    from ppl_vae import TrainConfig, Trainer
    from ppl_vae.device import seed_everything
    from ppl_vae.train import Interrupted

    layers, objective, flow, prior = CELLS[args.cell]
    out = cell_folder(args)
    if finished(args, out):
        return 0
    train_x, test_x = load(args)
    seed_everything(args.seed)
    model, guide = build_pair(layers, flow, prior)
    if args.reference:
        return run_reference(args, out, train_x, test_x, model, guide)
    config = TrainConfig(
        epochs=args.passes,
        batch_size=20,
        lr=SCHEDULE[0][1],
        adam_eps=1e-4,
        lr_stages=SCHEDULE,
        seed=args.seed,
        device=args.device,
        objective=objective,
        eval_every=0,
        out=str(out),
        progress=not args.no_progress,
        epoch_lines=args.no_progress,
        compile=args.compile,
        time_limit=60 * args.minutes,
        data_init=not args.no_data_init,
        meta={"cell": args.cell, "dataset": args.dataset},
    )
    trainer = Trainer(model, guide, config)
    start = time.perf_counter()
    try:
        trainer.fit(train_x, dynamic=True, resume=(out / "checkpoint.pt").exists())
    except Interrupted as stop:
        print(f"{args.cell}: {stop}; pass {trainer.epoch} of {args.passes}: run the same command to continue")
        if not args.score_when_stopped:
            return 3
        stopped = str(stop)
    else:
        stopped = None
    trainer.set_training(False)
    per_pass = math.ceil(train_x.shape[0] / 20)
    trained = {
        "passes": trainer.epoch if stopped is None else round(trainer.step / per_pass, 3),
        "steps": trainer.step,
        "train_seconds": sum(r["seconds"] for r in trainer.history),
        "this_piece_seconds": time.perf_counter() - start,
        "step": trainer.step_fn.reason,
        "data_init": trainer.data_init,
        "n_train": train_x.shape[0],
    }
    if stopped:  # a push: scored where the time ran out (train_seconds counts the completed passes only)
        trained["stopped"] = f"{stopped}, at step {trainer.step} ({trained['passes']} passes of {args.passes})"
    return record(args, out, trainer.model, trainer.guide, test_x.to(trainer.device), trained, trainer.device)


def run_reference(args, out: Path, train_x, test_x, model, guide) -> int:
    """The cell's plain-PyTorch twin (``iwae_reference.py``), scored as the cell is."""
    import torch

    reference_module = _sibling("iwae_reference")
    layers, objective, flow, prior = CELLS[args.cell]
    if flow or prior != "normal" or not objective.startswith(("elbo", "iwae")):
        print(
            f"reproduce_iwae.py: error: --reference is written for the paper's cells (elbo and iwae), not {args.cell}",
            file=sys.stderr,
        )
        return 2
    torch.manual_seed(args.seed)  # the same seed the cell's networks are built under: the same initial weights
    reference = reference_module.Reference(layers)
    start = time.perf_counter()
    done = reference_module.train(reference, train_x, objective, args.passes, SCHEDULE, args.seed, out,
                                  minutes=args.minutes, data_init=not args.no_data_init, log=print)  # fmt: skip
    if not done:
        print(f"{args.cell} reference: stopped after --minutes at a pass's end: run the same command to continue")
        return 3
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    reference_module.copy_into(reference, model, guide)
    trained = {
        "passes": state["passes"],
        "steps": state["passes"] * math.ceil(train_x.shape[0] / 20),
        "train_seconds": state["seconds"],
        "this_piece_seconds": time.perf_counter() - start,
        "step": "plain PyTorch loop (benchmarks/iwae_reference.py), eager",
        "data_init": "decoder's output bias at the pixel means' log-odds" if state["data_init"] else "off (--no-data-init)",
        "n_train": train_x.shape[0],
    }
    return record(args, out, model, guide, test_x, trained, torch.device("cpu"))


def _sibling(name: str):
    """A module of this folder (``iwae_reference``, ``iwae_table``), loaded by path as scripts are run."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell_folder(args) -> Path:
    return Path(args.out) / ("reference" if args.reference else "") / args.cell


def finished(args, out: Path) -> bool:
    """Whether ``out`` holds this cell scored at these passes and K already (then it is read back);
    a folder trained with the other initialisation is refused."""
    import torch

    done, checkpoint = out / "result.json", out / "checkpoint.pt"
    if checkpoint.exists():
        recorded = torch.load(checkpoint, weights_only=False, map_location="cpu").get("data_init")
        with_init = bool(recorded) and not (isinstance(recorded, str) and recorded.startswith("off"))
        if with_init == args.no_data_init:
            raise ValueError(f"{out} holds a run {'with' if with_init else 'without'} the data-informed initialisation "
                             f"and the command asks {'without' if with_init else 'with'} it: give another --out")  # fmt: skip
    if not done.exists():
        return False
    result = json.loads(done.read_text())
    if result["passes"] == args.passes and result["k"] == args.test_k and result["n_test"] == (args.test_n or result["n_test"]):
        print(f"{args.cell}: finished already ({result['nll']:.2f} ± {result['nll_se']:.2f} nats); {done}")
        return True
    return False


def record(args, out: Path, model, guide, test_x, trained: dict, device) -> int:
    """Score the trained pair on the test images (the same estimator and draws for the cell and its
    reference) and write ``result.json`` and the per-image estimates (``per_point.pt``)."""
    import torch

    from ppl_vae import log_px
    from ppl_vae.evaluate import active_units, elbo_terms
    from ppl_vae.run_folder import provenance, write_json

    layers, objective, flow, prior = CELLS[args.cell]
    start_eval = time.perf_counter()
    est = log_px(model, guide, test_x, k=args.test_k, seed=args.seed, progress=not args.no_progress)
    eval_seconds = time.perf_counter() - start_eval
    units = active_units(model, guide, test_x)
    terms = elbo_terms(model, guide, test_x)
    result = {
        "cell": args.cell,
        "objective": objective,
        "trained_by": "reference" if args.reference else "ppl_vae",
        "layers": layers,
        "guide": f"hierarchical, {flow} layers" if flow else ("hierarchical" if layers == 2 else "mean_field"),
        "prior": prior,
        "paper_nll": PAPER.get(args.cell),
        "nll": -est.log_px,
        "nll_se": est.log_px_se,
        "mc_se": est.mc_se,
        "k": est.k,
        "n_test": est.n,
        "test_elbo": terms.elbo,
        "active_units": {k: v for k, v in units.items() if k not in ("dims", "sigma")},
        "encoder_sigma": units["sigma"],
        **trained,
        "full_passes": FULL_PASSES,
        "eval_seconds": eval_seconds,
        "dataset": args.dataset,
        "test_binarization": "Bernoulli(intensity) once, seed ppl_vae.data.EVAL_BINARIZE_SEED",
        "device": str(device),
        **provenance(device),
    }
    torch.save(est.per_point.detach().cpu(), out / "per_point.pt")
    write_json(result, out / "result.json")
    print(
        f"{args.cell}{' reference' if args.reference else ''}: -log p(x) = {result['nll']:.2f} ± {result['nll_se']:.2f} "
        f"nats (K={est.k}, {est.n} test images; paper {result['paper_nll']}), {result['passes']} passes, active units "
        f"{units['total']} of {units['dims']}; {out / 'result.json'}"
    )
    return 0


def table(args) -> int:
    """The table of every finished cell under ``--out`` (and ``--seeds-out``): ``iwae_table.py``."""
    return _sibling("iwae_table").table(Path(args.out), [Path(f) for f in args.seeds_out or []], list(CELLS), args.table_md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", choices=sorted(CELLS), help="which cell of the table to train and score")
    p.add_argument("--table", action="store_true", help="print the table of every finished cell under --out")
    p.add_argument("--table-md", default=None, help="also write the table to this Markdown file")
    p.add_argument(
        "--seeds-out",
        nargs="+",
        default=None,
        help="with --table: folders of the same cells trained with other --seed values; the table then gives each "
        "seed's -log p(x) and a paired difference whose SE counts the training's randomness too",
    )
    p.add_argument("--out", default="runs/iwae", help="one folder per cell under it (default: runs/iwae)")
    p.add_argument("--dataset", default="mnist", help="mnist (from --data-dir, the protocol) or mnist5k (a smoke test)")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--passes", type=int, default=FULL_PASSES, help=f"the first P passes of the schedule (default: all {FULL_PASSES})"
    )
    p.add_argument("--test-k", type=int, default=5000, help="importance samples per test image (default: 5000)")
    p.add_argument("--test-n", type=int, default=0, help="score only the first N test images (default: all)")
    p.add_argument(
        "--train-n", type=int, default=0, help="train on the first N training images only, for a smoke test (default: all)"
    )
    p.add_argument("--minutes", type=float, default=0, help="stop this piece cleanly after so many minutes (default: none)")
    p.add_argument(
        "--score-when-stopped",
        action="store_true",
        help="when --minutes stops the piece, score the cell where it stopped (result.json gives the passes reached, "
        "a fraction where the time ran out inside a pass) and exit 0; the same command without it continues training",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", default=None, help="also write the finished cell's result here")
    p.add_argument(
        "--reference",
        action="store_true",
        help="train the cell with the plain-PyTorch loop of iwae_reference.py instead (no Pyro; the same networks, "
        "initialisation, optimiser, batch, schedule and binarisation), into OUT/reference/CELL, scored the same way",
    )
    p.add_argument(
        "--no-data-init", action="store_true", help="leave the decoder's output bias at PyTorch's default initialisation"
    )
    args = p.parse_args(argv)
    if args.table:
        return table(args)
    if not args.cell:
        p.error("give --cell NAME (or --table)")
    if args.score_when_stopped and (args.reference or not args.minutes):
        p.error("--score-when-stopped scores the package's cell where --minutes stops it: give --minutes, without --reference")
    if not 1 <= args.passes <= FULL_PASSES:
        p.error(f"--passes must be between 1 and {FULL_PASSES}")
    try:
        status = run_cell(args)
    except ValueError as err:  # missing or bad data, a checkpoint of another run: one line, as the CLI does
        print(f"reproduce_iwae.py: error: {err}", file=sys.stderr)
        return 2
    if status == 0 and args.json:
        Path(args.json).write_text((cell_folder(args) / "result.json").read_text())
    return status


if __name__ == "__main__":
    sys.exit(main())
