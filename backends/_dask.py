"""Dask backend: lazy, chunked arrays (``dask.array``, through ``array_api_compat.dask.array``).

Arrays are created with ``chunks="auto"`` (Dask's default block size); pass a chunk spec as
``device`` (e.g. ``backends.get("dask", device=(1, 1, 512, -1))``) to choose the blocks of every
array the backend creates (a tuple applies to the trailing axes of arrays of other ranks).

Primitives (:mod:`refattn._primitives`): ``linalg.qr/svd/pinv`` per (batch, head) matrix, and the
chunk-parallel graphs of exact attention and of the causal prefix sums (``_dask_graphs.py``).
Computation happens on ``to_host`` (``.compute()``) with whatever scheduler is active (the threaded
one by default, a ``dask.distributed`` client when one exists). ``synchronize`` has nothing to wait
for and ``peak_memory`` returns ``None`` (a distributed cluster reports per-worker memory itself).
"""

from __future__ import annotations

import importlib.util
from types import MappingProxyType

import numpy as np

from . import Backend

# --------------------------------------------------------------------------------------------
# linear algebra per (batch, head) block: dask.array.linalg takes only 2-D (tall-and-skinny)
# matrices and has no pinv; each matrix of a stack is one block here, computed by NumPy's
# (array_api_compat's) linalg, so the values are NumPy's bit for bit.
# --------------------------------------------------------------------------------------------

def _gufunc(fn, signature, a, sizes, nout):
    import dask.array as da

    return da.apply_gufunc(fn, signature, a, output_dtypes=(a.dtype,) * nout if nout > 1 else a.dtype,
                           output_sizes=sizes, allow_rechunk=True, vectorize=False)


def _qr(a, mode="reduced"):
    import array_api_compat.numpy as npx

    m, n = a.shape[-2:]
    if mode != "reduced":
        return npx.linalg.qr(a, mode=mode)
    q, r = _gufunc(lambda x: tuple(npx.linalg.qr(x)), "(m,n)->(m,k),(k,n)", a, {"k": min(m, n)}, 2)
    return q, r


def _svd(a, full_matrices=True):
    import array_api_compat.numpy as npx

    m, n = a.shape[-2:]
    if full_matrices:
        sig, sizes = "(m,n)->(m,m),(k),(n,n)", {"k": min(m, n)}
    else:
        sig, sizes = "(m,n)->(m,k),(k),(k,n)", {"k": min(m, n)}
    u, s, vh = _gufunc(lambda x: tuple(npx.linalg.svd(x, full_matrices=full_matrices)), sig, a, sizes, 3)
    return u, s, vh


def _pinv(a, rtol=None):
    import array_api_compat.numpy as npx

    return _gufunc(lambda x: npx.linalg.pinv(x, rtol=rtol), "(m,n)->(n,m)", a, None, 1)


def primitives():
    from ._dask_graphs import primitives as graphs

    return {"linalg.qr": _qr, "linalg.svd": _svd, "linalg.pinv": _pinv, "one_block": _one_block, **graphs()}


def _one_block(x):
    return x.rechunk({x.ndim - 2: -1, x.ndim - 1: -1}) if x.ndim >= 2 else x


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
        spec = chunks
        if isinstance(spec, tuple):  # a spec for the trailing axes; leading extra axes get "auto"
            spec = ("auto",) * max(a.ndim - len(spec), 0) + spec[max(len(spec) - a.ndim, 0):]
        return da.from_array(a, chunks=spec if a.ndim else ())

    def to_host(a):
        return np.asarray(a.compute() if hasattr(a, "compute") else a)

    return Backend(name="dask", xp=xp, device="cpu", version=dask.__version__, asarray=asarray,
                   to_host=to_host, synchronize=lambda: None, reset_peak_memory=lambda: None,
                   peak_memory=lambda: None, primitives=MappingProxyType(primitives()))
