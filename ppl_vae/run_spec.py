"""From parsed command-line arguments to a run: the checks, the data/model/guide spec, the
TrainConfig and the output folder. Used by ``ppl-vae train`` and ``compare``."""

from __future__ import annotations

import sys
from pathlib import Path


def model_options(args) -> dict:
    """Guide name and the keyword options of model and guide that the flags describe."""
    from .user_code import is_file_ref, resolve_ref

    if is_file_ref(args.model) or is_file_ref(args.guide):
        if args.guide is None:
            raise ValueError("your own model needs a guide too: --guide NAME or --guide path/to/file.py:name")
        own = {"model": resolve_ref(args.model) if is_file_ref(args.model) else args.model}
        own["guide"] = resolve_ref(args.guide) if is_file_ref(args.guide) else args.guide
        guide_kwargs = {} if is_file_ref(args.guide) else {"z_dim": args.z_dim, "hidden": args.hidden}
        return {**own, "model_kwargs": {}, "guide_kwargs": guide_kwargs}
    if args.model == "hierarchical":
        layers = {} if args.z_dims is None else {"z_dims": args.z_dims, "hidden": [args.hidden] * len(args.z_dims)}
        return {
            "guide": args.guide or "hierarchical",
            "model_kwargs": {"likelihood": args.likelihood, "prior": args.prior, **layers},
            "guide_kwargs": dict(layers),
        }
    guide_kwargs = {"z_dim": args.z_dim, "hidden": args.hidden}
    if args.network != "mlp":
        guide_kwargs["network"] = args.network
    model_kwargs = (
        {**guide_kwargs, "likelihood": args.likelihood, "prior": args.prior} if args.model == "vae" else {"z_dim": args.z_dim}
    )
    return {"guide": args.guide or "mean_field", "model_kwargs": model_kwargs, "guide_kwargs": guide_kwargs}


def check_run_arguments(args) -> None:
    """Refuse the values that would otherwise train something other than what was asked."""
    for name in ("test_k", "z_dim", "epochs", "batch_size", "eval_k"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if any(h < 1 for h in args.hidden):
        raise ValueError(f"--hidden widths must be positive, got {','.join(map(str, args.hidden))}")
    if args.z_dims is not None and (not args.z_dims or any(d < 1 for d in args.z_dims)):
        raise ValueError(f"--z-dims must be positive sizes, got {args.z_dims}")
    if args.data and args.data_dir:
        raise ValueError("give --data (your own file or folder) or --dataset with --data-dir, not both")
    if args.data and not Path(args.data).exists():
        raise ValueError(f"--data {args.data} does not exist")


def run_folder(args, *parts: str, compare: bool = False) -> str:
    """``--out``, checked (a new or empty folder unless --resume / --overwrite), or a new folder."""
    from .run_folder import COMPARE_FILES, RUN_FILES, claim_run_folder, new_run_folder

    resume = getattr(args, "resume", False)
    if args.out is None:
        if resume:
            raise ValueError("--resume needs --out, the folder of the run to continue")
        args.out = str(new_run_folder(*parts))
    for line in claim_run_folder(args.out, resume, args.overwrite, COMPARE_FILES if compare else RUN_FILES):
        print(line, file=sys.stderr)
    return args.out


def spec_and_config(args, objective: str):
    from .experiment import check_pair_names
    from .train import TrainConfig

    check_run_arguments(args)
    check_pair_names(args.model, args.guide)
    spec = {"dataset": args.dataset, "data_dir": args.data_dir, "binarize": args.binarize, "model": args.model}
    if args.data:
        from .user_data import data_fingerprint

        spec.update(dataset=str(Path(args.data).resolve()), data_dir=None, data_sha256=data_fingerprint(args.data))
    if args.scale != "auto":
        spec["scale"] = args.scale
    spec.update(model_options(args))
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        objective=objective,
        eval_every=args.eval_every,
        eval_k=args.eval_k,
        out=args.out,
        progress=not args.no_progress,
        epoch_lines=args.no_progress,
        lr_decay=args.lr_decay,
        checkpoint_every=args.checkpoint_every,
        nan_policy=args.nan_policy,
        compile=args.compile,
        nan_check=args.nan_check,
        early_stop=args.early_stop,
        tensorboard=args.tensorboard,
        time_limit=60 * args.time_limit,
    )
    return spec, config
