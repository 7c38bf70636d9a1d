"""Timing for the benchmark scripts: CUDA events, warm-up, median."""

from __future__ import annotations

import statistics

import torch


def median_ms(fn, warmup: int = 5, reps: int = 20) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs after ``warmup`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)
