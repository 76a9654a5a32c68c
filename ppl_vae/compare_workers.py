"""``compare --jobs N`` / ``--devices LIST``: the comparison's runs in worker processes, one per entry
of the device list (a device runs one run at a time), spawned so that CUDA starts afresh in each."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace


def _run_in_worker(run_one, run, options: dict, threads: int) -> dict:
    """``run_one(run, **options)`` (:func:`ppl_vae.compare.run_one`) in a worker, with its share of the CPU threads."""
    import torch

    torch.set_num_threads(threads)
    try:
        return run_one(run, **options)
    except KeyboardInterrupt:  # the checkpoint is saved; the parent marks the row
        return {"variant": run.variant.name, "seed": run.seed, "status": "interrupted", "error": "Ctrl-C; continue with --resume"}


def run_concurrently(run_one, runs: list, devices: list[str], options: dict, results: dict[int, dict]) -> None:
    """``run_one(run, **options)`` for every run, in the workers; fill ``results`` (by run index) as they
    finish. Ctrl-C waits for the workers to save their checkpoints (they get the same signal) and
    raises ``KeyboardInterrupt``."""
    threads = max(1, (os.cpu_count() or 1) // len(devices)) if all(d == "cpu" for d in devices) else 1
    free, running, pending = list(devices), {}, list(enumerate(runs))
    pool = ProcessPoolExecutor(max_workers=len(devices), mp_context=multiprocessing.get_context("spawn"))
    try:
        while pending or running:
            while pending and free:
                i, run = pending.pop(0)
                device = free.pop(0)
                print(f"{run.config.label} (on {device})", flush=True)
                run = replace(run, config=replace(run.config, device=device, progress=False))
                running[pool.submit(_run_in_worker, run_one, run, options, threads)] = (i, device)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i, device = running.pop(future)
                free.append(device)
                try:
                    results[i] = future.result()
                except Exception as err:  # the worker itself died (killed, out of memory)
                    run = runs[i]
                    results[i] = {
                        "variant": run.variant.name,
                        "seed": run.seed,
                        "status": "failed",
                        "error": f"worker process: {err}",
                    }
                print(f"finished {runs[i].config.label}: {results[i]['status']}", flush=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
