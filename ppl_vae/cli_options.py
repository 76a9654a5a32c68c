"""The command line's options, free of torch and Pyro so that ``ppl-vae --help`` answers at once.

The names offered (data sets, models, guides, priors, likelihoods, objectives) are the
registries' keys (:mod:`ppl_vae.registry`).
"""

from __future__ import annotations

import argparse

from . import __version__
from .cli_data_options import add_data_options


def _int_list(text: str) -> list[int]:
    parts = [t.strip() for t in text.split(",")]
    try:
        if "" in parts:  # '400,,200' is a typo, not two layers
            raise ValueError
        return [int(t) for t in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 400,200, got '{text}'") from None


MAX_SEED = 2**32 - 1  # as ppl_vae.config.MAX_SEED (NumPy's generators take seeds below 2**32)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"--seed must be an integer in [0, {MAX_SEED}], got '{text}'")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_run_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by train and compare: data, networks, budget, seed, output."""
    add_data_options(p)
    _add_network_options(p)
    _add_budget_options(p, default_out)
    _add_training_options(p)
    _add_start_options(p)
    _add_speed_options(p)
    _add_common(p)


def _add_network_options(p: argparse.ArgumentParser) -> None:
    from .registry import GUIDES, LIKELIHOODS, MODELS, PRIORS

    p.add_argument(
        "--model",
        default="vae",
        help=f"generative model: {', '.join(sorted(MODELS))}, or your own Pyro model as path/to/file.py:name (a function, "
        "an object, or a class taking x_dim / image_shape) (default: vae)",
    )
    p.add_argument(
        "--guide",
        default=None,
        help=f"amortized guide q(z|x): {', '.join(sorted(GUIDES))}, or your own as path/to/file.py:name (default: "
        "hierarchical for the hierarchical model, else mean_field)",
    )
    p.add_argument(
        "--prior",
        default=None,
        choices=sorted(PRIORS),
        help="prior of the vae model: normal, vamp (VampPrior), flow (autoregressive flow), acn (nearest-neighbour prior of associative compression networks); of the hierarchical model's top layer: normal or vamp (default: normal)",
    )
    p.add_argument(
        "--network",
        default=None,
        choices=["mlp", "conv"],
        help="encoder and decoder networks of the vae model and its guide; conv needs 28x28 images (default: mlp)",
    )
    _add_decoder_and_prior_options(p)
    p.add_argument(
        "--z-dims",
        type=_int_list,
        default=None,
        help="layer sizes from the data upward: hierarchical (default: 100,50, Burda et al.), sbn (default: 200,200,200)",
    )
    p.add_argument("--likelihood", default=None, choices=sorted(LIKELIHOODS), help="p(x|z) of the vae model (default: bernoulli)")
    p.add_argument("--z-dim", type=int, default=None, help="latent dimension of the vae and linear_gaussian models (default: 10)")
    p.add_argument(
        "--hidden",
        type=_int_list,
        default=None,
        help="hidden widths of encoder (x upward) and decoder (mirrored), e.g. 400,200 (default: 400)",
    )


def _add_decoder_and_prior_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decoder",
        default=None,
        choices=["factorized", "pixelcnn"],
        help="p(x|z) of the vae model: factorized (pixels independent given z) or pixelcnn (a gated PixelCNN over the "
        "pixels, conditioned on a map the --network computes from z; bernoulli or categorical256 likelihood, image data) "
        "(default: factorized)",
    )
    p.add_argument("--pixelcnn-layers", type=int, default=None, help="gated blocks of the PixelCNN decoder (default: 5)")
    p.add_argument("--pixelcnn-channels", type=int, default=None, help="channels of the PixelCNN decoder (default: 32)")
    p.add_argument(
        "--acn-neighbours",
        type=int,
        default=None,
        help="K of the acn prior: each code's prior is conditioned on one of its K nearest training codes (default: 5)",
    )
    p.add_argument(
        "--acn-hidden", type=_int_list, default=None, help="hidden widths of the acn prior network, e.g. 512,512 (default: 256)"
    )


