"""NumPy backend (the default, CPU). Peak memory through tracemalloc, which NumPy reports to.

Primitives: ``fwht`` (Kronecker-factored GEMMs through BLAS, :mod:`refattn.backends._hadamard`) and
``exp_`` (in place: the array API has no ``out=``).

Measured and not kept: splitting ``exp_`` over threads (NumPy's elementwise functions use one core).
On 2 cores it saved 5% of dense softmax and nothing elsewhere, because OpenBLAS's idle threads spin
on the cores for a while after each matrix product; and a thread pool inside a library needs fork
handling. Not worth it.
"""

from __future__ import annotations

import tracemalloc
from types import MappingProxyType
from typing import Any

import numpy as np
from array_api_compat import numpy as xp

from . import Backend
from ._hadamard import kronecker_fwht, sylvester_host

_H_CACHE: dict[tuple[int, str], Any] = {}


def _fwht(x: Any, *, axis: int) -> Any:
    """``H_c x`` along ``axis`` (``c`` a power of two), unnormalised; see ``_hadamard``."""

    def hadamard(b: int) -> Any:
        key = (b, str(x.dtype))
        if key not in _H_CACHE:
            _H_CACHE[key] = sylvester_host(b).astype(x.dtype)
        return _H_CACHE[key]

    return kronecker_fwht(x, axis, hadamard)


def _exp_(x: Any) -> Any:
    """``exp(x)`` written over ``x`` and returned (``x`` a temporary its caller gives up): no fresh
    array, so no page faults for a large one; a read-only ``x`` gets a fresh ``np.exp(x)``. The
    values are those of ``np.exp(x)``, bit for bit (the same ufunc loop)."""
    if isinstance(x, np.ndarray) and x.flags.writeable:
        return np.exp(x, out=x)
    return np.exp(x)


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
        reset_peak_memory=_reset, peak_memory=_peak, primitives=MappingProxyType({"fwht": _fwht, "exp_": _exp_}),
    )
