"""Host-side random samplers: numbers are drawn with NumPy's ``Generator`` and then moved to the
requested backend, so every backend sees the same numbers for the same seed (SPEC 7 ``rng``).

Nothing in a forward pass draws random numbers: random matrices (Linformer's R, random-feature
projections, orthogonal blocks) are made here and passed in explicitly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import check_choice, check_int, check_shape

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


def _check_shape(shape: Any, *, ndim: int | None = None) -> tuple[int, ...]:
    """``shape`` must be a tuple of non-negative integers (of length ``ndim`` when given)."""
    return check_shape("shape", shape, ndim=ndim)


def to_backend(host: np.ndarray, backend: Any = None, dtype: str = "float64") -> Any:
    """Move a host array to ``backend`` (a name, a ``Backend`` or ``None`` for numpy) as ``dtype``."""
    return _backend(backend).asarray(np.asarray(host, dtype=dtype))


def normal(shape: tuple[int, ...], *, rng: Any, backend: Any = None, dtype: str = "float64",
           std: float = 1.0) -> Any:
    """iid ``N(0, std^2)`` entries of ``shape`` on ``backend``."""
    shape = _check_shape(shape)
    return to_backend(std * default_rng(rng).standard_normal(shape), backend, dtype)


def uniform(shape: tuple[int, ...], *, rng: Any, backend: Any = None, dtype: str = "float64",
            low: float = 0.0, high: float = 1.0) -> Any:
    """iid ``U[low, high)`` entries of ``shape`` on ``backend``."""
    shape = _check_shape(shape)
    return to_backend(default_rng(rng).uniform(low, high, shape), backend, dtype)


def orthogonal(shape: tuple[int, int], *, rng: Any, backend: Any = None, dtype: str = "float64") -> Any:
    """A Haar-distributed matrix with orthonormal rows or columns (the smaller side), by QR.

    ``Q R = G`` for Gaussian ``G``; the columns of ``Q`` are multiplied by ``sign(diag R)`` so that the
    result is uniformly distributed (Mezzadri 2007): plain ``Q`` from LAPACK is not.
    """
    rows, cols = _check_shape(shape, ndim=2)
    q = _haar_qr(default_rng(rng).standard_normal((max(rows, cols), min(rows, cols))))
    return to_backend(q if rows >= cols else q.T, backend, dtype)


def _haar_qr(g: np.ndarray) -> np.ndarray:
    """The Haar sign fix, once for every sampler: ``Q`` of ``Q R = g`` (a stack of tall Gaussian
    matrices, one LAPACK call) with its columns multiplied by ``sign(diag R)`` (Mezzadri 2007)."""
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


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
    k, m = check_int("k", k, minimum=1), check_int("m", m, minimum=1)
    batch = check_shape("batch", batch, scalar=False)
    return normal((*batch, k, m), rng=rng, backend=backend, dtype=dtype, std=1.0 / np.sqrt(k))
# ------------------------------------------------------------------------------------------------
# Random-feature projections (Performer FAVOR+, RFA): W of shape (..., D, d), rows w_l
# ------------------------------------------------------------------------------------------------

__all__ += ["gaussian_projection", "orthogonal_projection"]

_ROW_NORMS = ("chi", "fixed")


def _check_projection_args(n_features: Any, d: Any, norms: Any, batch: Any) -> tuple[int, ...]:
    check_int("n_features", n_features, minimum=1)
    check_int("d", d, minimum=1)
    check_choice("norms", norms, _ROW_NORMS)
    return check_shape("batch", batch)


def gaussian_projection(n_features: int, d: int, *, rng: Any, norms: str = "chi", batch: Any = (),
                        backend: Any = None, dtype: str = "float64") -> Any:
    """iid Gaussian random-feature projection ``W (*batch, D, d)``, ``D = n_features``.

    ``norms="chi"``: rows ``w_l ~ N(0, I_d)`` as drawn (lengths chi-distributed with ``d`` degrees
    of freedom): FAVOR+ and random Fourier feature estimates are unbiased. ``norms="fixed"``: each
    row rescaled to length ``sqrt(d)`` (direction uniform on the sphere), which estimates the
    Performer's regularised kernel SMREG instead (biased low for ``exp(x . y)``).
    Drawn on the host, so every backend gets the same numbers for the same seed.
    """
    batch = _check_projection_args(n_features, d, norms, batch)
    g = default_rng(rng).standard_normal((*batch, n_features, d))
    if norms == "fixed":
        g = g * (np.sqrt(d) / np.linalg.norm(g, axis=-1, keepdims=True))
    return to_backend(g, backend, dtype)


def orthogonal_projection(n_features: int, d: int, *, rng: Any, norms: str = "chi", batch: Any = (),
                          backend: Any = None, dtype: str = "float64") -> Any:
    """Block-orthogonal random-feature projection ``W (*batch, D, d)`` (Performer's ORF, Yu et al. 2016).

    ``ceil(D / d)`` independent ``d x d`` Haar-orthogonal blocks (:func:`orthogonal`: QR of a Gaussian
    matrix with the columns' signs corrected by ``sign(diag R)``; plain LAPACK QR is not Haar) are
    stacked and the first ``D`` rows kept, so rows within a block are exactly orthogonal and blocks
    are independent. Row lengths: ``norms="chi"`` multiplies each unit row by the norm of an
    independent ``N(0, I_d)`` vector (each row is then marginally ``N(0, I_d)``: unbiased estimates;
    Performer's ``scaling=0``, Yu et al.'s ``W_ORF = S Q``); ``norms="fixed"`` uses ``sqrt(d)``
    (Performer's ``scaling=1``, Yu et al.'s ``W_ORF'``: biased). The blocks are drawn first (one
    ``d x d`` Gaussian each, batch element by batch element, as successive :func:`orthogonal` calls
    would), then the ``(*batch, D, d)`` Gaussian whose row norms give the lengths. Drawn on the host:
    the same numbers on every backend.
    """
    batch = _check_projection_args(n_features, d, norms, batch)
    gen = default_rng(rng)
    n_blocks = -(-n_features // d)
    count = int(np.prod(batch)) if batch else 1
    rows = _haar_blocks(gen, count * n_blocks, d).reshape(count, n_blocks * d, d)
    w = rows[:, :n_features].reshape((*batch, n_features, d))
    if norms == "chi":
        lengths = np.linalg.norm(gen.standard_normal((*batch, n_features, d)), axis=-1, keepdims=True)
    else:
        lengths = np.sqrt(d)
    return to_backend(w * lengths, backend, dtype)


def _haar_blocks(gen: np.random.Generator, count: int, d: int) -> np.ndarray:
    """``count`` independent Haar ``d x d`` orthogonal matrices: :func:`orthogonal`'s construction
    (QR of a Gaussian matrix, columns times ``sign(diag R)``), batched in one LAPACK call. It consumes
    ``gen`` exactly as ``count`` successive ``orthogonal((d, d), rng=gen)`` calls do (tested)."""
    return _haar_qr(gen.standard_normal((count, d, d)))