def _add_budget_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--epochs", type=int, default=30, help="number of passes over the training set (default: 30)")
    p.add_argument("--batch-size", type=int, default=100, help="minibatch size (default: 100)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed; the same seed on CPU gives the same numbers (default: 0)")
    p.add_argument(
        "--eval-every", type=int, default=5, help="estimate validation log p(x) every N epochs, 0 = never (default: 5)"
    )
    p.add_argument("--eval-k", type=int, default=100, help="importance samples for validation log p(x) (default: 100)")
    p.add_argument("--test-k", type=int, default=1000, help="importance samples for test log p(x) (default: 1000)")
    p.add_argument(
        "--force",
        action="store_true",
        help="score even when log p(x) would take more than half a day (timed on one chunk before training)",
    )
    p.add_argument(
        "--out",
        default=None,
        help=f"output folder; it must be new or empty unless --resume or --overwrite (default: a new folder {default_out})",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing its run")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """How training runs: schedule, checkpoints, NaN guard, stopping, logs, the compiled step."""
    p.add_argument(
        "--lr-decay",
        type=float,
        default=1.0,
        help="learning-rate factor per epoch, an exponential schedule (default: 1.0, constant)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="also checkpoint every N optimizer steps; 0 = at epoch ends only (default: 0)",
    )
    p.add_argument(
        "--nan-policy",
        default="stop",
        choices=["stop", "skip", "off"],
        help="on a NaN/Inf loss or gradient: stop naming the step and site, skip the batch and count it, or off (default: stop)",
    )
    p.add_argument(
        "--nan-check",
        default="auto",
        choices=["auto", "step", "deferred"],
        help="when the NaN guard reads its flag: every step, or deferred (kept on the device, a bad step undone there, read "
        "every 100 steps and before checkpoints); auto defers for a compiled step on CUDA (default: auto)",
    )
    p.add_argument(
        "--early-stop",
        type=int,
        default=0,
        metavar="PATIENCE",
        help="stop once PATIENCE epochs have passed since the best validation log p(x) (the validation ELBO with "
        "--eval-every 0), and score the best epoch; best.pt always holds the best epoch (default: 0, never stop early)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=0,
        metavar="MINUTES",
        help="stop cleanly after this many minutes, as on Ctrl-C (checkpoint saved; --resume continues exactly); for "
        "machines lent for a while (default: 0, no limit)",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the per-epoch metrics to OUT/tensorboard for TensorBoard (needs: pip install tensorboard)",
    )


def _add_start_options(p: argparse.ArgumentParser) -> None:
    """Where training starts: the decoder's output bias from the data, or the model of another run."""
    p.add_argument(
        "--no-data-init",
        action="store_true",
        help="leave the decoder's output bias at PyTorch's default initialisation (default: the package's models start "
        "it so that p(x|z=0) has the training data's per-pixel mean; a model of yours, if it defines init_from_data)",
    )
    p.add_argument(
        "--model-from",
        default=None,
        metavar="RUN",
        help="start the model's own parameters (decoder and prior) from RUN's checkpoint and keep them fixed: only the "
        "guide trains, so several guides are scored on one shared decoder (the same --model, --z-dim and --hidden)",
    )


def _add_speed_options(p: argparse.ArgumentParser) -> None:
    """The compiled step and TF32 (see README, "Speed")."""
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="capture the training step once per batch shape and run it compiled: on, off, or auto (default: compile runs "
        "of 2,000 steps or more); a pair that cannot be captured trains eagerly, with one line saying why; it also "
        "decides for validation and test log p(x)",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="on CUDA, float32 matrix products in TF32 while training (faster, about 10 bits of mantissa); validation "
        "and test log p(x) stay in full float32 (default: off)",
    )


def _add_checkpoint_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """Options of the commands that read a checkpoint (evaluate, sample)."""
    p.add_argument("checkpoint", help="checkpoint file written by ppl-vae train (or its folder)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument("--out", default=None, help=f"output folder (default: {default_out})")
    p.add_argument("--data", default=None, help="the data file or folder to use instead of the one recorded in the checkpoint")
    p.add_argument("--data-dir", default=None, help="the folder of a named data set, instead of the recorded one")
    p.add_argument(
        "--model",
        default=None,
        help="the model instead of the recorded one (a name or path/to/file.py:name); with --data and --guide it opens "
        "a checkpoint written by Trainer from Python",
    )
    p.add_argument("--guide", default=None, help="the guide instead of the recorded one (a name or path/to/file.py:name)")
    _add_common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppl-vae", description="Train, score and compare variational autoencoders written in Pyro.", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"ppl-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_train(sub)
    _add_compare(sub)
    _add_sample(sub)
    _add_evaluate(sub)
    return parser


def _add_train(sub) -> None:
    from .registry import OBJECTIVES

    t = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="train a model/guide pair and score it",
        description="Train a VAE on a data set, then estimate test log p(x) by importance sampling. Writes checkpoint.pt (every epoch), best.pt (the best validation epoch), metrics.csv, result.json, reconstructions.png and samples.png into --out.",
    )
    _add_run_options(t, default_out="runs/<dataset>-<model>-<guide>-<objective>-<time>")
    t.add_argument(
        "--objective",
        default="elbo",
        help="objective spec: elbo, meanfield, iwae:k=5, vr:alpha=0.5,k=5, dreg:k=5, stl:k=1, with modifiers beta=B, warmup=STEPS, warmup_epochs=E, free_bits=NATS[,free_bits_per=dim] (known: "
        + ", ".join(OBJECTIVES)
        + "; default: elbo)",
    )
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt up to --epochs in total")


