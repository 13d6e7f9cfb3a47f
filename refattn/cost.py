r"""Complexity instrumentation: the :class:`Cost` record, a counting array-API namespace, and the
helpers that check closed-form cost models against counted runs.

Closed-form ``cost(...)`` functions of every method return a :class:`Cost`; the counting namespace
(:func:`count` / :func:`measure`) produces the same record from a real run, and the tests check
that the two agree exactly for ``flops`` and ``transcendentals``
(:func:`assert_counted_matches`).

How counting works
------------------
:func:`measure` (or ``count().wrap``) wraps every input array in a :class:`CountedArray`, a thin
wrapper in the manner of array-api-strict whose ``__array_namespace__`` returns a
:class:`CountingNamespace` around the input's own namespace (NumPy, array-api-strict, torch,
CuPy...). refattn's methods only ever ask ``namespace(q, k, v)``, so the unchanged method code runs
on the wrapper: every ``xp.*`` call and every operator (``a @ b``, ``a * b``, ``-a``, ``a[i]``,
``a[i] = b``, ``a += b``, ``bool(a)``...) is executed by the wrapped backend -- results are bit for
bit the backend's -- and recorded per op. Every function is listed explicitly: one the counting
namespace does not know raises ``NotImplementedError`` naming it (there is no fall-through to the
wrapped namespace, which would miscount silently). An op that receives an array that is not
counted (a plain NumPy array next to counted ones) raises ``TypeError`` naming the argument.

Counting conventions
--------------------
An *element* is one entry of an op's output after broadcasting; ``N`` is the number of input
elements of a reduction, ``M`` its number of outputs and ``L`` the length reduced over (``N = M L``).

- **Floating point only.** An op counts flops and transcendentals only when it works on floating
  data: elementwise ops and matrix products when their result is real or complex floating,
  reductions, searches and norms when their input is. Integer and boolean arithmetic (index
  bookkeeping such as ``arange(i0, i1) + offset``) counts 0 flops; it still moves bytes.
- ``a @ b`` / ``matmul`` of ``(..., p, r) @ (..., r, c)``: ``2 p r c`` flops per element of the
  broadcast batch, i.e. ``2 r`` per output element (1-D operands: ``p = 1`` or ``c = 1``).
  ``vecdot``: ``2 L`` per output element; ``tensordot``: ``2 K`` per output element with ``K`` the
  product of the contracted lengths; ``linalg.outer``: 1 per output element.
- Elementwise arithmetic ``add subtract multiply divide floor_divide remainder negative abs square
  sign maximum minimum clip copysign floor ceil round trunc reciprocal nextafter`` and the
  operators ``+ - * / // % -x abs()``: 1 flop per output element (python scalars count like
  broadcast arrays; ``clip`` counts 1, not 2). In-place operators (``a += b``) likewise.
- Transcendentals ``exp expm1 log log1p log2 log10 sqrt sin cos tan asin acos atan sinh cosh tanh
  asinh acosh atanh pow atan2 hypot logaddexp`` and ``a ** b``: 1 *transcendental* per output
  element and no flop.
- Reductions ``sum prod max min argmax argmin``: ``M * max(L - 1, 0)`` flops (``N - M`` when
  ``L >= 1``); ``mean`` adds ``M`` (the division), i.e. ``N`` when ``L >= 1``; ``var``: ``4 N``
  (mean, subtract, square, sum, divide: ``N + N + N + (N - M) + M``); ``std``: ``4 N`` flops and
  ``M`` transcendentals. ``cumulative_sum`` / ``cumulative_prod`` along an axis of length ``L``:
  ``(N / L) * (L - 1)`` flops; ``diff``: 1 flop per output element. ``linalg.trace``: the sum of
  the diagonal, ``M * max(L - 1, 0)`` with ``L`` the diagonal's length. ``linalg.cross``: 3 flops per
  output element (two products and a difference).
- Norms: ``linalg.vector_norm`` with ``ord = 2``: ``N + M (L - 1)`` flops and ``M``
  transcendentals (square, sum, sqrt); ``ord = 1, inf, -inf``: ``N + M (L - 1)`` flops (abs, then
  sum / max / min); any other finite ``ord > 0``: ``N + M (L - 1)`` flops and ``N + M``
  transcendentals (``|x|^p``, sum, ``^(1/p)``); ``ord = 0`` and negative finite orders raise
  ``NotImplementedError``. ``linalg.matrix_norm``: ``"fro"`` as the 2-norm of the ``r c`` entries;
  ``1``/``-1``: ``N`` (abs) ``+ M c (r - 1)`` (column sums) ``+ M (c - 1)`` (max/min);
  ``inf``/``-inf`` the same with rows and columns swapped; ``2``/``-2``: ``svdvals`` plus
  ``M (k - 1)``; ``"nuc"``: ``svdvals`` plus ``M (k - 1)``. ``linalg.norm`` (where the backend has
  it, NumPy semantics) is counted as the vector or matrix norm it computes.
- Comparisons, logical and bitwise operators, ``where``, ``isfinite isnan isinf signbit``,
  ``astype``, ``positive conj real imag``, indexing and ``__setitem__``, every manipulation function
  (``reshape concat stack flip ...``), creation functions (``zeros arange linspace eye tril ...``),
  ``any all count_nonzero``, sorting (``sort argsort``), ``searchsorted nonzero unique_* isin take
  take_along_axis``: 0 flops (they move bytes only; sorting and searching comparisons are not
  counted).
- Linear-algebra decompositions count the conventional dense LAPACK-style totals of
  :func:`linalg_flops` per matrix of the stack (Golub & Van Loan, *Matrix Computations*, 4th ed.),
  whatever the backend really does, so closed forms can use the same numbers: see that function.
- ``bytes_read``: the ``nbytes`` (size times item size, not broadcast) of every array operand of the
  op, views counted at their own size (``x[..., :8]`` reads ``8 / n`` of ``x``); ``zeros_like``
  and the other ``*_like`` functions read nothing (only the shape and dtype). Gathers
  (``take``, ``take_along_axis``, advanced indexing) read the result's ``nbytes`` from ``x`` plus
  their index arrays. ``x[key] = v`` reads ``v`` (and index arrays) and writes the selected region.
  ``bytes_written``: the ``nbytes`` of every result the op allocates (in-place ops: of the target).
- **Views** read and write nothing and allocate nothing: basic indexing (integers, slices,
  ``...``, ``None``), ``reshape`` (unless ``copy=True``), ``permute_dims``, ``matrix_transpose``,
  ``.mT``, ``.T``, ``expand_dims``, ``squeeze``, ``moveaxis``, ``broadcast_to``,
  ``broadcast_arrays``, ``unstack``, ``linalg.diagonal``, and ``astype`` / ``asarray`` /
  ``to_device`` when the backend hands back the input itself (``copy=False``). Any other op
  counts a new array even where a backend returns an existing object (NumPy's ``any`` of a NumPy
  bool scalar returns the ``np.True_`` singleton). A view shares its base's storage: the storage is
  freed when the last view of it dies. Every other op allocates each array it returns
  (``allocations`` counts them), including ``flip`` and ``astype`` even where a backend returns a
  view, and ``reshape`` counts as a view even where the backend must copy: the convention is fixed,
  not backend-dependent.
- ``peak_bytes``: the maximum, over the run, of the bytes held by arrays created inside it that are
  still alive (a storage record shared by an array and its views adds its bytes on creation and
  removes them in its finalizer, ``__del__``, when the last view dies -- what a ``weakref.finalize``
  would do, at a fifth of the cost; views count once; inputs, and views of inputs, not at all). CPython's
  reference counting frees temporaries as soon as the expression that made them is done, so the
  count is deterministic; it is the live storage of the *array API program*, not of the backend's
  allocator (which may fuse, cache or copy).
- Conversions ``bool() float() int() complex() operator.index()`` read the array's bytes; they
  compute and allocate nothing.
- Per op, the counter records ``calls``, flops, transcendentals, bytes, allocations and (in the
  per-op record's ``peak_bytes``) the largest live total seen right after an op of that kind, which
  shows where the peak is reached.

Writing a method's closed form
------------------------------
State ``flops`` and ``transcendentals`` as formulas in the docstring (count what the code does,
including mask handling and every ``where``-guard), use :func:`linalg_flops` for decompositions,
state bytes and peak as upper bounds (a closed form that replays the code op by op has to be
refactored with it; :class:`Tally` remains for a model that must be exact), and test with
:func:`assert_counted_matches` (``exact=("flops", "transcendentals")``, ``upper=("peak_bytes",)``
where the peak is a bound). ``refattn.methods.softmax.cost`` is the worked example.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from ._xp import device as _device
from ._xp import namespace as _namespace

__all__ = [
    "Cost",
    "CountedArray",
    "CountingNamespace",
    "count",
    "measure",
    "unwrap",
    "fit_exponent",
    "assert_counted_matches",
    "linalg_flops",
    "Tally",
    "SUPPORTED",
]


# ------------------------------------------------------------------------------------------------
# The record
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cost:
    """Cost of one computation. ``per_op`` maps an op name to its own ``Cost`` (may be empty).

    ``calls`` is the number of op calls (0 for closed forms that do not model it); it does not take
    part in equality. In a per-op record ``peak_bytes`` is the largest live total seen right after
    an op of that kind.
    """

    flops: int = 0
    transcendentals: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    peak_bytes: int = 0
    allocations: int = 0
    per_op: dict[str, Any] = field(default_factory=dict, compare=False)
    calls: int = field(default=0, compare=False)

    def __add__(self, other: Cost) -> Cost:
        """Costs of two computations run one after the other (peak: the larger of the two)."""
        if not isinstance(other, Cost):
            return NotImplemented
        kw = {f.name: getattr(self, f.name) + getattr(other, f.name)
              for f in fields(self) if f.name not in ("peak_bytes", "per_op")}
        per_op = dict(self.per_op)
        for name, c in other.per_op.items():
            per_op[name] = per_op[name] + c if name in per_op else c
        return Cost(**kw, peak_bytes=max(self.peak_bytes, other.peak_bytes), per_op=per_op)

    def table(self, *, top: int | None = None) -> str:
        """A profiler-like table: one row per op, most flops first, then the total."""
        head = ("op", "calls", "flops", "transc.", "bytes read", "bytes written", "allocs",
                "live after", "% flops")
        rows = []
        items = sorted(self.per_op.items(),
                       key=lambda kv: (-kv[1].flops, -kv[1].transcendentals, -kv[1].bytes_written, kv[0]))
        if top is not None and len(items) > top:
            items = items[:top]
        total = self.flops or 1
        for name, c in items:
            rows.append((name, str(c.calls), _si(c.flops), _si(c.transcendentals), _iec(c.bytes_read),
                         _iec(c.bytes_written), str(c.allocations), _iec(c.peak_bytes),
                         f"{100.0 * c.flops / total:.1f}"))
        rows.append(("TOTAL", str(self.calls), _si(self.flops), _si(self.transcendentals),
                     _iec(self.bytes_read), _iec(self.bytes_written), str(self.allocations),
                     _iec(self.peak_bytes), "100.0" if self.flops else "0.0"))
        widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
        line = lambda r: "  ".join(  # noqa: E731
            (r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i])) for i in range(len(r)))
        out = [line(head), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in rows[:-1]]
        if rows[:-1]:
            out.append("  ".join("-" * w for w in widths))
        out.append(line(rows[-1]))
        out.append(f"flops {self.flops:,}  transcendentals {self.transcendentals:,}  bytes read "
                   f"{self.bytes_read:,}  bytes written {self.bytes_written:,}  peak live bytes "
                   f"{self.peak_bytes:,}  allocations {self.allocations:,}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _si(x: int) -> str:
    for div, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return str(x)


def _iec(x: int) -> str:
    for div, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x}B"


class Tally:
    """A helper for closed-form *byte* models: add each op's bytes as the code performs it.

    ``op(out, *reads)`` is one op that allocates an array of ``out`` bytes and reads arrays of
    ``reads`` bytes (the counting conventions above); ``inplace(target, *reads)`` an in-place op
    (no allocation); ``read(n)`` adds reads without an allocation
    (``bool(x)``...). ``mark()`` / ``since(mark)`` give the bytes allocated between two points,
    which closed forms use to bound the peak. Flops are not tallied: closed forms state them as
    formulas.
    """

    __slots__ = ("bytes_read", "bytes_written", "allocations")

    def __init__(self) -> None:
        self.bytes_read = 0
        self.bytes_written = 0
        self.allocations = 0

    def op(self, out: int, *reads: int) -> int:
        self.bytes_read += sum(reads)
        self.bytes_written += out
        self.allocations += 1
        return out

    def read(self, nbytes: int) -> None:
        self.bytes_read += nbytes

    def inplace(self, target: int, *reads: int) -> int:
        """One in-place op (``x -= y``...) on an array of ``target`` bytes: reads it and ``reads``,
        writes it, allocates nothing; returns 0."""
        self.bytes_read += target + sum(reads)
        self.bytes_written += target
        return 0

    def mark(self) -> int:
        return self.bytes_written

    def since(self, mark: int) -> int:
        return self.bytes_written - mark


# ------------------------------------------------------------------------------------------------
# Conventional FLOP counts of the linear-algebra decompositions
# ------------------------------------------------------------------------------------------------

def _rnd(x: Fraction | int) -> int:
    """Round half up to an integer (the formulas below have thirds)."""
    return math.floor(Fraction(x) + Fraction(1, 2))


def linalg_flops(op: str, m: int, n: int | None = None, **params: Any) -> tuple[int, int]:
    r"""Conventional ``(flops, transcendentals)`` of one ``m x n`` matrix (``n = m`` if omitted).

    These are the dense-algorithm totals of Golub & Van Loan, *Matrix Computations* (4th ed., 2013),
    used by the counting namespace for every matrix of a stack and by closed-form cost models, so
    that the two agree exactly. They are a *convention* (the backend's LAPACK may block, iterate a
    different number of times or take another route); each value is rounded half up to an integer
    once, after the whole formula is evaluated. With ``k = min(m, n)``, ``M = max(m, n)``,
    ``N = min(m, n)``:

    ===============================  ===============================================  ==========
    op                               flops                                            transc.
    ===============================  ===============================================  ==========
    ``cholesky`` (n x n)             ``n^3 / 3``                                      ``n`` sqrt
    ``inv`` (n x n)                  ``2 n^3`` (LU ``2n^3/3`` + inversion ``4n^3/3``)  0
    ``solve`` (n x n, ``nrhs``)      ``2 n^3 / 3 + 2 n^2 nrhs`` (LU + two triangular  0
                                     solves)
    ``det`` (n x n)                  ``2 n^3 / 3 + n`` (LU, product of the pivots)     0
    ``slogdet`` (n x n)              ``2 n^3 / 3 + n`` (LU, sum of logs)               ``n`` log
    ``qr`` ``mode="reduced"``        ``4mnk - 2(m+n)k^2 + 4k^3/3`` (Householder R;     ``k`` sqrt
                                     ``2mn^2 - 2n^3/3`` for ``m >= n``) ``+ 2mk^2 -
                                     2k^3/3`` (thin Q, backward accumulation)
    ``qr`` ``mode="complete"``       R as above ``+ 4m^2k - 4mk^2 + 4k^3/3`` (full Q)  ``k`` sqrt
    ``qr`` ``mode="r"``              R as above                                       ``k`` sqrt
    ``eigh`` (n x n)                 ``9 n^3`` (tridiagonalisation + symmetric QR      0
                                     with eigenvectors)
    ``eigvalsh`` (n x n)             ``4 n^3 / 3``                                    0
    ``eig`` / ``eigvals`` (n x n)    ``25 n^3`` / ``10 n^3`` (Hessenberg + Francis QR) 0
    ``svd`` ``full_matrices=False``  ``6 M N^2 + 20 N^3`` (R-SVD, U1 S V)              0
    ``svd`` ``full_matrices=True``   ``4 M^2 N + 22 N^3`` (R-SVD, U S V)               0
    ``svdvals``                      ``4 M N^2 - 4 N^3 / 3`` (Golub-Kahan, S only)     0
    ``pinv``                         ``svd`` (thin) ``+ 2 m n k + n k + k``: the       0
                                     product ``V diag(1/s) U^T``, the column scaling
                                     and the reciprocals (the ``rtol`` cut-off's
                                     comparisons are free)
    ``matrix_rank``                  ``svdvals + k`` (max and tolerance)              0
    ``matrix_power`` (n x n, ``p``)  ``(floor(log2|p|) + popcount|p| - 1) 2 n^3``     0
                                     (binary powering), ``+ 2 n^3`` when ``p < 0``
                                     (``inv``); 0 for ``p`` in ``{0, 1}``
    ===============================  ===============================================  ==========

    Iterative decompositions (eigh, svd) count no transcendentals: their square roots and the number
    of QR sweeps are folded into the conventional constant.
    """
    n = m if n is None else n
    k, big, small = min(m, n), max(m, n), min(m, n)
    F = Fraction
    if op == "cholesky":
        return _rnd(F(n**3, 3)), n
    if op == "inv":
        return 2 * n**3, 0
    if op == "solve":
        nrhs = int(params.get("nrhs", 1))
        return _rnd(F(2 * n**3, 3) + 2 * n**2 * nrhs), 0
    if op == "det":
        return _rnd(F(2 * n**3, 3) + n), 0
    if op == "slogdet":
        return _rnd(F(2 * n**3, 3) + n), n
    if op == "qr":
        mode = params.get("mode", "reduced")
        r_cost = 4 * m * n * k - 2 * (m + n) * k**2 + F(4 * k**3, 3)
        if mode == "reduced":
            return _rnd(r_cost + 2 * m * k**2 - F(2 * k**3, 3)), k
        if mode == "complete":
            return _rnd(r_cost + 4 * m**2 * k - 4 * m * k**2 + F(4 * k**3, 3)), k
        if mode == "r":
            return _rnd(r_cost), k
        msg = f"linalg.qr(mode={mode!r}) is not supported by the counting namespace"
        raise NotImplementedError(msg)
    if op == "eigh":
        return 9 * n**3, 0
    if op == "eigvalsh":
        return _rnd(F(4 * n**3, 3)), 0
    if op == "eig":
        return 25 * n**3, 0
    if op == "eigvals":
        return 10 * n**3, 0
    if op == "svd":
        if params.get("full_matrices", True):
            return 4 * big**2 * small + 22 * small**3, 0
        return 6 * big * small**2 + 20 * small**3, 0
    if op == "svdvals":
        return _rnd(4 * big * small**2 - F(4 * small**3, 3)), 0
    if op == "pinv":
        return linalg_flops("svd", m, n, full_matrices=False)[0] + 2 * m * n * k + n * k + k, 0
    if op == "matrix_rank":
        return linalg_flops("svdvals", m, n)[0] + k, 0
    if op == "matrix_power":
        p = int(params["p"])
        a = abs(p)
        mults = 0 if a <= 1 else (a.bit_length() - 1) + bin(a).count("1") - 1
        return mults * 2 * n**3 + (2 * n**3 if p < 0 else 0), 0
    msg = f"linalg_flops has no formula for {op!r}"
    raise NotImplementedError(msg)


# ------------------------------------------------------------------------------------------------
# The counter (one per ``count()`` context) and the storage records
# ------------------------------------------------------------------------------------------------

class _Counter:
    __slots__ = ("ops", "live", "peak", "__weakref__")

    def __init__(self) -> None:
        self.ops: dict[str, list[int]] = {}
        self.live = 0
        self.peak = 0

    def record(self, name: str, flops: int, trans: int, read: int, written: int, allocs: int) -> None:
        e = self.ops.get(name)
        if e is None:
            e = self.ops[name] = [0, 0, 0, 0, 0, 0, 0]
        e[0] += 1
        e[1] += flops
        e[2] += trans
        e[3] += read
        e[4] += written
        e[5] += allocs
        if self.live > e[6]:
            e[6] = self.live

    def alloc(self, nbytes: int) -> None:
        self.live += nbytes
        if self.live > self.peak:
            self.peak = self.live

    def release(self, nbytes: int) -> None:
        self.live -= nbytes

    def snapshot(self) -> Cost:
        per_op = {name: Cost(flops=e[1], transcendentals=e[2], bytes_read=e[3], bytes_written=e[4],
                             allocations=e[5], peak_bytes=e[6], calls=e[0])
                  for name, e in self.ops.items()}
        tot = [sum(e[i] for e in self.ops.values()) for i in range(6)]
        return Cost(flops=tot[1], transcendentals=tot[2], bytes_read=tot[3], bytes_written=tot[4],
                    allocations=tot[5], peak_bytes=self.peak, per_op=per_op, calls=tot[0])


class _Storage:
    """The storage behind a counted array and all its views: its bytes join the live total when it
    is made and leave it in its finalizer (``__del__``), when the last view of it dies."""

    __slots__ = ("counter", "nbytes")

    def __init__(self, counter: _Counter, nbytes: int) -> None:
        self.counter = counter
        self.nbytes = nbytes
        counter.live += nbytes
        if counter.live > counter.peak:
            counter.peak = counter.live

    def __del__(self) -> None:
        self.counter.live -= self.nbytes


def _new_storage(counter: _Counter, nbytes: int) -> _Storage:
    return _Storage(counter, nbytes)


_SCALARS = (bool, int, float, complex)


def _is_foreign_array(x: Any) -> bool:
    """An array of some library that is not a counted array (python scalars are not arrays)."""
    if isinstance(x, _SCALARS) or isinstance(x, type):
        return False
    return (hasattr(x, "__array_namespace__") or hasattr(x, "__dlpack__")
            or hasattr(x, "__array_interface__") or hasattr(x, "__cuda_array_interface__"))


def _describe(x: Any) -> str:
    t = type(x)
    return f"{t.__module__}.{t.__name__} of shape {tuple(getattr(x, 'shape', ()))}"


# ------------------------------------------------------------------------------------------------
# Counted arrays
# ------------------------------------------------------------------------------------------------

class CountedArray:
    """An array of a :class:`CountingNamespace`: the backend array plus its storage record.

    Carries the array API's attributes and operators (``__array_namespace__``, ``.device``,
    ``.dtype``, ``.shape``, ``.ndim``, ``.size``, ``.mT``, ``.T``, ``to_device``, indexing,
    assignment, every arithmetic / comparison / logical / bitwise operator with its reflected and
    in-place forms, and the conversions ``bool() float() int() complex() operator.index()``) and
    nothing else: no ``__array__``, no iteration, no ``__dlpack__``.
    """

    __slots__ = ("_a", "_ns", "_st", "__weakref__")
    __array_ufunc__ = None  # NumPy defers ``ndarray op counted`` to our reflected operator
    __array_priority__ = 1000

    def __init__(self, a: Any, ns: CountingNamespace, storage: _Storage | None) -> None:
        self._a = a
        self._ns = ns
        self._st = storage

    # -- attributes --------------------------------------------------------------------------
    def __array_namespace__(self, api_version: str | None = None) -> CountingNamespace:
        return self._ns

    @property
    def dtype(self) -> Any:
        return self._a.dtype

    @property
    def device(self) -> Any:
        return _device(self._a)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._a.shape)

    @property
    def ndim(self) -> int:
        return len(self._a.shape)

    @property
    def size(self) -> int:
        return math.prod(self._a.shape)

    @property
    def mT(self) -> CountedArray:  # noqa: N802
        return self._ns._call("matrix_transpose", self._ns._xp.matrix_transpose, (self,), {}, _VIEW)

    @property
    def T(self) -> CountedArray:  # noqa: N802
        return self._ns._call("T", lambda a: a.T, (self,), {}, _VIEW)

    def to_device(self, device: Any, /, *, stream: Any = None) -> CountedArray:
        kw = {} if stream is None else {"stream": stream}
        return self._ns._call("to_device", lambda a, d: a.to_device(d, **kw) if hasattr(a, "to_device")
                              else self._ns._xp.asarray(a, device=d, copy=True), (self, device), {}, _FREE)

    def __repr__(self) -> str:
        return f"CountedArray({self._a!r})"

    # -- not part of the array API here ------------------------------------------------------
    def __iter__(self) -> Any:
        msg = "iterating over a counted array is not supported (not in the array API); index explicitly"
        raise TypeError(msg)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        msg = "__dlpack__ is not supported by the counting namespace (it would leave the count)"
        raise NotImplementedError(msg)

    def __dlpack_device__(self) -> Any:
        msg = "__dlpack_device__ is not supported by the counting namespace"
        raise NotImplementedError(msg)

    # -- indexing ----------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> CountedArray:
        ns = self._ns
        bkey, idx_arrays, advanced = ns._unwrap_key(key, "__getitem__")
        res = self._a[bkey]
        if not advanced:
            ns._counter.record("getitem", 0, 0, 0, 0, 0)
            return CountedArray(res, ns, self._st)
        out_bytes = ns._nbytes(res)
        read = out_bytes + sum(ns._nbytes(i) for i in idx_arrays)
        ns._counter.record("getitem (advanced)", 0, 0, read, out_bytes, 1)
        return CountedArray(res, ns, _new_storage(ns._counter, out_bytes))

    def __setitem__(self, key: Any, value: Any) -> None:
        ns = self._ns
        bkey, idx_arrays, _ = ns._unwrap_key(key, "__setitem__")
        bval = ns._unwrap(value, "value", "__setitem__")
        region = self._a[bkey]
        written = ns._nbytes(region)
        del region
        read = (ns._nbytes(bval) if type(value) is CountedArray else 0) + sum(ns._nbytes(i) for i in idx_arrays)
        self._a[bkey] = bval
        ns._counter.record("setitem", 0, 0, read, written, 0)

    # -- conversions -------------------------------------------------------------------------
    def _convert(self, name: str, fn: Callable[[Any], Any]) -> Any:
        out = fn(self._a)
        self._ns._counter.record(name, 0, 0, self._ns._nbytes(self._a), 0, 0)
        return out

    def __bool__(self) -> bool:
        return self._convert("__bool__", bool)

    def __float__(self) -> float:
        return self._convert("__float__", float)

    def __int__(self) -> int:
        return self._convert("__int__", int)

    def __complex__(self) -> complex:
        return self._convert("__complex__", complex)

    def __index__(self) -> int:
        return self._convert("__index__", operator.index)

    # -- unary operators ---------------------------------------------------------------------
    def __neg__(self) -> CountedArray:
        return self._ns._call("negative", operator.neg, (self,), {}, _ARITH)

    def __pos__(self) -> CountedArray:
        return self._ns._call("positive", operator.pos, (self,), {}, _FREE)

    def __abs__(self) -> CountedArray:
        return self._ns._call("abs", operator.abs, (self,), {}, _ARITH)

    def __invert__(self) -> CountedArray:
        return self._ns._call("bitwise_invert", operator.invert, (self,), {}, _FREE)


# (method name, op name, operator function, rule); reflected and in-place forms are generated.
_BINARY_OPERATORS = [
    ("add", "add", operator.add, "arith"),
    ("sub", "subtract", operator.sub, "arith"),
    ("mul", "multiply", operator.mul, "arith"),
    ("truediv", "divide", operator.truediv, "arith"),
    ("floordiv", "floor_divide", operator.floordiv, "arith"),
    ("mod", "remainder", operator.mod, "arith"),
    ("pow", "pow", operator.pow, "trans"),
    ("matmul", "matmul", operator.matmul, "matmul"),
    ("and", "bitwise_and", operator.and_, "free"),
    ("or", "bitwise_or", operator.or_, "free"),
    ("xor", "bitwise_xor", operator.xor, "free"),
    ("lshift", "bitwise_left_shift", operator.lshift, "free"),
    ("rshift", "bitwise_right_shift", operator.rshift, "free"),
]
_INPLACE = {"add": operator.iadd, "sub": operator.isub, "mul": operator.imul,
            "truediv": operator.itruediv, "floordiv": operator.ifloordiv, "mod": operator.imod,
            "pow": operator.ipow, "matmul": operator.imatmul, "and": operator.iand,
            "or": operator.ior, "xor": operator.ixor, "lshift": operator.ilshift,
            "rshift": operator.irshift}
_COMPARISONS = [("eq", "equal", operator.eq), ("ne", "not_equal", operator.ne),
                ("lt", "less", operator.lt), ("le", "less_equal", operator.le),
                ("gt", "greater", operator.gt), ("ge", "greater_equal", operator.ge)]


def _make_binary(op_name: str, fn: Callable[[Any, Any], Any], rule_name: str) -> tuple[Any, Any]:
    def forward(self: CountedArray, other: Any) -> Any:
        ns = self._ns
        if not _operand_ok(other):
            return NotImplemented
        return ns._call(op_name, fn, (self, other), {}, _RULES[rule_name], names=("self", "other"))

    def reflected(self: CountedArray, other: Any) -> Any:
        ns = self._ns
        if not _operand_ok(other):
            return NotImplemented
        return ns._call(op_name, fn, (other, self), {}, _RULES[rule_name], names=("other", "self"))

    return forward, reflected


def _operand_ok(other: Any) -> bool:
    # counted arrays, python scalars and foreign arrays (which raise a TypeError naming them) are
    # handled; anything else lets Python try the other operand's method.
    return type(other) is CountedArray or isinstance(other, _SCALARS) or _is_foreign_array(other)


def _make_inplace(op_name: str, ifn: Callable[[Any, Any], Any], rule_name: str) -> Any:
    def inplace(self: CountedArray, other: Any) -> Any:
        if not _operand_ok(other):
            return NotImplemented
        return self._ns._inplace(op_name, ifn, self, other, _RULES[rule_name])

    return inplace


# ------------------------------------------------------------------------------------------------
# Counting rules: rule(ns, operands, result, args, kwargs) -> (flops, transcendentals)
# ------------------------------------------------------------------------------------------------

_VIEW = object()  # marker: a view op (no bytes, no allocation, shares the first operand's storage)


def _free(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    return 0, 0


def _arith(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    return (ns._size(res), 0) if ns._is_float(res.dtype) else (0, 0)


def _trans(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    return (0, ns._size(res)) if ns._is_float(res.dtype) else (0, 0)


def _matmul(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    if not ns._is_float(res.dtype):
        return 0, 0
    return 2 * ns._size(res) * args[0].shape[-1], 0


_FREE, _ARITH, _TRANS, _MATMUL = _free, _arith, _trans, _matmul
_RULES = {"free": _FREE, "arith": _ARITH, "trans": _TRANS, "matmul": _MATMUL}


def _reduced(ns: CountingNamespace, x: Any, res: Any) -> tuple[int, int]:
    """(M, L): outputs and reduced length of a reduction of ``x`` into ``res``."""
    n_in, m_out = ns._size(x), ns._size(res)
    return m_out, (n_in // m_out if m_out else 0)


def _reduction(extra_per_out: int = 0) -> Callable[..., tuple[int, int]]:
    def rule(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
        x = args[0]
        if not ns._is_float(x.dtype):
            return 0, 0
        m, length = _reduced(ns, x, res)
        return m * max(length - 1, 0) + (extra_per_out * m if length else 0), 0
    return rule


def _var_rule(transc: bool) -> Callable[..., tuple[int, int]]:
    def rule(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
        x = args[0]
        if not ns._is_float(x.dtype):
            return 0, 0
        return 4 * ns._size(x), (ns._size(res) if transc else 0)
    return rule


def _cumulative(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    x = args[0]
    if not ns._is_float(x.dtype):
        return 0, 0
    axis = kw.get("axis")
    if axis is None:
        if len(x.shape) > 1:
            return 0, 0  # the backend raises for ndim > 1 without axis
        axis = 0
    length = x.shape[axis]
    lanes = ns._size(x) // length if length else 0
    return lanes * max(length - 1, 0), 0


def _vecdot(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    if not ns._is_float(res.dtype):
        return 0, 0
    axis = kw.get("axis", -1)
    a, b = args[0], args[1]
    length = max(a.shape[axis], b.shape[axis])
    return 2 * ns._size(res) * length, 0


def _tensordot(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    if not ns._is_float(res.dtype):
        return 0, 0
    a = args[0]
    axes = kw.get("axes", args[2] if len(args) > 2 else 2)
    if isinstance(axes, int):
        contracted = a.shape[len(a.shape) - axes:] if axes else ()
    else:
        contracted = [a.shape[i] for i in axes[0]]
    return 2 * ns._size(res) * math.prod(contracted), 0


def _per_out(k: int) -> Callable[..., tuple[int, int]]:
    def rule(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
        return (k * ns._size(res), 0) if ns._is_float(res.dtype) else (0, 0)
    return rule


def _trace(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    x = args[0]
    if not ns._is_float(x.dtype):
        return 0, 0
    r, c = x.shape[-2], x.shape[-1]
    off = kw.get("offset", 0)
    length = max(0, min(r, c - off)) if off >= 0 else max(0, min(r + off, c))
    return ns._size(res) * max(length - 1, 0), 0


def _norm_counts(x_size: int, m: int, length: int, ord_: Any, where: str) -> tuple[int, int]:
    base = x_size + m * max(length - 1, 0)
    if ord_ == 2:
        return base, m
    if ord_ in (1, math.inf, -math.inf):
        return base, 0
    if isinstance(ord_, (int, float)) and not isinstance(ord_, bool) and math.isfinite(ord_) and ord_ > 0:
        return base, x_size + m
    msg = f"{where}(ord={ord_!r}) is not supported by the counting namespace"
    raise NotImplementedError(msg)


def _vector_norm(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    x = args[0]
    if not ns._is_float(x.dtype):
        return 0, 0
    m, length = _reduced(ns, x, res)
    return _norm_counts(ns._size(x), m, length, kw.get("ord", 2), "linalg.vector_norm")


def _matrix_norm_counts(ns: CountingNamespace, x: Any, ord_: Any, where: str) -> tuple[int, int]:
    r, c = x.shape[-2], x.shape[-1]
    stack = math.prod(x.shape[:-2])
    n_el = ns._size(x)
    k = min(r, c)
    if ord_ == "fro":
        return _norm_counts(n_el, stack, r * c, 2, where)
    if ord_ in ("nuc", 2, -2):
        return stack * (linalg_flops("svdvals", r, c)[0] + max(k - 1, 0)), 0
    if ord_ in (1, -1):
        return n_el + stack * c * max(r - 1, 0) + stack * max(c - 1, 0), 0
    if ord_ in (math.inf, -math.inf):
        return n_el + stack * r * max(c - 1, 0) + stack * max(r - 1, 0), 0
    msg = f"{where}(ord={ord_!r}) is not supported by the counting namespace"
    raise NotImplementedError(msg)


def _matrix_norm(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    x = args[0]
    if not ns._is_float(x.dtype):
        return 0, 0
    return _matrix_norm_counts(ns, x, kw.get("ord", "fro"), "linalg.matrix_norm")


def _norm(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    """NumPy's ``linalg.norm(x, ord=None, axis=None, keepdims=False)``."""
    x = args[0]
    if not ns._is_float(x.dtype):
        return 0, 0
    ord_ = kw.get("ord", args[1] if len(args) > 1 else None)
    axis = kw.get("axis", args[2] if len(args) > 2 else None)
    nd = len(x.shape)
    if axis is None and (ord_ is None or nd == 1):
        return _norm_counts(ns._size(x), 1, ns._size(x), 2 if ord_ is None else ord_, "linalg.norm")
    if isinstance(axis, int) or (axis is None and nd == 1):
        m, length = _reduced(ns, x, res)
        return _norm_counts(ns._size(x), m, length, 2 if ord_ is None else ord_, "linalg.norm")
    axes = tuple(range(nd))[-2:] if axis is None else tuple(a % nd for a in axis)
    if len(axes) != 2:
        msg = f"linalg.norm(axis={axis!r}) is not supported by the counting namespace"
        raise NotImplementedError(msg)
    perm = [i for i in range(nd) if i not in axes] + list(axes)
    moved = _ShapeOnly(tuple(x.shape[i] for i in perm))
    return _matrix_norm_counts(ns, moved, "fro" if ord_ is None else ord_, "linalg.norm")


