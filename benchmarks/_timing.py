"""Shared timing helper: warm-ups, repeated runs, median and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timeit(fn: Callable[[], object], *, warmup: int = 1, repeat: int = 5,
           sync: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Median wall time of ``fn()`` in seconds and the relative spread (max-min)/median."""
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return med, (max(times) - min(times)) / med


def peak_bytes(backend, fn: Callable[[], object]) -> int | None:
    """Peak bytes allocated by the backend while ``fn()`` runs."""
    backend.reset_peak_memory()
    out = fn()
    peak = backend.peak_memory()
    del out
    return peak
