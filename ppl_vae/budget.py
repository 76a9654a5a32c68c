r"""What a run will cost, known before it starts: memory for training and for scoring, and the time
log p(x) will take, so that what cannot fit or finish is refused (or made to fit) up front with
the numbers, not found out after the training it was meant to score.

Memory is estimated in float32 numbers: a parameter is held 4 times in training (the value, its
gradient and Adam's two moments); one importance sample of one point holds, about 3 times over
(forward values, their gradients or intermediates), every sample site's values and every
``nn.Linear`` layer's outputs of the pair.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .capture import module_of
from .sites import SiteTerms

BYTES = 4  # float32
TRAINING_COPIES, ACTIVATION_COPIES = 4, 3
SCORING_SHARE = 0.25  # the share of the free memory one chunk of log p(x) may take
MAX_SCORING_SECONDS = 12 * 3600  # beyond this, log p(x) is refused unless forced
MAX_K = 1_000_000  # and beyond this many samples per point (Burda et al. used 5,000)


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (CUDA's free memory; on the CPU Linux's MemAvailable), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def sample_width(model, guide, terms: SiteTerms) -> int:
    """Numbers one importance sample of one point holds: its sample sites' values, the outputs of
    the pair's linear layers and the feature maps of modules that declare ``activation_numbers``."""
    points = next(iter(terms.model_terms.values())).shape[-1] * terms.num_particles
    values = sum(
        s["value"].numel() for t in (terms.model_trace, terms.guide_trace) for s in t.nodes.values() if s["type"] == "sample"
    )
    modules = [m for fn in (model, guide) if module_of(fn) is not None for m in module_of(fn).modules()]
    layers = sum(m.out_features for m in modules if isinstance(m, nn.Linear))
    # a module whose activations are not linear layers' outputs (a PixelCNN's feature maps) says how many
    maps = sum(int(getattr(m, "activation_numbers", 0)) for m in modules)
    return values // max(points, 1) + layers + maps


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_training_memory(params: list[torch.Tensor], batch: int, particles: int, width: int, device: torch.device) -> None:
    """Refuse a run whose parameters, optimizer state and activations cannot fit in ``device``'s free memory."""
    free = available_bytes(device)
    if free is None:
        return
    weights = TRAINING_COPIES * BYTES * sum(p.numel() for p in params)
    activations = ACTIVATION_COPIES * BYTES * batch * particles * width
    if weights + activations > 0.9 * free:
        raise ValueError(
            f"training needs about {_gib(weights + activations)} ({_gib(weights)} for the parameters, their gradients and "
            f"Adam's state, {_gib(activations)} for a batch of {batch} x {particles} samples of {width} numbers each) and "
            f"{device} has {_gib(free)} free: use a smaller --z-dim, --hidden, --batch-size or k"
        )


def scoring_chunk(batch_size: int, chunk_k: int, width: int, device: torch.device) -> tuple[int, int]:
    """``(points, samples)`` per chunk of log p(x) that fit in a share of ``device``'s free memory: the
    asked sizes where they fit, else fewer points, then fewer samples (never below one of each)."""
    free = available_bytes(device)
    if free is None:
        return batch_size, chunk_k
    per_sample = ACTIVATION_COPIES * BYTES * width
    fit = max(1, int(SCORING_SHARE * free // per_sample))  # samples x points one chunk may hold
    points = max(1, min(batch_size, fit // chunk_k))
    return points, max(1, min(chunk_k, fit // points))


def log_px_seconds(chunk, points: int, k: int, chunk_k: int, batch: int) -> float:
    """The time log p(x) with ``k`` samples on ``points`` points will take, from one timed ``chunk()``
    (a chunk of ``chunk_k`` samples on ``batch`` points)."""
    start = time.perf_counter()
    chunk()
    seconds = time.perf_counter() - start
    return seconds * -(-k // chunk_k) * -(-points // batch)


def refuse_long_scoring(seconds: float, k: int, points: int, force: bool) -> None:
    if k > MAX_K and not force:
        raise ValueError(
            f"K={k:,} importance samples per point is far beyond what log p(x) needs (Burda et al. used 5,000; the "
            f"IWAE-by-K row of ppl-vae evaluate shows when it stops rising) and would take about {seconds / 3600:,.1f} "
            "hours here: lower --k/--test-k, or pass --force to run it anyway"
        )
    if seconds > MAX_SCORING_SECONDS and not force:
        raise ValueError(
            f"log p(x) with K={k:,} importance samples on {points:,} points would take about {seconds / 3600:,.0f} hours "
            f"here (timed on one chunk): lower --k/--test-k, or pass --force to run it anyway"
        )
