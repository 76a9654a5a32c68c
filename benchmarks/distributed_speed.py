"""Data parallelism: seconds per epoch of ``torchrun --nproc-per-node N ppl-vae train`` at batch B
per process against one process at the same global batch N·B, measured in the same run.

Both take the same optimisation steps (the same global batches; for an objective without
random draws the same parameters, see tests/test_distributed.py), so the ratio is the speed-up
of spreading the work. On a CPU each process gets cores/N threads (torchrun sets
OMP_NUM_THREADS=1 for 2 processes on 2 cores); on GPUs use ``--device cuda`` with one GPU per
process.

    python benchmarks/distributed_speed.py                         # CPU, mnist5k, 2 processes
    python benchmarks/distributed_speed.py --device cuda --nproc 2 --data-dir ../shared/data --dataset mnist
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(out: Path, args, batch: int, nproc: int, threads: int | None) -> dict:
    command = ["-m", "ppl_vae", "train", "--dataset", args.dataset, "--epochs", str(args.epochs), "--batch-size", str(batch),
               "--hidden", args.hidden, "--z-dim", str(args.z_dim), "--objective", args.objective, "--eval-every", "0",
               "--test-k", "10", "--compile", args.compile, "--no-progress", "--device", args.device, "--out", str(out)]  # fmt: skip
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if nproc > 1:
        command = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *command]
    start = time.perf_counter()
    subprocess.run([sys.executable, *command], check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    result = json.loads((out / "result.json").read_text())
    epochs = [r["seconds"] for r in result["history"]][1:]  # the first epoch holds start-up work
    return {"seconds_per_epoch": sorted(epochs)[len(epochs) // 2], "wall_seconds": wall, "step": result["step"]}


def main(args) -> dict:
    global_batch = args.batch * args.nproc
    cores = os.cpu_count() or 1
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            one = train(Path(tmp) / f"one{rnd}", args, global_batch, 1, None)
            many = train(Path(tmp) / f"many{rnd}", args, args.batch, args.nproc, max(1, cores // args.nproc))
            for name, r in (("1 process", one), (f"{args.nproc} processes", many)):
                rows.setdefault(name, []).append(r)
    summary = {
        name: {
            "seconds_per_epoch": sorted(r["seconds_per_epoch"] for r in rs)[len(rs) // 2],
            "wall_seconds": sorted(r["wall_seconds"] for r in rs)[len(rs) // 2],
            "step": rs[0]["step"],
        }
        for name, rs in rows.items()
    }
    base = summary["1 process"]["seconds_per_epoch"]
    print(
        f"{args.dataset}, {args.objective}, global batch {global_batch}, {args.epochs} epochs, {cores} CPU cores, {args.device}"
    )
    print("| processes | batch per process | s/epoch (median) | speed-up | wall s (with start-up and test score) | step |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, s in summary.items():
        per = global_batch if name == "1 process" else args.batch
        print(
            f"| {name} | {per} | {s['seconds_per_epoch']:.3f} | {base / s['seconds_per_epoch']:.2f}× | {s['wall_seconds']:.1f} | {s['step']} |"
        )
    out = {"args": vars(args), "cores": cores, "summary": summary, "rounds": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--batch", type=int, default=50, help="batch per process (default: 50)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--hidden", default="400")
    p.add_argument("--z-dim", type=int, default=10)
    p.add_argument("--objective", default="elbo")
    p.add_argument("--compile", default="off")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default="benchmarks/results/distributed_speed-cpu.json", help="where the raw numbers go")
    main(p.parse_args())
