"""Host-side random samplers: numbers are drawn with NumPy's ``Generator`` and then moved to the
requested backend, so every backend sees the same numbers for the same seed (SPEC 7 ``rng``).

Nothing in a forward pass draws random numbers: random matrices (Linformer's R, random-feature
projections, orthogonal blocks) are made here and passed in explicitly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["default_rng", "normal", "uniform", "orthogonal", "to_backend", "like"]


def default_rng(rng: Any = None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a seed, a ``SeedSequence`` or a Generator (returned as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        msg = "rng must be given (a seed or a numpy.random.Generator): refattn draws no hidden randomness"
        raise ValueError(msg)
    return np.random.default_rng(rng)


def _backend(backend: Any) -> Any:
    from . import backends

    return backends.get(backend or "numpy") if backend is None or isinstance(backend, str) else backend


def to_backend(host: np.ndarray, backend: Any = None, dtype: str = "float64") -> Any:
    """Move a host array to ``backend`` (a name, a ``Backend`` or ``None`` for numpy) as ``dtype``."""
    return _backend(backend).asarray(np.asarray(host, dtype=dtype))


def normal(shape: tuple[int, ...], *, rng: Any, backend: Any = None, dtype: str = "float64",
           std: float = 1.0) -> Any:
    """iid ``N(0, std^2)`` entries of ``shape`` on ``backend``."""
    return to_backend(std * default_rng(rng).standard_normal(shape), backend, dtype)


def uniform(shape: tuple[int, ...], *, rng: Any, backend: Any = None, dtype: str = "float64",
            low: float = 0.0, high: float = 1.0) -> Any:
    """iid ``U[low, high)`` entries of ``shape`` on ``backend``."""
    return to_backend(default_rng(rng).uniform(low, high, shape), backend, dtype)


def orthogonal(shape: tuple[int, int], *, rng: Any, backend: Any = None, dtype: str = "float64") -> Any:
    """A Haar-distributed matrix with orthonormal rows or columns (the smaller side), by QR.

    ``Q R = G`` for Gaussian ``G``; the columns of ``Q`` are multiplied by ``sign(diag R)`` so that the
    result is uniformly distributed (Mezzadri 2007): plain ``Q`` from LAPACK is not.
    """
    rows, cols = shape
    g = default_rng(rng).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))[None, :]
    return to_backend(q if rows >= cols else q.T, backend, dtype)


def like(host: np.ndarray, ref: Any) -> Any:
    """A host array moved to the namespace, dtype and device of the array ``ref``."""
    from ._xp import device, namespace

    xp = namespace(ref)
    return xp.asarray(np.asarray(host, dtype=np.float64), dtype=ref.dtype, device=device(ref))


# --- Linformer projections (issue 5) --------------------------------------------------------------

__all__ += ["linformer_projection"]


def linformer_projection(k: int, m: int, *, rng: Any, batch: tuple[int, ...] = (), backend: Any = None,
                         dtype: str = "float64") -> Any:
    """A Linformer / Johnson-Lindenstrauss projection ``R`` of shape ``(*batch, k, m)`` with iid
    ``N(0, 1/k)`` entries (Arriaga & Vempala; Linformer Theorem 1), so that ``E ||R x||^2 = ||x||^2``.

    Drawn on the host with ``numpy.random.Generator.standard_normal`` and scaled by ``1/sqrt(k)``, so
    every backend gets the same numbers for the same ``rng``. ``batch`` gives independent draws
    (e.g. ``(H,)`` for one projection per head). ``k > m`` is allowed here (the sampler is a plain
    Gaussian matrix); the attention methods reject it.
    """
    for name, val in (("k", k), ("m", m)):
        if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
            msg = f"{name} must be a positive integer, got {val!r}"
            raise ValueError(msg)
    batch = tuple(batch)
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in batch):
        msg = f"batch must be a tuple of non-negative integers, got {batch!r}"
        raise ValueError(msg)
    return normal((*batch, k, m), rng=rng, backend=backend, dtype=dtype, std=1.0 / np.sqrt(k))
