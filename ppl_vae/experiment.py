"""Experiments end to end, as the commands run them: train a spec and score it
(:func:`train_and_report`), score a checkpoint (:func:`evaluate_checkpoint`), draw from one
(:func:`sample_checkpoint`). Each writes its files into its run folder (:mod:`ppl_vae.run_folder`)
and returns what it wrote; scoring is :func:`ppl_vae.scoring.score`, rendering
:mod:`ppl_vae.report_text`.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import hooks
from .checks import check_output_folder, check_pair_on_data
from .config import TrainConfig
from .data import dataset_of, train_x_of
from .device import seed_everything
from .epoch_log import best_summary
from .global_latents import global_sites
from .importance_sampling import check_scoring_time
from .labelled_runs import labelled_run, with_classes
from .pair import build_pair, check_pair_names, restore_pair
from .run_folder import CHECKPOINT_NAME, RESULT_NAME, evaluation_folder, provenance, sample_folder, write_json
from .scoring import score
from .train import Trainer


def train_and_report(
    spec: dict[str, Any],
    config: TrainConfig,
    test_k: int = 1000,
    resume: bool = False,
    aggregate_tests: bool = False,
    command: list[str] | None = None,
    data=None,
    force: bool = False,
) -> dict | None:
    """Train per ``spec`` and ``config``, score the test set at the summary level (with the tests
    of q(z) if ``aggregate_tests``), write ``result.json`` and pictures into ``config.out`` and return
    the result. ``config`` is not changed (its ``meta`` in the result is ``spec`` with the image
    shape). ``data``: a :class:`ppl_vae.data.Dataset` to train and score on instead of loading
    ``spec["dataset"]``. Scoring that would take more than half a day is refused before training
    unless ``force``. Under torchrun every rank trains; rank 0 writes and returns the result, the
    others None."""
    data = dataset_of(spec) if data is None else data
    spec = with_classes(spec, data)
    config = replace(config, meta={**spec, "image_shape": list(data.image_shape)})
    seed_everything(config.seed)  # the networks' initial weights follow the seed too
    model, guide = build_pair(spec, data.x_dim, data.image_shape)
    train_x, dynamic = train_x_of(data)
    run = labelled_run(spec, data, model, guide, train_x, config.seed)
    model, guide = run.model, run.guide
    trainer = Trainer(model, guide, config)
    val_x = run.eval_x(data, "val", trainer.device)
    # the test split is scored after training: refuse it now, not after the last epoch
    hooks.refresh(model, run.train_x.to(trainer.device))
    test_x = run.eval_x(data, "test", trainer.device)
    _check_test_scoring(model, guide, test_x, test_k, force)
    history = trainer.fit(run.train_x, val_x, dynamic=dynamic, resume=resume, train_y=run.train_y)
    # with early stopping the run's answer is its best epoch (as Keras' restore_best_weights)
    scored_epoch = trainer.restore_best() if config.early_stop else None
    trainer.set_training(False)
    out = Path(config.out) if config.out else None
    result = score(
        model, guide, test_x, k=test_k, seed=config.seed, compile=config.compile,
        progress=config.progress, labels=data.test.labels, image_shape=run.image_shape, out=out, prior_tests=aggregate_tests,
    )  # fmt: skip
    if result is None:  # another rank than 0 under torchrun: its share of log p(x) is in rank 0's result
        return None
    result.update(_run_fields(data.name, trainer.device, config, trainer.epoch))
    result.update(
        history=history,
        step=trainer.step_fn.reason,
        seconds_per_epoch=sum(r["seconds"] for r in history) / len(history),
        train_loss=history[-1]["train_loss"],
        val_elbo=history[-1].get("val_elbo"),
        best=best_summary(history, trainer.monitor, config.out),
        stopped_early=trainer.stopped_early is not None,
        scored_epoch=scored_epoch or trainer.epoch,
        data_init=trainer.data_init,
        labels=run.summary(trainer.objective),
    )
    result.update(provenance(trainer.device, command))
    if out is not None:
        result["checkpoint"] = str(out / CHECKPOINT_NAME)
        write_json(result, out / RESULT_NAME)
    return result


def _check_test_scoring(model, guide, test_x, test_k: int, force: bool) -> None:
    """What scoring the test split needs, checked before training: no global latents, the pair on
    the test data, and a scoring time within bounds."""
    _refuse_global_latents(model, guide, test_x)
    check_pair_on_data(model, guide, test_x, "test data", particles=test_k > 1)
    check_scoring_time(model, guide, test_x, test_k, force)


def _refuse_global_latents(model, guide, test_x) -> None:
    shared = global_sites(model, guide, test_x[:2])
    if shared:
        raise ValueError(
            f"the model has global latent site(s) {shared} (outside pyro.plate('data')): a run here ends by scoring "
            "log p(x) per test point, which is not defined for them; train it from Python with Trainer (elbo, "
            "meanfield, enum or tracegraph weight a global site B/N per minibatch; the validation ELBO is reported)"
        )


def _run_fields(dataset: str, device, config: TrainConfig, epochs: int) -> dict:
    from .objectives import resolve_spec

    try:
        resolved = resolve_spec(config.objective)
    except ValueError:  # a name this version does not know (an old checkpoint): as written
        resolved = config.objective
    return {
        "dataset": dataset,
        "device": str(device),
        "objective": config.objective,
        "objective_resolved": resolved,
        "model": config.meta.get("model"),
        "guide": config.meta.get("guide"),
        "epochs": epochs,
        "config": asdict(config),
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    k: int = 1000,
    n_points: int = 0,
    out: str | Path | None = None,
    seed: int = 0,
    device: str = "auto",
    compile: str = "auto",
    progress: bool = True,
    log=None,
    command: list[str] | None = None,
    overwrite: bool = False,
    force: bool = False,
    refine: int = 0,
    **where,
) -> tuple[dict | None, Path]:
    """The full report of a checkpoint on its test split (the first ``n_points``, 0 = all) with
    ``k`` importance samples, written as ``evaluation.json`` and ``evaluation.md`` (and pictures,
    ``posterior.nc``) into ``out`` or a folder beside the checkpoint named by the setting
    (:func:`ppl_vae.run_folder.evaluation_folder`; an earlier evaluation there is replaced only with
    ``overwrite``). ``refine``: Adam steps per point for the inference gap's split (on the first 500
    points; a folder ``-refine<STEPS>``). ``where``: the
    data/model/guide overrides of :func:`ppl_vae.pair.restore_pair`. Returns ``(report, folder)``;
    the report is None on ranks other than 0 under torchrun."""
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    if n_points < 0 or n_points == 1:  # one point has no standard error, no aggregate q(z), no neighbours
        raise ValueError(f"--n-points must be 0 (all) or at least 2 (points to score), got {n_points}")
    if refine < 0:
        raise ValueError(f"--refine must be 0 (none) or a positive number of steps, got {refine}")
    setting = {"n": n_points, "seed": seed, "data-": where.get("data"), "refine": refine}
    folder = evaluation_folder(checkpoint, k, out, overwrite, **setting)
    pair, data = _restore(checkpoint, folder, device, **where)
    seed_everything(seed)
    run = labelled_run(pair.spec, data, pair.model, pair.guide, data.train.x, pair.config.seed)
    x = run.eval_x(data, "test", pair.device)
    if n_points > x.shape[0]:
        pair.notes.append(f"--n-points {n_points}: the test split has {x.shape[0]} points, all of them scored")
    x = x[:n_points] if n_points else x
    check_scoring_time(run.model, run.guide, x, k, force)
    report = score(
        run.model, run.guide, x, level="full", k=k, seed=seed, compile=compile, progress=progress,
        labels=data.test.labels, image_shape=run.image_shape, out=folder, log=log, refine=refine,
    )  # fmt: skip
    if report is None:  # its share of log p(x) is in rank 0's report
        return None, folder
    report.update(_run_fields(data.name, pair.device, pair.config, pair.epoch), checkpoint=str(checkpoint), notes=pair.notes)
    report.update(provenance(pair.device, command))
    from .report_text import markdown_report

    write_json(report, folder / "evaluation.json")
    (folder / "evaluation.md").write_text(f"# {evaluation_title(report)}\n\n" + markdown_report(report))
    return report, folder


def evaluation_title(report: dict) -> str:
    return (
        f"{report['dataset']}: {report['model']} / {report['guide']}, objective {report['objective']}, {report['epochs']} epochs"
    )


def sample_checkpoint(
    checkpoint: str | Path,
    n: int = 64,
    out: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    **where,
):
    """``samples.png`` (and ``reconstructions.png`` where the data are there) of a checkpoint into
    ``out`` or ``sample-n<N>/`` beside it (:func:`ppl_vae.run_folder.sample_folder`: the training
    run's pictures are never replaced silently); returns the pictures' paths by name and the
    restore's notes."""
    import numpy as np
    import torch

    from .plots import save_pictures, save_samples

    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    folder = sample_folder(checkpoint, n, out, overwrite, seed=seed, **{"data-": where.get("data")})
    pair, data = _restore(checkpoint, folder, device, need_data=False, **where)
    seed_everything(seed)
    if data is None:  # the checkpoint alone: unconditional samples, no reconstructions
        image_shape = tuple(pair.spec["image_shape"])
        like = torch.zeros(1, int(np.prod(image_shape)), device=pair.device)
        return {"samples": str(save_samples(pair.model, like, n, image_shape, folder / "samples.png"))}, pair.notes
    test_x = data.eval_x("test", pair.device)
    paths = save_pictures(pair.model, pair.guide, test_x, data.image_shape, folder)
    paths["samples"] = str(save_samples(pair.model, test_x, n, data.image_shape, folder / "samples.png"))
    return paths, pair.notes


def _restore(checkpoint, folder: Path, device: str, need_data: bool = True, **where):
    """Check the output folder (before any work), then rebuild the checkpoint's pair and data; a
    folder made here is removed again if that fails (a refused command leaves nothing behind)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # the folders check_output_folder makes
    check_output_folder(folder, needed_bytes=2**20)
    try:
        check_pair_names(where.get("model"), where.get("guide"))
        return restore_pair(checkpoint, device=device, need_data=need_data, **where)
    except BaseException:
        for path in made:  # innermost first, each only while empty
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