class _ShapeOnly:
    __slots__ = ("shape",)

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def _stack_of(x: Any) -> tuple[int, int, int]:
    return math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1]


def _decomp(op: str, *, param: Callable[[Any, Any], dict[str, Any]] | None = None) -> Callable[..., tuple[int, int]]:
    def rule(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
        x = args[0]
        if not ns._is_float(x.dtype):
            return 0, 0
        stack, r, c = _stack_of(x)
        f, t = linalg_flops(op, r, c, **(param(args, kw) if param else {}))
        return stack * f, stack * t
    return rule


def _solve_rule(ns: CountingNamespace, ops: Sequence[Any], res: Any, args: Any, kw: Any) -> tuple[int, int]:
    a, b = args[0], args[1]
    if not ns._is_float(res.dtype):
        return 0, 0
    n = a.shape[-1]
    if len(b.shape) == 1:
        nrhs, stack = 1, max(math.prod(a.shape[:-2]), 1)
    else:
        nrhs = b.shape[-1]
        stack = ns._size(res) // (n * nrhs) if n * nrhs else 0
    return stack * linalg_flops("solve", n, n, nrhs=nrhs)[0], 0


def _svd_param(args: Any, kw: Any) -> dict[str, Any]:
    return {"full_matrices": kw.get("full_matrices", True)}


def _qr_param(args: Any, kw: Any) -> dict[str, Any]:
    return {"mode": kw.get("mode", "reduced")}


def _power_param(args: Any, kw: Any) -> dict[str, Any]:
    return {"p": args[1] if len(args) > 1 else kw["n"]}


# ------------------------------------------------------------------------------------------------
# The counting namespace
# ------------------------------------------------------------------------------------------------

_ARITH_FUNCS = ("abs", "negative", "square", "sign", "floor", "ceil", "round", "trunc", "reciprocal",
                "add", "subtract", "multiply", "divide", "floor_divide", "remainder", "maximum",
                "minimum", "copysign", "nextafter", "clip")
_TRANS_FUNCS = ("exp", "expm1", "log", "log1p", "log2", "log10", "sqrt", "sin", "cos", "tan", "asin",
                "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "pow", "atan2",
                "hypot", "logaddexp")
_FREE_FUNCS = ("isfinite", "isnan", "isinf", "signbit", "logical_not", "bitwise_invert", "positive",
               "conj", "real", "imag", "equal", "not_equal", "less", "less_equal", "greater",
               "greater_equal", "logical_and", "logical_or", "logical_xor", "bitwise_and",
               "bitwise_or", "bitwise_xor", "bitwise_left_shift", "bitwise_right_shift", "where",
               "astype", "any", "all", "count_nonzero", "sort", "argsort", "searchsorted", "nonzero",
               "unique_all", "unique_counts", "unique_inverse", "unique_values", "isin",
               "concat", "stack", "flip", "roll", "repeat", "tile",
               "arange", "empty", "empty_like", "eye", "full", "full_like", "linspace", "meshgrid",
               "ones", "ones_like", "zeros", "zeros_like", "tril", "triu", "from_dlpack")
_VIEW_FUNCS = ("permute_dims", "matrix_transpose", "expand_dims", "squeeze", "moveaxis", "broadcast_to",
               "broadcast_arrays", "unstack")
_GATHER_FUNCS = ("take", "take_along_axis")
_SPECIAL_FUNCS: dict[str, Callable[..., tuple[int, int]]] = {
    "matmul": _MATMUL,
    "vecdot": _vecdot,
    "tensordot": _tensordot,
    "sum": _reduction(),
    "prod": _reduction(),
    "max": _reduction(),
    "min": _reduction(),
    "argmax": _reduction(),
    "argmin": _reduction(),
    "mean": _reduction(1),
    "var": _var_rule(False),
    "std": _var_rule(True),
    "cumulative_sum": _cumulative,
    "cumulative_prod": _cumulative,
    "diff": _per_out(1),
}
# functions that touch no array data: passed to the backend, not recorded
_META_FUNCS = ("isdtype", "finfo", "iinfo", "result_type", "can_cast", "broadcast_shapes",
               "__array_namespace_info__")
_CONSTANTS = ("e", "inf", "nan", "pi", "newaxis", "__array_api_version__")
_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "bfloat16", "float32", "float64", "complex64", "complex128")

