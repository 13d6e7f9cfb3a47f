"""NumPy backend (the default, CPU). Peak memory through tracemalloc, which NumPy reports to."""

from __future__ import annotations

import tracemalloc

import numpy as np
from array_api_compat import numpy as xp

from . import Backend

_baseline = [0]


def is_available() -> bool:
    return True


def why_unavailable() -> str:
    return ""


def _reset() -> None:
    if not tracemalloc.is_tracing():
        tracemalloc.start()
    tracemalloc.reset_peak()
    _baseline[0] = tracemalloc.get_traced_memory()[0]


def _peak() -> int | None:
    if not tracemalloc.is_tracing():
        return None
    return tracemalloc.get_traced_memory()[1] - _baseline[0]


def make(device=None) -> Backend:
    if device not in (None, "cpu"):
        msg = f"device for the numpy backend must be None or 'cpu', got {device!r}"
        raise ValueError(msg)
    return Backend(
        name="numpy", xp=xp, device="cpu", version=np.__version__,
        asarray=lambda a, dtype=None: np.asarray(a, dtype=dtype),
        to_host=np.asarray, synchronize=lambda: None,
        reset_peak_memory=_reset, peak_memory=_peak,
    )
