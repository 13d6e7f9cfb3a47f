"""Host conversion of arrays from any library, for :mod:`refattn.testing` and ``refattn check``.

This is the one module of ``refattn.testing`` that imports NumPy (ruff's per-file-ignores allow it):
comparing a user's result with the float64 oracle needs both on the host in float64, and the
user's array may come from any library (NumPy, CuPy, torch with or without ``requires_grad``,
JAX, array-api-strict) in any floating dtype, bfloat16 included, on any device. The ladder, in order:

1. DLPack on the host: ``numpy.from_dlpack(x)`` (zero copy for CPU arrays of any DLPack producer);
2. DLPack with a device copy: ``numpy.from_dlpack(x, device="cpu", copy=True)`` (DLPack 1.0
   producers copy device memory to the host themselves);
3. the library's own host copy, duck-typed: ``x.get()`` (CuPy) or ``x.cpu()`` (torch);
4. the ``__array__`` protocol: ``numpy.asarray(x)``.

bfloat16 has no NumPy dtype, so such arrays are first widened to float32 (exactly) in their own
namespace. torch tensors that require grad are detached first (DLPack refuses them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["dtype_name", "to_host64", "from_host", "HALF_NAMES", "FLOAT_NAMES"]

FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
HALF_NAMES = ("float16", "bfloat16")


def dtype_name(dtype: Any) -> str:
    """``'float16' | 'bfloat16' | 'float32' | 'float64' | ...`` for a dtype of any library.

    ``numpy.dtype('float16')``, ``torch.float16``, ``array_api_strict.float16``, ``jnp.bfloat16``
    and the strings themselves all map to the bare name.
    """
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name  # numpy / cupy dtypes and scalar types
        except TypeError:
            name = str(dtype)
    name = name.rsplit(".", 1)[-1].strip("'\"<>")
    if name.startswith("dtype("):
        name = name[6:].strip("()'\"")
    return name


def _widen_bfloat16(x: Any) -> Any:
    """A bfloat16 array as float32 in its own namespace (exact), or as is."""
    if dtype_name(getattr(x, "dtype", "")) != "bfloat16":
        return x
    if hasattr(x, "float") and hasattr(x, "requires_grad_"):  # torch, without importing it
        return x.detach().float()
    from ._xp import namespace

    try:
        xp = namespace(x)
        return xp.astype(x, xp.float32)
    except TypeError:
        return x.astype("float32")  # e.g. ml_dtypes-backed arrays


def to_host64(x: Any, name: str = "array") -> tuple[np.ndarray, str]:
    """``(float64 NumPy copy of x, dtype name of x)`` for an array of any library.

    Raises ``TypeError`` naming ``name`` when ``x`` is not an array or has no floating dtype.
    """
    if isinstance(x, (bool, int, float, complex, list, tuple)) or x is None or not hasattr(x, "dtype"):
        msg = f"{name} must be an array (any library: DLPack or __array__), got {type(x).__name__}"
        raise TypeError(msg)
    src = dtype_name(x.dtype)
    if hasattr(x, "detach") and hasattr(x, "requires_grad_"):
        x = x.detach()
    y = _widen_bfloat16(x)
    host = None
    if isinstance(y, np.ndarray | np.generic):
        host = np.asarray(y)
    if host is None and hasattr(y, "__dlpack__"):
        try:
            host = np.from_dlpack(y)
        except (BufferError, RuntimeError, TypeError, ValueError):
            try:
                host = np.from_dlpack(y, device="cpu", copy=True)
            except (BufferError, RuntimeError, TypeError, ValueError, NotImplementedError):
                host = None
    if host is None and callable(getattr(y, "get", None)) and type(y).__module__.startswith("cupy"):
        host = y.get()
    if host is None and callable(getattr(y, "cpu", None)) and hasattr(y, "numpy"):
        host = y.cpu().numpy()
    if host is None:
        try:
            host = np.asarray(y)
        except Exception as exc:  # the library refuses implicit host conversion
            msg = (f"{name}: cannot bring a {type(x).__module__}.{type(x).__name__} to the host "
                   f"(no host DLPack, no __array__): {exc}")
            raise TypeError(msg) from None
    if host.dtype.kind not in "fiub" and dtype_name(host.dtype) not in FLOAT_NAMES:
        msg = f"{name} must have a real dtype, got {src}"
        raise TypeError(msg)
    return np.array(host, dtype=np.float64, copy=True), src


def from_host(host: Any, backend: Any, dtype: str) -> Any:
    """The host array ``host`` on ``backend`` (a :class:`refattn.backends.Backend`) as ``dtype``.

    ``bfloat16`` (no NumPy dtype) is made in the backend's own namespace from float32; integer
    and boolean arrays keep their dtype when ``dtype`` is ``None``.
    """
    host = np.asarray(host)
    if dtype is None:
        return backend.asarray(host)
    if dtype == "bfloat16":
        xp = backend.xp
        if not hasattr(xp, "bfloat16"):
            msg = f"backend {backend.name!r} has no bfloat16 dtype"
            raise TypeError(msg)
        return xp.astype(backend.asarray(host.astype(np.float32)), xp.bfloat16)
    return backend.asarray(host.astype(dtype))
