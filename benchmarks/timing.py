"""Timing helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so wall-clock times are real (no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device: torch.device, repeat: int, *, slow_seconds: float | None = None) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` after one warm-up call (cuDNN autotune, caches).

    With ``slow_seconds``, a warm-up slower than that counts as the only measurement.
    """
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    warmup = time.perf_counter() - start
    if slow_seconds is not None and warmup > slow_seconds:
        return warmup
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best
