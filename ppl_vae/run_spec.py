"""From parsed command-line arguments to a run: every check that can be made before any work,
the data/model/guide spec, the TrainConfig and the output folder. Used by ``ppl-vae train`` and
``compare``; an option that would be ignored, or two that contradict each other, is refused here
with the reason, not trained around."""

from __future__ import annotations

import sys
from pathlib import Path

from .registry import LOCAL_DATASETS

# the options each built-in model takes (with a built-in guide); any other of these, given, is refused
MODEL_OPTIONS = {
    "vae": (
        "z_dim",
        "hidden",
        "prior",
        "likelihood",
        "network",
        "decoder",
        "pixelcnn_layers",
        "pixelcnn_channels",
        "acn_neighbours",
        "acn_hidden",
    ),
    "hierarchical": ("z_dims", "hidden", "prior", "likelihood"),
    "linear_gaussian": ("z_dim", "hidden"),
    "sbn": ("z_dims",),
    "ssvae": ("z_dim", "hidden"),
    "cvae": ("z_dim", "hidden"),
}
GUIDE_OPTIONS = ("z_dim", "hidden", "network")  # a built-in one-layer guide beside a user's own model
DEFAULTS = {
    "z_dim": 10,
    "hidden": [400],
    "prior": "normal",
    "likelihood": "bernoulli",
    "network": "mlp",
    "z_dims": None,
    "decoder": "factorized",
    "pixelcnn_layers": 5,
    "pixelcnn_channels": 32,
    "acn_neighbours": 5,
    "acn_hidden": [256],
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(args, name: str):
    value = getattr(args, name)
    return DEFAULTS[name] if value is None else value


def check_model_options(args) -> None:
    """Refuse options the chosen model and guide do not take (they would be dropped silently)."""
    from .user_code import is_file_ref

    if is_file_ref(args.model):
        takes = () if is_file_ref(args.guide or "") else GUIDE_OPTIONS
        what = "your own model" + ("" if takes else " and guide")
    else:
        takes, what = MODEL_OPTIONS.get(args.model, ()), f"the {args.model} model"
    given = [name for name in DEFAULTS if getattr(args, name) is not None and name not in takes]
    if given:
        accepted = ", ".join(_flag(n) for n in takes) or "none of them"
        raise ValueError(f"{', '.join(_flag(n) for n in given)}: not an option of {what} (it takes {accepted}); drop it")


def model_options(args) -> dict:
    """Guide name and the keyword options of model and guide that the flags describe."""
    from .user_code import is_file_ref, resolve_ref

    hidden = _given(args, "hidden")
    if is_file_ref(args.model) or is_file_ref(args.guide):
        if args.guide is None:
            raise ValueError("your own model needs a guide too: --guide NAME or --guide path/to/file.py:name")
        own = {"model": resolve_ref(args.model) if is_file_ref(args.model) else args.model}
        own["guide"] = resolve_ref(args.guide) if is_file_ref(args.guide) else args.guide
        guide_kwargs = {} if is_file_ref(args.guide) else {"z_dim": _given(args, "z_dim"), "hidden": hidden}
        return {**own, "model_kwargs": {}, "guide_kwargs": guide_kwargs}
    if args.model in ("ssvae", "cvae"):  # the classes come from the data; unset sizes keep the model's defaults
        sizes = {n: getattr(args, n) for n in ("z_dim", "hidden") if getattr(args, n) is not None}
        return {"guide": args.guide or args.model, "model_kwargs": dict(sizes), "guide_kwargs": dict(sizes)}
    if args.model == "sbn":
        layers = {} if args.z_dims is None else {"z_dims": args.z_dims}
        return {"guide": args.guide or "sbn", "model_kwargs": dict(layers), "guide_kwargs": dict(layers)}
    if args.model == "hierarchical":
        z_dims = args.z_dims
        layers = {} if z_dims is None else {"z_dims": z_dims, "hidden": [hidden] * len(z_dims)}
        return {
            "guide": args.guide or "hierarchical",
            "model_kwargs": {"likelihood": _given(args, "likelihood"), "prior": _given(args, "prior"), **layers},
            "guide_kwargs": dict(layers),
        }
    guide_kwargs = {"z_dim": _given(args, "z_dim"), "hidden": hidden}
    if _given(args, "network") != "mlp":
        guide_kwargs["network"] = args.network
    model_kwargs = (
        {**guide_kwargs, "likelihood": _given(args, "likelihood"), "prior": _given(args, "prior"), **_vae_extras(args)}
        if args.model == "vae"
        else {"z_dim": guide_kwargs["z_dim"]}
    )
    return {"guide": args.guide or "mean_field", "model_kwargs": model_kwargs, "guide_kwargs": guide_kwargs}


def _vae_extras(args) -> dict:
    """The decoder's and the ACN prior's options, where given (a run without them keeps the spec it had)."""
    extras: dict = {}
    if args.decoder is not None and args.decoder != "factorized":
        extras["decoder"] = args.decoder
        sizes = {"layers": args.pixelcnn_layers, "channels": args.pixelcnn_channels}
        if any(v is not None for v in sizes.values()):
            extras["pixelcnn"] = {k: v for k, v in sizes.items() if v is not None}
    acn = {"num_neighbours": args.acn_neighbours, "hidden": args.acn_hidden}
    if any(v is not None for v in acn.values()):
        extras["prior_kwargs"] = {k: v for k, v in acn.items() if v is not None}
    return extras


def _check_decoder_and_prior_options(args) -> None:
    for name in ("pixelcnn_layers", "pixelcnn_channels", "acn_neighbours"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "pixelcnn_layers" else 1):
            raise ValueError(f"{_flag(name)} must be {'0 or more' if name == 'pixelcnn_layers' else 'at least 1'}, got {value}")
    if args.acn_hidden is not None and any(h < 1 for h in args.acn_hidden):
        raise ValueError(f"--acn-hidden widths must be positive, got {','.join(map(str, args.acn_hidden))}")
    collapse = getattr(args, "preset", None) == "collapse"
    if collapse and (args.decoder is not None or args.prior is not None):
        raise ValueError("--preset collapse chooses the decoders and priors itself: drop --decoder/--prior")
    if (args.pixelcnn_layers is not None or args.pixelcnn_channels is not None) and args.decoder != "pixelcnn" and not collapse:
        raise ValueError("--pixelcnn-layers/--pixelcnn-channels size the PixelCNN decoder: give --decoder pixelcnn too")
    if (args.acn_neighbours is not None or args.acn_hidden is not None) and args.prior != "acn" and not collapse:
        raise ValueError("--acn-neighbours/--acn-hidden describe the acn prior: give --prior acn too")
    if args.decoder == "pixelcnn" and _given(args, "likelihood") not in ("bernoulli", "categorical256"):
        raise ValueError(
            f"--decoder pixelcnn models binary pixels (--likelihood bernoulli) or 256 grey levels (categorical256), "
            f"not --likelihood {args.likelihood}"
        )


def check_run_arguments(args) -> None:
    """Refuse the values that would otherwise train something other than what was asked."""
    if args.eval_n is not None and args.eval_n < 2:
        raise ValueError(f"--eval-n must be at least 2 (points to validate and score on), got {args.eval_n}")
    for name in ("test_k", "epochs", "batch_size", "eval_k"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"{_flag(name)} must be at least 1, got {value}")
    if args.z_dim is not None and args.z_dim < 1:
        raise ValueError(f"--z-dim must be at least 1, got {args.z_dim}")
    if args.hidden is not None and any(h < 1 for h in args.hidden):
        raise ValueError(f"--hidden widths must be positive, got {','.join(map(str, args.hidden))}")
    if args.z_dims is not None and (not args.z_dims or any(d < 1 for d in args.z_dims)):
        raise ValueError(f"--z-dims must be positive sizes, got {args.z_dims}")
    for name in ("lr", "lr_decay"):
        value = getattr(args, name)
        if not value > 0 or (name == "lr_decay" and value > 1):
            raise ValueError(f"{_flag(name)} must be {'in (0, 1]' if name == 'lr_decay' else 'positive'}, got {value:g}")
    if not args.time_limit >= 0:  # nan too: it meant no limit without a word
        raise ValueError(f"--time-limit must be 0 (no limit) or a positive number of minutes, got {args.time_limit:g}")
    _check_data_source(args)
    check_model_options(args)
    _check_decoder_and_prior_options(args)
    _check_label_options(args)


def _check_label_options(args) -> None:
    if args.aux_weight is not None and args.labelled is None:
        raise ValueError("--aux-weight weighs the classifier's loss on labelled points: give --labelled N|all too")
    if args.aux_weight is not None and not args.aux_weight >= 0:
        raise ValueError(f"--aux-weight must be 0 or positive, got {args.aux_weight:g}")
    if args.model == "cvae" and args.labelled != "all":
        raise ValueError("the cvae model is conditioned on each point's label (it models p(x | y)): give --labelled all")


def _check_data_source(args) -> None:
    """One source of data: --data (a file or folder), or --dataset with --data-dir where it reads files."""
    if args.data:
        if args.dataset is not None:
            raise ValueError(f"give --data (your own file or folder) or --dataset {args.dataset}, not both")
        if args.data_dir:
            raise ValueError("give --data (your own file or folder) or --dataset with --data-dir, not both")
        if not Path(args.data).exists():
            raise ValueError(f"--data {args.data} does not exist")
        return
    if args.layout != "auto":
        raise ValueError("--layout describes the arrays of --data; the named data sets know their own layout")
    args.dataset = args.dataset or "mnist5k"
    if args.data_dir and args.dataset not in LOCAL_DATASETS:
        raise ValueError(
            f"--data-dir is read by the data sets kept in local files ({', '.join(LOCAL_DATASETS)}); '{args.dataset}' "
            "comes with its package: drop --data-dir"
        )


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
    from .config import TrainConfig
    from .pair import check_pair_names

    check_pair_names(args.model, args.guide)
    spec = {"dataset": args.dataset, "data_dir": args.data_dir, "binarize": args.binarize, "model": args.model}
    if args.data:
        from .user_data import data_fingerprint

        spec.update(dataset=str(Path(args.data).resolve()), data_dir=None, data_sha256=data_fingerprint(args.data))
    for key, default in (("scale", "auto"), ("layout", "auto")):
        if getattr(args, key) != default:
            spec[key] = getattr(args, key)
    spec.update(model_options(args))
    if args.labelled is not None:
        spec["labelled"] = args.labelled
    if args.eval_n is not None:
        spec["eval_n"] = args.eval_n
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
        tf32=args.tf32,
        data_init=not args.no_data_init,
        model_from=args.model_from,
        aux_weight=args.aux_weight,
    )
    return spec, config