_LINALG_SPECIAL: dict[str, Callable[..., tuple[int, int]]] = {
    "matmul": _MATMUL,
    "vecdot": _vecdot,
    "tensordot": _tensordot,
    "outer": _per_out(1),
    "cross": _per_out(3),
    "trace": _trace,
    "vector_norm": _vector_norm,
    "matrix_norm": _matrix_norm,
    "norm": _norm,
    "cholesky": _decomp("cholesky"),
    "inv": _decomp("inv"),
    "solve": _solve_rule,
    "det": _decomp("det"),
    "slogdet": _decomp("slogdet"),
    "qr": _decomp("qr", param=_qr_param),
    "eigh": _decomp("eigh"),
    "eigvalsh": _decomp("eigvalsh"),
    "eig": _decomp("eig"),
    "eigvals": _decomp("eigvals"),
    "svd": _decomp("svd", param=_svd_param),
    "svdvals": _decomp("svdvals"),
    "pinv": _decomp("pinv"),
    "matrix_rank": _decomp("matrix_rank"),
    "matrix_power": _decomp("matrix_power", param=_power_param),
}
_LINALG_VIEW = ("matrix_transpose", "diagonal")

#: Every function name the counting namespace supports (where the wrapped backend has it).
SUPPORTED: frozenset[str] = frozenset(
    (*_ARITH_FUNCS, *_TRANS_FUNCS, *_FREE_FUNCS, *_VIEW_FUNCS, *_GATHER_FUNCS, *_SPECIAL_FUNCS,
     "reshape", "asarray", *_META_FUNCS, *_CONSTANTS, *_DTYPES, "linalg",
     *(f"linalg.{n}" for n in (*_LINALG_SPECIAL, *_LINALG_VIEW))))


