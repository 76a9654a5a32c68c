"""``ppl-vae`` command line: train, evaluate, compare, sample.

Each command turns its arguments into one call (:mod:`ppl_vae.run_spec` checks them first),
prints a readable table and writes the same numbers as JSON. Known errors (bad names, missing
files, incompatible checkpoints) end with one line naming the problem, not a traceback
(``PPL_VAE_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .cli_options import build_parser


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    from .experiment import train_and_report
    from .report_text import format_table, report_rows, run_rows
    from .run_spec import prepare_train

    spec, config = prepare_train(args)
    result = train_and_report(spec, config, test_k=args.test_k, resume=args.resume, command=args.command_line, force=args.force)
    if result is None:  # a rank other than 0: rank 0 reports
        return 0
    print(format_table(run_rows(result) + [(row.quantity, row.value) for row in report_rows(result)]))
    print(
        f"wrote {Path(args.out) / 'result.json'}, checkpoint {result['checkpoint']}, pictures "
        f"{', '.join(result['pictures'].values()) or 'none (rows are not images alone)'}"
    )
    return 0


def cmd_evaluate(args) -> int:
    from .experiment import evaluate_checkpoint, evaluation_title
    from .report_text import UNITS, format_table, terminal_report

    report, folder = evaluate_checkpoint(
        args.checkpoint, k=args.k, n_points=args.n_points, out=args.out, seed=args.seed, device=args.device,
        compile=args.compile, progress=not args.no_progress, log=_note, command=args.command_line, overwrite=args.overwrite,
        force=args.force, refine=args.refine,
        data=args.data, data_dir=args.data_dir, model=args.model, guide=args.guide,
    )  # fmt: skip
    if report is None:  # its share of log p(x) is in rank 0's report
        return 0
    for line in report["notes"]:
        _note(line)
    written = [str(folder / "evaluation.json"), str(folder / "evaluation.md")]
    if args.html:
        from .html_report import html_report

        written.append(str(html_report(report, evaluation_title(report), folder / "evaluation.html")))
    pairs, notes = terminal_report(report)
    print(format_table([("data / model", evaluation_title(report)), ("device", report["device"])] + pairs))
    print(f"\nHow to read it (values in {UNITS}):\n" + "\n".join(notes))
    if report.get("inference_data"):
        written.append(report["inference_data"])
    print(f"wrote {', '.join(written)} and pictures {', '.join(report.get('pictures', {}).values()) or 'none'}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare
    from .compare_table import columns_for, markdown_table
    from .run_spec import prepare_compare

    spec, config, plan = prepare_compare(args)
    rows = compare(
        spec,
        config,
        test_k=args.test_k,
        resume=args.resume,
        preset=args.preset,
        seeds=args.seeds,
        q_tests=args.q_tests,
        force=args.force,
        **plan,
    )
    print(markdown_table(rows, columns_for(rows, args.preset == "aggregate", args.preset == "collapse")))
    folder = Path(args.out)
    print(f"wrote {folder / 'compare.md'}, compare.csv, compare.json, compare.html, validation_curves.png, rate_distortion.png")
    # a run that raised is a lost result (one that diverged is an answer): the exit status says so
    failed = [
        r["variant"] + (f" seed {run['seed']}" if "runs" in r else "")  # one row per variant, its seeds in "runs"
        for r in rows
        for run in r.get("runs", [r])
        if run["status"] == "failed"
    ]
    if failed:
        _note(f"{len(failed)} run(s) failed, the table says why: {', '.join(failed)}")
    return 0 if rows and not failed and any(r["status"] == "ok" for r in rows) else 1


def cmd_sample(args) -> int:
    from .experiment import sample_checkpoint

    paths, notes = sample_checkpoint(
        args.checkpoint, n=args.n, out=args.out, device=args.device, seed=args.seed, overwrite=args.overwrite,
        data=args.data, data_dir=args.data_dir, model=args.model, guide=args.guide,
    )  # fmt: skip
    for line in notes:
        _note(line)
    print(f"wrote {', '.join(paths.values())}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare, "sample": cmd_sample}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # before torch is imported: --help answers at once

    from . import distributed
    from .checkpoint import CheckpointError
    from .faults import Interrupted, TrainingError

    if distributed.launched_by_torchrun():
        if args.command not in ("train", "evaluate"):
            _note(
                f"ppl-vae {args.command}: error: under torchrun only train and evaluate run (one process per device); "
                "spread a comparison with ppl-vae compare --jobs N or --devices cuda:0,cuda:1"
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
            _note(f"ppl-vae {args.command}: {stop}; continue with --resume")
        return 130
    except KeyboardInterrupt:
        _note(f"ppl-vae {args.command}: interrupted")
        return 130
    except (ValueError, CheckpointError, TrainingError, OSError, RuntimeError) as err:
        if os.environ.get("PPL_VAE_DEBUG"):
            raise
        _note(f"ppl-vae {args.command}: error: {err}")
        return 2
    finally:
        distributed.stop(together)


if __name__ == "__main__":
    sys.exit(main())
