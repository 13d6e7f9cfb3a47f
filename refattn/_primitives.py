"""Backend primitives: where a backend offers a faster implementation of a named operation.

A backend (:mod:`refattn.backends`) may register primitives in ``Backend.primitives``; the generic
array-API formulation stays the oracle and tests compare the two. Known primitives:

``fwht(x, *, axis)``
    Unnormalised Walsh-Hadamard transform along ``axis`` (:mod:`refattn.hadamard`).
``exp_(x)``
    ``exp(x)``, allowed to overwrite ``x``: the caller hands over a temporary it owns and does not
    read again. Must give the same values as ``xp.exp`` element for element. NumPy's is in place
    (the array API has no ``out=``): one large temporary fewer per call.
``linalg.qr``, ``linalg.svd``, ``linalg.pinv``
    The array-API ``xp.linalg`` functions (same signatures) on stacks of matrices, for libraries whose
    own cannot take them: Dask's ``linalg`` handles only 2-D tall-and-skinny arrays and has no
    ``pinv``, so its backend maps NumPy's over the (batch, head) blocks (:func:`linalg`).
``one_block(x)``
    ``x`` itself, as one block of its last two axes on chunked backends (Dask): for arrays known to be
    small (Nystrom's landmarks), whose chunks would otherwise follow the sequence's and multiply
    the tasks of every product with them. Same values.
``softmax_attention``, ``causal_dot``
    Chunk-parallel graphs of exact attention (forward and backward) and of the causal prefix sums
    for chunked (Dask) arrays; see ``refattn/backends/_dask.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["backend_primitive", "exp_consuming", "linalg", "one_block"]

# namespace module name -> backend name, for the primitive lookup
_BACKEND_OF = {"array_api_compat.numpy": "numpy", "numpy": "numpy", "array_api_compat.torch": "torch",
               "array_api_compat.cupy": "cupy", "array_api_strict": "array_api_strict",
               "array_api_compat.dask.array": "dask", "jax.numpy": "jax"}
_PRIMITIVE_CACHE: dict[tuple[str, str], Callable[..., Any] | None] = {}


def backend_primitive(xp: Any, name: str = "fwht") -> Callable[..., Any] | None:
    """The backend primitive ``name`` for arrays of namespace ``xp``, or ``None`` if there is none.

    A namespace may list its primitives itself in a ``refattn_primitives`` mapping (the counting
    namespaces of :mod:`refattn.cost` list none: they count the generic maths). Otherwise the
    namespaces of the built-in backends are looked up by name, any other one by identity among the
    registered backends; either answer is remembered per namespace name.
    """
    own = getattr(xp, "refattn_primitives", None)
    if own is not None:
        return own.get(name)
    key = (getattr(xp, "__name__", repr(xp)), name)
    if key not in _PRIMITIVE_CACHE:
        from . import backends

        found = None
        known = _BACKEND_OF.get(key[0])
        for bname in [known] if known else list(backends.names()):
            try:
                be = backends.get(bname)
            except (backends.BackendUnavailable, ImportError):
                continue
            if be.xp is xp or bname == known:
                found = be.primitives.get(name)
                break
        _PRIMITIVE_CACHE[key] = found
    return _PRIMITIVE_CACHE[key]


def exp_consuming(xp: Any, x: Any) -> Any:
    """``exp(x)`` for a temporary ``x`` that the caller gives up (it may be overwritten): the
    backend's ``exp_`` primitive where there is one, else ``xp.exp(x)``. Same values either way."""
    prim = backend_primitive(xp, "exp_")
    return xp.exp(x) if prim is None else prim(x)


def linalg(xp: Any, name: str) -> Callable[..., Any]:
    """``xp.linalg.<name>``, or the backend's ``linalg.<name>`` primitive where it has one."""
    prim = backend_primitive(xp, "linalg." + name)
    return getattr(xp.linalg, name) if prim is None else prim


def one_block(xp: Any, x: Any) -> Any:
    """``x`` as one block of its last two axes where the backend chunks arrays (``one_block``), else ``x``."""
    prim = backend_primitive(xp, "one_block")
    return x if prim is None else prim(x)
