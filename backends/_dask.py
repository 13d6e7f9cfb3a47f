"""Dask backend: lazy, chunked arrays (``dask.array``, through ``array_api_compat.dask.array``).

Arrays are created with ``chunks="auto"`` (Dask's default block size); pass a chunk spec as
``device`` (e.g. ``backends.get("dask", device=(1, 1, 512, -1))``) to choose the blocks of every
array the backend creates.
Computation happens on ``to_host`` (``.compute()``) with whatever scheduler is active (the threaded
one by default, a ``dask.distributed`` client when one exists). ``synchronize`` has nothing to wait
for and ``peak_memory`` returns ``None`` (a distributed cluster reports per-worker memory itself).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from . import Backend


def is_available() -> bool:
    return importlib.util.find_spec("dask") is not None and importlib.util.find_spec("dask.array") is not None


def why_unavailable() -> str:
    return "dask[array] is not installed"


def make(device=None) -> Backend:
    import array_api_compat.dask.array as xp
    import dask
    import dask.array as da

    chunks = "auto" if device is None or device == "cpu" else device

    def asarray(a, dtype=None):
        a = np.array(a, dtype=dtype, copy=True)
        return da.from_array(a, chunks=chunks if a.ndim else ())

    def to_host(a):
        return np.asarray(a.compute() if hasattr(a, "compute") else a)

    return Backend(name="dask", xp=xp, device="cpu", version=dask.__version__, asarray=asarray,
                   to_host=to_host, synchronize=lambda: None, reset_peak_memory=lambda: None,
                   peak_memory=lambda: None)
