"""Timing helpers: warm-ups, interleaved repeated runs, the median ratio and its spread."""

from __future__ import annotations

import ctypes
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def interleaved(fns: Sequence[Callable[[], object]], *, warmup: int = 2, repeat: int = 7,
                sync: Callable[[], None] = lambda: None,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Time ``fns[0]`` (the subject) and each peer ``fns[1:]`` in rounds: each round runs every
    function once, in an order rotated from round to round, so slow drifts of a shared machine's
    load hit all of them alike. Returns the per-round times ``{"times": [[t_fn for each round]...]}``
    and, for each peer ``i >= 1``, the per-round ratios ``t_0 / t_i`` under ``"ratios"``. ``clock``:
    wall time by default; ``time.thread_time`` (CPU time of this thread) is immune to other
    processes' load but is only meaningful with single-threaded BLAS and torch."""
    for _ in range(warmup):
        for fn in fns:
            fn()
            sync()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeat):
        order = [(r + i) % len(fns) for i in range(len(fns))]
        for i in order:
            t0 = clock()
            fns[i]()
            sync()
            times[i].append(clock() - t0)
    ratios = [[a / b for a, b in zip(times[0], times[i])] for i in range(1, len(fns))]
    return {"times": times, "ratios": ratios}


def summary(ratios: Sequence[float]) -> dict[str, float]:
    """Median of the per-round ratios and their interquartile range."""
    q1, med, q3 = _quartiles(sorted(ratios))
    return {"ratio": med, "q1": q1, "q3": q3}


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def traced_peak(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> tuple[int, float]:
    """``(peak bytes, seconds)`` of one call of ``fn`` under :mod:`tracemalloc` (NumPy reports its
    buffers to it; what was allocated before the call is not counted; the result is released
    after the peak is read)."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = clock()
    out = fn()
    secs = clock() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    del out
    if not was:
        tracemalloc.stop()
    return peak, secs


def load_warning(load: Sequence[float] | None, cores: int | None, threads: int, clock: str = "wall") -> str | None:
    """A warning when the 1-minute load average says other processes compete for the cores a run uses,
    else ``None``.

    ``threads`` is the most threads the run uses (torch's, or NumPy's BLAS from
    ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``, default every core). The machine counts as busy when
    fewer than ``threads`` cores are free, with half a core to spare: ``load > cores - threads + 0.5``.
    Wall-clock ratios are then unstable (0.02-0.08 measured on a loaded 2-core machine: a threaded
    peer's workers wait for cores); a single-threaded run on the thread clock is immune and never
    warned about.
    """
    if not load or not cores:
        return None
    if threads <= 1 and clock == "thread":
        return None
    if load[0] <= cores - threads + 0.5:
        return None
    return (f"warning: load average {load[0]:.2f} on {cores} cores: other processes compete for the {threads} "
            "thread(s) this run uses, so its times and ratios are not stable (ratios of 0.02-0.08 have been "
            "measured on a loaded 2-core machine). Single-threaded runs are the stable ones: "
            "OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 ... --threads 1 --clock thread.")


def blas_threads(cores: int | None) -> int:
    """NumPy's BLAS threads as the environment sets them (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            return max(1, int(os.environ[var]))
        except (KeyError, ValueError):
            continue
    return cores or 1


def set_allocator(mode: str) -> str:
    """Choose how this process's C allocator treats large blocks; returns what was done, in words.

    ``"system"`` leaves glibc's defaults: a block above the mmap threshold (at most 32 MiB) gets fresh
    pages from the kernel on every allocation and gives them back when freed, so every large temporary
    of every call pays a page fault per 4 KiB (zeroing included). Below the threshold freed memory is
    reused without faults. Sweeping n therefore moves a method's arrays from "reused" to "faulted
    in on each call" part way through the range, and that step, not the method, bends the fitted time
    exponent upwards (measured, benchmarks/RESULTS.md: linear-causal float64 per-row time +30% from
    n = 8192 to 65536 under ``"system"``, flat under ``"reuse"``; the process's system time in a
    five-method sweep 29 s vs 4 s).
    ``"reuse"`` (``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, -1)``, what
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` do from the environment) serves large blocks from
    the heap and keeps freed memory for reuse: every size then runs on warm pages, as the smallest ones
    do under either mode. It applies to everything in the process, refattn and its torch peers alike;
    the process keeps its peak heap until it exits. Without glibc's ``mallopt`` it does nothing and
    says so.
    """
    if mode == "system":
        return "system allocator defaults"
    if mode != "reuse":
        msg = f"allocator mode must be 'reuse' or 'system', got {mode!r}"
        raise ValueError(msg)
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return "system allocator defaults (no glibc mallopt on this platform)"
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
    if not ok:
        return "system allocator defaults (mallopt refused)"
    return "glibc heap reuse (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1)"


def count(minimum: int) -> object:
    """An argparse ``type``: an integer ``>= minimum`` (argparse then exits 2 with one line otherwise)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_real(text: str) -> float:
    """An argparse ``type``: a finite real number > 0."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive real number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive real number, got {text!r}")
    return value