def prepare_train(args):
    """``ppl-vae train``'s checks (before any folder is made), its folder and ``(spec, config)``."""
    from . import distributed
    from .objectives import get_objective

    check_run_arguments(args)
    get_objective(args.objective)  # a bad spec is refused before any folder is made
    data_name = Path(args.data).stem if args.data else args.dataset
    parts = (data_name, args.model, args.guide or model_options(args)["guide"], args.objective.replace(":", "_"))
    args.out = distributed.on_main(run_folder, args, *parts)  # under torchrun: rank 0's folder for every rank
    return spec_and_config(args, args.objective)


def _names(text: str | None, what: str) -> list[str] | None:
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--{what} names {', '.join(duplicates)} more than once: each variant trains once")
    return names


def prepare_compare(args):
    """``ppl-vae compare``'s checks, its folder, ``(spec, config)`` and the variants to train
    (objectives, guides, models, devices) as keyword arguments of :func:`ppl_vae.compare.compare`."""
    from .cli_options import split_specs
    from .objectives import get_objective
    from .pair import check_pair_names
    from .user_code import is_file_ref, resolve_ref

    if args.single_objective is not None:
        raise ValueError("compare trains several objectives: give them as --objectives A,B (--objective is train's)")
    if args.preset and (args.objectives or args.guides):
        raise ValueError(f"--preset {args.preset} chooses the objectives and guides itself: drop --objectives/--guides")
    check_run_arguments(args)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    objectives = split_specs(args.objectives or "")
    if not objectives and not args.preset:
        raise ValueError("--objectives names no objective (or use --preset aggregate)")
    if len(set(objectives)) < len(objectives):
        repeated = sorted({o for o in objectives if objectives.count(o) > 1})
        raise ValueError(f"--objectives names {', '.join(repeated)} more than once: each variant trains once")
    for spec in objectives:
        get_objective(spec)  # a typo is an error before hours of training, not a failed row
    guides, models = _names(args.guides, "guides"), _names(args.models, "models")
    for name in guides or []:
        check_pair_names(None, name)
    for name in models or []:
        check_pair_names(name, None)
    guides = guides and [resolve_ref(g) if is_file_ref(g) else g for g in guides]
    models = models and [resolve_ref(m) if is_file_ref(m) else m for m in models]
    devices = _compare_devices(args)
    run_folder(args, "compare", Path(args.data).stem if args.data else args.dataset, compare=True)
    spec, config = spec_and_config(args, objectives[0] if objectives else "elbo")
    plan = {"objectives": objectives, "guides": guides, "models": models, "devices": devices}
    if args.preset == "collapse":
        from .collapse import collapse_variants

        sizes = {"layers": args.pixelcnn_layers, "channels": args.pixelcnn_channels}
        acn = {"num_neighbours": args.acn_neighbours, "hidden": args.acn_hidden}
        plan["variants"] = collapse_variants(
            spec, {k: v for k, v in sizes.items() if v is not None}, {k: v for k, v in acn.items() if v is not None}
        )
    return spec, config, plan


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