def _add_compare(sub) -> None:
    c = sub.add_parser(
        "compare",
        allow_abbrev=False,
        help="train and score several objectives, guides or models on one budget",
        description="Train every combination of --objectives, --guides and --models on the same data, seed, networks and epochs; write compare.md, compare.csv, compare.json, validation_curves.png and rate_distortion.png into --out (each variant in its own subfolder). A variant that fails or diverges is reported in its row; the others still run.",
    )
    _add_run_options(c, default_out="runs/compare-<dataset>-<time>")
    c.add_argument(
        "--preset",
        default=None,
        choices=["aggregate", "collapse"],
        help="a ready comparison instead of --objectives/--guides: aggregate = VAE, beta-VAE, InfoVAE, WAE-MMD, SWAE, CWAE "
        "and a sparse AE, with reconstruction error, log p(x) where defined, tests of q(z) against N(0, I) and figures; "
        "collapse = {MLP, PixelCNN decoder} x {N(0,I) prior, VampPrior, free bits, ACN prior} with KL, active units, "
        "the k-NN accuracy of the codes and ACN's ordered coding cost (--pixelcnn-* and --acn-* size their rows)",
    )
    c.add_argument(
        "--objectives",
        default=None,
        help="comma-separated objective specs; a spec's own parameters also use commas: elbo,iwae:k=5,vr:alpha=0.5,k=5,dreg:k=5",
    )
    c.add_argument(
        "--objective",
        dest="single_objective",
        default=None,
        help=argparse.SUPPRESS,  # train's option, refused here with a clear message
    )
    c.add_argument(
        "--resume", action="store_true", help="continue a comparison in --out: finished variants are read back, not retrained"
    )
    c.add_argument(
        "--jobs", type=int, default=1, help="train this many variants at once, one process each, on --device (default: 1)"
    )
    c.add_argument(
        "--devices",
        default=None,
        help="comma-separated devices, e.g. cuda:0,cuda:1: one process per device, each training one variant at a time",
    )
    c.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train and score each variant with this many seeds (--seed, --seed+1, ...: the networks' initialisation, "
        "binarisation and sampling vary, the data split does not); the table gives mean ± sd over seeds and each "
        "variant's paired difference from the first with a 95%% interval (default: 1)",
    )
    c.add_argument(
        "--q-tests",
        action="store_true",
        help="also test each variant's aggregate posterior q(z) against the prior (MMD, Mardia, radii, pairwise "
        "distances), as --preset aggregate does",
    )
    c.add_argument("--guides", default=None, help="comma-separated guides to cross with the objectives (default: --guide)")
    c.add_argument("--models", default=None, help="comma-separated models to cross with the objectives (default: --model)")


def _add_sample(sub) -> None:
    sp = sub.add_parser(
        "sample",
        allow_abbrev=False,
        help="draw samples and reconstructions from a checkpoint",
        description="Write samples.png (unconditional samples; the ACN prior samples by its chain through the prior network) and reconstructions.png (test data and their reconstructions) for a trained checkpoint.",
    )
    _add_checkpoint_options(sp, default_out="sample-n<N> beside the checkpoint")
    sp.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    sp.add_argument("--overwrite", action="store_true", help="replace pictures already in the --out folder (refused without it)")


def _add_evaluate(sub) -> None:
    e = sub.add_parser(
        "evaluate",
        allow_abbrev=False,
        help="score a checkpoint",
        description="Estimate test log p(x) (with standard error and K), ELBO, rate, distortion, active units and the posterior diagnostics of a trained checkpoint, each with how to read it; writes evaluation.json, evaluation.md (and evaluation.html with --html) and pictures into eval-k<K>/ beside it (or --out).",
    )
    _add_checkpoint_options(e, default_out="eval-k<K> beside the checkpoint")
    e.add_argument("--k", type=int, default=1000, help="importance samples per test point (default: 1000)")
    e.add_argument("--force", action="store_true", help="score even when it would take more than half a day")
    e.add_argument("--n-points", type=int, default=0, help="score only the first N test points (default: all)")
    e.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="STEPS",
        help="split the inference gap into approximation and amortisation (Cremer et al. 2018): optimise each of the "
        "first 500 test points' guide outputs for STEPS Adam steps from the encoder's (default: 0, no split)",
    )
    e.add_argument(
        "--html", action="store_true", help="also write evaluation.html: one self-contained file with the tables and pictures"
    )
    e.add_argument(
        "--overwrite", action="store_true", help="replace an earlier evaluation in the same folder (refused without it)"
    )
    e.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="run the log p(x) chunks as compiled graphs: on, off, or auto (from K x points >= 5,000,000) (default: auto)",
    )


def split_specs(text: str) -> list[str]:
    """Split ``"elbo,iwae:k=5,vr:alpha=0.5,k=5"`` into specs: a part with ``=`` and no ``:``
    continues the spec before it."""
    specs: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part and ":" not in part and specs:
            specs[-1] += "," + part
        else:
            specs.append(part)
    return specs