class _Sub:
    """A sub-namespace (``linalg``) with explicitly listed functions."""

    def __init__(self, name: str, backend: Any) -> None:
        self.__name__ = name
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(f"{self.__name__}.{name}", hasattr(self._backend, name))


def _missing(qualname: str, backend_has_it: bool) -> Any:
    if backend_has_it:
        msg = (f"{qualname} is not supported by the counting namespace (refattn.cost): it has no "
               "counting rule, so running it would miscount; add it to refattn/cost.py")
        raise NotImplementedError(msg)
    raise AttributeError(f"the wrapped namespace has no {qualname!r}")


class CountingNamespace:
    """An array-API namespace that runs every op on ``backend`` and records its cost.

    Made by :func:`count` (one per backend namespace and count context); its arrays are
    :class:`CountedArray`. Functions are listed explicitly (see :data:`SUPPORTED`); a name the
    backend has but the counter does not know raises ``NotImplementedError`` naming it.
    """

    _serial = 0
    #: no backend primitives (refattn._primitives): the counts are of the generic maths
    refattn_primitives: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, backend: Any, counter: _Counter) -> None:
        CountingNamespace._serial += 1
        self._xp = backend
        self._counter = counter
        # array_api_compat tells namespaces apart by __name__: make it unique per context.
        self.__name__ = f"refattn.cost.counting[{getattr(backend, '__name__', type(backend).__name__)}]" \
                        f"#{CountingNamespace._serial}"
        self._float_cache: dict[Any, bool] = {}
        self._itemsize_cache: dict[Any, int] = {}
        for name in (*_CONSTANTS, *_DTYPES):
            if hasattr(backend, name):
                setattr(self, name, getattr(backend, name))
        for name in _META_FUNCS:
            if hasattr(backend, name):
                setattr(self, name, self._meta(getattr(backend, name)))
        table: list[tuple[str, Any]] = [(n, _ARITH) for n in _ARITH_FUNCS]
        table += [(n, _TRANS) for n in _TRANS_FUNCS]
        table += [(n, _FREE) for n in _FREE_FUNCS]
        table += [(n, _VIEW) for n in _VIEW_FUNCS]
        table += list(_SPECIAL_FUNCS.items())
        for name, rule in table:
            if hasattr(backend, name):
                setattr(self, name, self._op(name, getattr(backend, name), rule))
        for name in _GATHER_FUNCS:
            if hasattr(backend, name):
                setattr(self, name, self._gather(name, getattr(backend, name)))
        if hasattr(backend, "reshape"):
            self.reshape = self._reshape
        if hasattr(backend, "asarray"):
            self.asarray = self._asarray
        bl = getattr(backend, "linalg", None)
        if bl is not None:
            self.linalg = _Sub(f"{self.__name__}.linalg", bl)
            for name, rule in _LINALG_SPECIAL.items():
                if hasattr(bl, name):
                    setattr(self.linalg, name, self._op(f"linalg.{name}", getattr(bl, name), rule))
            for name in _LINALG_VIEW:
                if hasattr(bl, name):
                    setattr(self.linalg, name, self._op(f"linalg.{name}", getattr(bl, name), _VIEW))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name.startswith("_"):
            raise AttributeError(name)
        return _missing(name, hasattr(self._xp, name))

    def __repr__(self) -> str:
        return f"<{self.__name__}>"

    # -- dtype helpers -----------------------------------------------------------------------
    def _is_float(self, dt: Any) -> bool:
        try:
            return self._float_cache[dt]
        except KeyError:
            r = bool(self._xp.isdtype(dt, ("real floating", "complex floating")))
            self._float_cache[dt] = r
            return r
        except TypeError:  # unhashable dtype
            return bool(self._xp.isdtype(dt, ("real floating", "complex floating")))

    def _itemsize(self, dt: Any) -> int:
        try:
            return self._itemsize_cache[dt]
        except KeyError:
            pass
        size = getattr(dt, "itemsize", None)
        if not isinstance(size, int):
            xp = self._xp
            if dt == xp.bool:
                size = 1
            elif xp.isdtype(dt, "integral"):
                size = xp.iinfo(dt).bits // 8
            elif xp.isdtype(dt, "complex floating"):
                size = 2 * (xp.finfo(dt).bits // 8)
            else:
                size = xp.finfo(dt).bits // 8
        self._itemsize_cache[dt] = size
        return size

    @staticmethod
    def _size(a: Any) -> int:
        return math.prod(a.shape)

    def _nbytes(self, a: Any) -> int:
        dt = a.dtype
        try:
            return math.prod(a.shape) * self._itemsize_cache[dt]
        except KeyError:
            return math.prod(a.shape) * self._itemsize(dt)

    # -- wrapping ----------------------------------------------------------------------------
    def _wrap_input(self, a: Any) -> CountedArray:
        return CountedArray(a, self, None)

    def _unwrap(self, x: Any, argname: Any, op: str, operands: list[Any] | None = None) -> Any:
        """The backend object behind ``x``; ``argname`` is a str or a lazy ``(names, index)``."""
        if type(x) is CountedArray:
            if x._ns is not self:
                msg = (f"{op}: argument {_name_of(argname)} is a counted array of another count "
                       f"context ({x._ns.__name__}, not {self.__name__})")
                raise TypeError(msg)
            if operands is not None:
                operands.append(x._a)
            return x._a
        if x is None or isinstance(x, _SCALARS):
            return x
        if isinstance(x, (list, tuple)):
            return type(x)(self._unwrap(e, f"{_name_of(argname)}[{i}]", op, operands) for i, e in enumerate(x))
        if _is_foreign_array(x):
            msg = (f"{op}: argument {_name_of(argname)} is an uncounted array ({_describe(x)}) mixed "
                   f"with counted ones; wrap every array with refattn.cost.count().wrap or pass it to "
                   "refattn.cost.measure")
            raise TypeError(msg)
        return x

    def _unwrap_key(self, key: Any, op: str) -> tuple[Any, list[Any], bool]:
        """Backend key, index arrays, and whether indexing is advanced (a gather: a copy)."""
        parts = key if isinstance(key, tuple) else (key,)
        out, arrays, advanced = [], [], False
        for i, p in enumerate(parts):
            if type(p) is CountedArray:
                out.append(self._unwrap(p, f"index[{i}]", op))
                arrays.append(p._a)
                advanced = True
            elif p is None or p is Ellipsis or isinstance(p, slice) or (isinstance(p, int) and not isinstance(p, bool)):
                out.append(p)
            elif hasattr(p, "__index__") and not isinstance(p, bool) and getattr(p, "ndim", 0) == 0 \
                    and not hasattr(p, "__array_namespace__"):
                out.append(operator.index(p))  # an integer-like scalar
            else:
                if isinstance(p, (bool, list)):
                    advanced = True
                elif _is_foreign_array(p) and getattr(p, "ndim", 0) == 0 and hasattr(p, "__index__"):
                    p = operator.index(p)  # a NumPy integer scalar
                out.append(self._unwrap(p, f"index[{i}]", op))
        bkey = tuple(out) if isinstance(key, tuple) else out[0]
        return bkey, arrays, advanced

    def _wrap_result(self, res: Any, operands: list[Any], wrappers: Sequence[Any],
                     storage: _Storage | None, view: bool) -> tuple[Any, int, int]:
        """Wrap ``res`` (an array, or a tuple/list/namedtuple of arrays). Returns
        ``(wrapped, bytes_written, allocations)``."""
        if isinstance(res, (tuple, list)):
            items, written, allocs = [], 0, 0
            for r in res:
                w, b, a = self._wrap_result(r, operands, wrappers, storage, view)
                items.append(w)
                written += b
                allocs += a
            if hasattr(type(res), "_make"):
                return type(res)._make(items), written, allocs
            return (type(res)(items) if type(res) in (list, tuple) else tuple(items)), written, allocs
        if res is None or isinstance(res, _SCALARS) and not hasattr(res, "dtype"):
            return res, 0, 0
        for w in wrappers:  # an op that hands back one of its inputs: no new array
            if type(w) is CountedArray and w._a is res:
                return w, 0, 0
        if view:
            return CountedArray(res, self, storage), 0, 0
        nbytes = self._nbytes(res)
        return CountedArray(res, self, _new_storage(self._counter, nbytes)), nbytes, 1

    def _call(self, name: str, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any],
              rule: Any, names: Sequence[str] | None = None) -> Any:
        operands: list[Any] = []
        bargs = []
        for i, a in enumerate(args):  # the common case inline: counted arrays of this namespace
            if type(a) is CountedArray and a._ns is self:
                operands.append(a._a)
                bargs.append(a._a)
            else:
                bargs.append(self._unwrap(a, (names or _POSNAMES.get(name), i, len(args)), name, operands))
        bkw = {k: self._unwrap(v, k, name, operands) for k, v in kwargs.items()} if kwargs else {}
        res = fn(*bargs, **bkw)
        if res is NotImplemented:
            return res
        if rule is _VIEW:
            if name == "broadcast_arrays":
                flat_in = [a for a in _flat(args) if type(a) is CountedArray]
                wrapped = [CountedArray(r, self, w._st) for r, w in zip(res, flat_in)]
                wrapped = type(res)(wrapped) if type(res) in (list, tuple) else tuple(wrapped)
            else:
                first = next((a for a in _flat(args) if type(a) is CountedArray), None)
                wrapped = self._wrap_result(res, operands, (), first._st if first is not None else None, True)[0]
            self._counter.record(name, 0, 0, 0, 0, 0)
            return wrapped
        nbytes = self._nbytes
        read = 0
        if name not in _NO_READ:
            for o in operands:
                read += nbytes(o)
        if isinstance(res, (tuple, list)):
            flops, trans = rule(self, operands, res[0] if res else None, bargs, bkw)
            wrapped, written, allocs = self._wrap_result(res, operands, (), None, False)
        else:
            flops, trans = rule(self, operands, res, bargs, bkw)
            if name in _MAY_RETURN_INPUT and any(type(w) is CountedArray and w._a is res for w in args):
                wrapped = next(w for w in args if type(w) is CountedArray and w._a is res)
                written = allocs = 0
            else:
                written, allocs = nbytes(res), 1
                wrapped = CountedArray(res, self, _Storage(self._counter, written))
        self._counter.record(name, flops, trans, read, written, allocs)
        return wrapped

    def _inplace(self, name: str, ifn: Callable[[Any, Any], Any], target: CountedArray, other: Any,
                 rule: Any) -> Any:
        operands: list[Any] = [target._a]
        b = self._unwrap(other, "other", f"{name} (in-place)", operands)
        res = ifn(target._a, b)
        if res is NotImplemented:
            return res
        flops, trans = rule(self, operands, res, [target._a, b], {})
        read = sum(self._nbytes(o) for o in operands)
        if res is target._a:
            self._counter.record(f"{name} (in-place)", flops, trans, read, self._nbytes(res), 0)
            return target
        wrapped, written, allocs = self._wrap_result(res, operands, (), None, False)
        self._counter.record(f"{name} (in-place)", flops, trans, read, written, allocs)
        return wrapped

    def _op(self, name: str, fn: Callable[..., Any], rule: Any) -> Callable[..., Any]:
        def op(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, fn, args, kwargs, rule)
        op.__name__ = op.__qualname__ = name
        op.__doc__ = f"Counted ``{name}`` of the wrapped namespace (see refattn.cost)."
        return op

    def _meta(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def meta(*args: Any, **kwargs: Any) -> Any:
            bargs = [self._unwrap(a, f"#{i}", getattr(fn, "__name__", "?")) for i, a in enumerate(args)]
            bkw = {k: self._unwrap(v, k, getattr(fn, "__name__", "?")) for k, v in kwargs.items()}
            return fn(*bargs, **bkw)
        meta.__name__ = getattr(fn, "__name__", "meta")
        return meta

    def _gather(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def gather(x: Any, indices: Any, /, **kwargs: Any) -> Any:
            bx = self._unwrap(x, "x", name)
            ops: list[Any] = []
            bi = self._unwrap(indices, "indices", name, ops)
            res = fn(bx, bi, **kwargs)
            nbytes = self._nbytes(res)
            self._counter.record(name, 0, 0, nbytes + sum(self._nbytes(o) for o in ops), nbytes, 1)
            return CountedArray(res, self, _new_storage(self._counter, nbytes))
        gather.__name__ = name
        return gather

    def _reshape(self, x: Any, /, shape: Any, **kwargs: Any) -> Any:
        rule = _FREE if kwargs.get("copy") else _VIEW
        return self._call("reshape", self._xp.reshape, (x, shape), kwargs, rule)

    def _asarray(self, obj: Any, /, **kwargs: Any) -> Any:
        if type(obj) is CountedArray or isinstance(obj, (list, tuple)) or obj is None or isinstance(obj, _SCALARS):
            return self._call("asarray", self._xp.asarray, (obj,), kwargs, _FREE)
        # converting a foreign array (host data) is a creation, not a mix
        res = self._xp.asarray(obj, **kwargs)
        nbytes = self._nbytes(res)
        self._counter.record("asarray", 0, 0, 0, nbytes, 1)
        return CountedArray(res, self, _new_storage(self._counter, nbytes))


# ops the standard allows to hand back their input (copy=False): then no new array is counted
_MAY_RETURN_INPUT = frozenset(("astype", "asarray", "to_device"))
_NO_READ = frozenset(("empty_like", "zeros_like", "ones_like", "full_like"))  # read metadata only
_POSNAMES = {
    "where": ("condition", "x1", "x2"), "concat": ("arrays",), "stack": ("arrays",),
    "broadcast_arrays": ("*arrays",), "meshgrid": ("*arrays",), "repeat": ("x", "repeats"),
    "clip": ("x", "min", "max"), "reshape": ("x", "shape"), "to_device": ("self", "device"),
    "asarray": ("obj",), "searchsorted": ("x1", "x2"),
}


def _name_of(where: Any) -> str:
    """An argument's name for messages: a str, or ``(names, index, nargs)`` resolved lazily."""
    if isinstance(where, str):
        return where
    names, i, nargs = where
    if names is None:
        names = ("x",) if nargs == 1 else tuple(f"x{j + 1}" for j in range(nargs))
    if names == ("*arrays",):
        return f"arrays[{i}]"
    if i < len(names):
        return names[i] if names[i] == "arrays" else f"{names[i]!r} (positional {i})"
    return f"#{i}"


def _flat(xs: Iterable[Any]) -> Iterable[Any]:
    for x in xs:
        if isinstance(x, (list, tuple)):
            yield from _flat(x)
        else:
            yield x


for _meth, _name, _fn, _rule in _BINARY_OPERATORS:
    _f, _r = _make_binary(_name, _fn, _rule)
    setattr(CountedArray, f"__{_meth}__", _f)
    setattr(CountedArray, f"__r{_meth}__", _r)
    setattr(CountedArray, f"__i{_meth}__", _make_inplace(_name, _INPLACE[_meth], _rule))
for _meth, _name, _fn in _COMPARISONS:
    setattr(CountedArray, f"__{_meth}__", _make_binary(_name, _fn, "free")[0])
CountedArray.__hash__ = None  # type: ignore[assignment]
del _meth, _name, _fn, _rule, _f, _r


# ------------------------------------------------------------------------------------------------
# count / measure / unwrap
# ------------------------------------------------------------------------------------------------

class count:  # noqa: N801 (a context manager used as ``with count() as c``)
    """Count the cost of everything computed on the arrays it wraps.

    >>> q, k, v = (xp.asarray(np.ones((4, 2))) for _ in range(3))
    >>> with refattn.cost.count() as c:
    ...     q, k, v = c.wrap((q, k, v))
    ...     out = refattn.softmax_attention(q, k, v)
    >>> c.cost.flops > 0
    True

    ``backend`` (optional: a :class:`refattn.backends.Backend` or an array namespace) fixes the
    namespace :meth:`namespace` returns with no argument. ``c.cost`` is the running total inside the
    block and the final :class:`Cost` after it.
    """

    def __init__(self, backend: Any = None) -> None:
        self._counter = _Counter()
        self._spaces: dict[int, CountingNamespace] = {}
        self._backend_xp = getattr(backend, "xp", backend)
        self._final: Cost | None = None

    def __enter__(self) -> count:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._final = self._counter.snapshot()

    @property
    def cost(self) -> Cost:
        return self._final if self._final is not None else self._counter.snapshot()

    def namespace(self, xp: Any = None) -> CountingNamespace:
        """The counting namespace around ``xp`` (default: the ``backend`` given to ``count``)."""
        xp = xp if xp is not None else self._backend_xp
        if xp is None:
            msg = "namespace() needs an array namespace (or count(backend) to have been given one)"
            raise TypeError(msg)
        xp = getattr(xp, "xp", xp)
        ns = self._spaces.get(id(xp))
        if ns is None:
            ns = self._spaces[id(xp)] = CountingNamespace(xp, self._counter)
        return ns

    def wrap(self, x: Any) -> Any:
        """Counted copies (not copies of the data: wrappers) of the arrays in ``x``.

        ``x`` is an array, or a tuple / list / dict / named tuple holding arrays (recursively); other
        values are returned unchanged. Wrapped inputs count as reads where used, never as live bytes.
        """
        if type(x) is CountedArray:
            return x
        if isinstance(x, _SCALARS) or x is None or isinstance(x, (str, bytes)):
            return x
        if isinstance(x, tuple) and hasattr(type(x), "_make"):
            return type(x)._make(self.wrap(e) for e in x)
        if isinstance(x, (tuple, list)):
            return type(x)(self.wrap(e) for e in x)
        if isinstance(x, dict):
            return {k: self.wrap(v) for k, v in x.items()}
        if _is_foreign_array(x):
            return self.namespace(_namespace(x))._wrap_input(x)
        return x


def unwrap(x: Any) -> Any:
    """The backend arrays behind counted arrays (recursively through tuples, lists and dicts)."""
    if type(x) is CountedArray:
        return x._a
    if isinstance(x, tuple) and hasattr(type(x), "_make"):
        return type(x)._make(unwrap(e) for e in x)
    if isinstance(x, (tuple, list)):
        return type(x)(unwrap(e) for e in x)
    if isinstance(x, dict):
        return {k: unwrap(v) for k, v in x.items()}
    return x


def measure(fn: Callable[..., Any], /, *args: Any, return_output: bool = False, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` on counted arrays and return its :class:`Cost`.

    Every array in ``args`` and in ``kwargs`` values (also inside tuples, lists, dicts and named
    tuples) is wrapped (:meth:`count.wrap`); other values pass unchanged. With
    ``return_output=True`` returns ``(cost, out)`` with ``out`` unwrapped to the backend's arrays
    (the name ``return_output`` is therefore reserved and not passed to ``fn``).

    Raises ``TypeError`` naming the argument when ``fn`` mixes counted arrays with arrays it did not
    receive through ``measure`` (e.g. a captured NumPy array), and ``NotImplementedError`` naming an
    op the counting namespace cannot count.
    """
    with count() as c:
        out = fn(*c.wrap(args), **c.wrap(kwargs))
    return (c.cost, unwrap(out)) if return_output else c.cost


# ------------------------------------------------------------------------------------------------
# Exponent fits and the tests' helper
# ------------------------------------------------------------------------------------------------

def _call_inputs(made: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], (tuple, list))
            and isinstance(made[1], dict)):
        return tuple(made[0]), dict(made[1])
    if isinstance(made, dict):
        return (), dict(made)
    if isinstance(made, (tuple, list)):
        return tuple(made), {}
    return (made,), {}


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def fit_exponent(fn: Callable[..., Any], sizes: Sequence[int],
                 make_inputs: Callable[[int], Any]) -> tuple[float, float]:
    """Least-squares slopes of ``log(flops)`` and ``log(peak_bytes)`` against ``log(size)``.

    For each ``s`` in ``sizes`` (at least two distinct positive values), ``make_inputs(s)`` gives
    the call's inputs: a tuple of positional arguments, a dict of keyword arguments, or a pair
    ``(args_tuple, kwargs_dict)``; ``fn`` is measured on them (:func:`measure`). Returns
    ``(flops_slope, peak_slope)``: e.g. ``(2.0, 2.0)`` for dense attention in ``n``.
    """
    sizes = list(sizes)
    if len(set(sizes)) < 2 or any((not isinstance(s, (int, float))) or s <= 0 for s in sizes):
        msg = f"sizes must hold at least two distinct positive numbers, got {sizes!r}"
        raise ValueError(msg)
    logs, lf, lp = [], [], []
    for s in sizes:
        a, kw = _call_inputs(make_inputs(s))
        c = measure(fn, *a, **kw)
        if c.flops <= 0 or c.peak_bytes <= 0:
            msg = f"fit_exponent needs positive flops and peak bytes, got {c.flops} and {c.peak_bytes} at size {s}"
            raise ValueError(msg)
        logs.append(math.log(s))
        lf.append(math.log(c.flops))
        lp.append(math.log(c.peak_bytes))
    return _slope(logs, lf), _slope(logs, lp)


_EXACT_FIELDS = ("flops", "transcendentals", "bytes_read", "bytes_written", "allocations", "peak_bytes")


def assert_counted_matches(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any] | None,
                           closed: Cost, *, exact: Sequence[str] = ("flops", "transcendentals"),
                           upper: Sequence[str] = ()) -> Cost:
    """Assert that the counted cost of ``fn(*args, **kwargs)`` agrees with a closed form.

    Fields in ``exact`` must be equal; fields in ``upper`` must not exceed the closed form (e.g.
    ``upper=("peak_bytes",)`` when the closed form's peak is a derived upper bound). Returns the
    counted :class:`Cost`. On failure the message lists each disagreeing field and the counted
    per-op table, so the op whose count the closed form misses is visible.
    """
    for f in (*exact, *upper):
        if f not in _EXACT_FIELDS:
            msg = f"field names must be among {_EXACT_FIELDS}, got {f!r}"
            raise ValueError(msg)
    counted = measure(fn, *args, **(kwargs or {}))
    bad = [f"{f}: counted {getattr(counted, f):,} != closed form {getattr(closed, f):,}"
           for f in exact if getattr(counted, f) != getattr(closed, f)]
    bad += [f"{f}: counted {getattr(counted, f):,} > closed-form bound {getattr(closed, f):,}"
            for f in upper if getattr(counted, f) > getattr(closed, f)]
    if bad:
        name = getattr(fn, "__name__", repr(fn))
        msg = f"counted cost of {name} disagrees with its closed form:\n  " + "\n  ".join(bad)
        msg += "\ncounted per op:\n" + counted.table()
        raise AssertionError(msg)
    return counted


def _timeit(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Best of ``repeat`` wall-clock times of ``fn()`` (used by the CLI's overhead line)."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
