"""Test helpers for refattn, and refattn as the oracle for other attention implementations.

Checking an implementation (any library: NumPy, CuPy, torch, JAX, ...)
----------------------------------------------------------------------
- :func:`assert_attention_close`: compare one result with the float64 oracle; reports the max
  absolute and relative error, the worst index, the fraction of elements out of tolerance, NaNs
  (where and how many), and the tolerance used and why. Default tolerances come from a
  rounding-error model of the computation in the implementation's dtype
  (:func:`attention_error_bound`), growing with the reduction lengths ``d``, ``n``, ``m`` and with
  the logit magnitude.
- :func:`check_attention`: drive a function over generated cases (Hypothesis; the strategies are
  ``refattn.testing.strategies``), comparing outputs and gradients with the oracle; returns a
  :class:`CheckReport`.
- A pytest plugin (``refattn.pytest_plugin``, auto-loaded through the ``pytest11`` entry point, or
  ``pytest -p refattn.pytest_plugin``): ``pytest --refattn-backend=torch --refattn-dtype=float16``
  with fixtures ``refattn_backend``, ``refattn_dtype``, ``refattn_check``.
- ``refattn check METHOD --inputs in.npz --outputs out.npz [--grads grads.npz]`` on dumped tensors.

>>> import refattn.testing as rt
>>> def my_kernel(q, k, v, *, mask=None, causal=False):   # e.g. torch SDPA, with backend="torch"
...     return refattn.softmax_attention(q, k, v, mask=mask, causal=causal)
>>> report = rt.check_attention(my_kernel, "softmax", backend=xp.__name__, dtype="float32", grads=False,
...                             max_examples=5)   # torch tensors: grads=True through autograd
>>> report.raise_if_failed()

Helpers for refattn's own tests
-------------------------------
- :func:`assert_allclose`: checks namespace, shape, dtype and device before values, and reports the
  maximum absolute and relative error and where the worst one is.
- :func:`gradcheck`: compares a hand-written vector-Jacobian product with central finite
  differences along random directions, in float64, with a tolerance derived from the data.
- :func:`naive_attention` / :func:`naive_attention_vjp` with ``bug=`` one of :data:`BUGS`: a plain
  low-precision implementation and five injected bugs, the calibration targets of the tolerances.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import random as _random
from ._interop import FLOAT_NAMES, dtype_name, to_host64
from ._naive import BUGS, bug_observable, bug_regime, naive_attention, naive_attention_vjp
from ._oracle import (
    MASK_KINDS,
    METHODS,
    SAFETY,
    UNIT_ROUNDOFF,
    Case,
    MethodSpec,
    Shape,
    default_accum,
    get_method,
    logit_range,
    materialize,
    register_method,
)
from ._registry import lookup
from ._vjp import vjp as _vjp
from ._xp import device, namespace

__all__ = [
    "assert_allclose", "gradcheck", "GradcheckResult",
    "assert_attention_close", "attention_error_bound", "ErrorBound", "Comparison",
    "check_attention", "CheckReport", "CaseResult",  # and the lazy attribute "strategies"
    "METHODS", "MethodSpec", "register_method", "MASK_KINDS", "Case", "Shape",
    "naive_attention", "naive_attention_vjp", "BUGS", "bug_regime", "bug_observable", "UNIT_ROUNDOFF",
]


def _unravel(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    idx = []
    for s in reversed(shape):
        idx.append(flat % s)
        flat //= s
    return tuple(reversed(idx))


def assert_allclose(actual: Any, desired: Any, *, rtol: float = 1e-7, atol: float = 0.0,
                    check_dtype: bool = True, check_device: bool = True, err_msg: str = "") -> None:
    """Assert ``|actual - desired| <= atol + rtol |desired|`` elementwise, after checking that both
    arrays share namespace, shape, dtype and device.

    NaN equals NaN at the same position, infinities must match in sign; the failure message gives
    the max absolute and relative errors, the worst index and the fraction out of tolerance.
    """
    xp = namespace(actual)
    prefix = f"{err_msg}: " if err_msg else ""
    if namespace(desired) is not xp:
        msg = f"{prefix}namespaces differ: {xp.__name__} vs {namespace(desired).__name__}"
        raise AssertionError(msg)
    if tuple(actual.shape) != tuple(desired.shape):
        msg = f"{prefix}shapes differ: {tuple(actual.shape)} vs {tuple(desired.shape)}"
        raise AssertionError(msg)
    if check_dtype and actual.dtype != desired.dtype:
        msg = f"{prefix}dtypes differ: {actual.dtype} vs {desired.dtype}"
        raise AssertionError(msg)
    if check_device and device(actual) != device(desired):
        msg = f"{prefix}devices differ: {device(actual)} vs {device(desired)}"
        raise AssertionError(msg)
    if math.prod(actual.shape) == 0:
        return
    a = xp.reshape(actual, (-1,))
    d = xp.astype(xp.reshape(desired, (-1,)), a.dtype)
    both_nan = xp.isnan(a) & xp.isnan(d)
    same_inf = xp.isinf(a) & (a == d)
    finite = xp.isfinite(a) & xp.isfinite(d)
    zero = xp.zeros_like(a)
    diff = xp.abs(xp.where(finite, a, zero) - xp.where(finite, d, zero))  # no inf - inf
    ok = both_nan | same_inf | (finite & (diff <= atol + rtol * xp.abs(d)))
    if bool(xp.all(ok)):
        return
    bad = ~ok
    n_bad = int(xp.sum(xp.astype(bad, xp.int64)))
    rel = xp.where(finite & (d != 0), diff / xp.where(d != 0, xp.abs(d), 1.0), zero)
    worst = int(xp.argmax(xp.where(bad, diff + 1.0, zero)))  # a bad entry, the largest difference
    where = _unravel(worst, actual.shape)
    msg = (f"{prefix}arrays not close (rtol={rtol:g}, atol={atol:g}): "
           f"{n_bad} of {a.shape[0]} elements ({100 * n_bad / a.shape[0]:.3g}%) out of tolerance; "
           f"max abs error {float(xp.max(diff)):.3e}, max rel error {float(xp.max(rel)):.3e}; "
           f"worst at index {where}: actual {float(a[worst])!r}, desired {float(d[worst])!r}")
    raise AssertionError(msg)


@dataclass(frozen=True)
class GradcheckResult:
    """One directional check: analytic ``<grad, t>`` against the finite-difference estimate."""

    analytic: float
    numeric: float
    tolerance: float
    step: float

    @property
    def ok(self) -> bool:
        return abs(self.analytic - self.numeric) <= self.tolerance


def gradcheck(fn: Callable[..., Any], args: Sequence[Any], *, kwargs: dict[str, Any] | None = None,
              wrt: Sequence[int] | None = None, vjp: Callable[..., Any] | None = None,
              rng: Any = 0, n_directions: int = 2, raise_on_failure: bool = True) -> list[GradcheckResult]:
    r"""Check a vector-Jacobian product against central differences along random directions.

    For a random output cotangent ``u`` and random input directions ``t`` (all arguments in
    ``wrt`` at once), compares the analytic ``a = sum_i <vjp(u)_i, t_i>`` with the numeric
    derivative of ``g(h) = <u, fn(x + h t)>`` at 0.

    Step and tolerance (float64 arithmetic, unit roundoff ``eps = 2^-53``):
    ``h = eps^(1/3) * max(1, max |x|)`` balances the central difference's truncation error
    ``O(h^2)`` against rounding ``O(eps |g| / h)``. The estimate is Richardson-extrapolated,
    ``D = (4 D(h) - D(2h)) / 3`` (error ``O(h^4)``), and the tolerance is built from the data:
    ``|D(h) - D(2h)|`` (an upper estimate of the remaining truncation error, which is ~16x
    smaller) plus the rounding bound ``64 eps sum |u| |fn(x)| / h`` (64: a generous count of the
    roundings that reach each output entry) plus ``1e-10 |a|``. A wrong gradient (a sign, a
    transpose, a missing term) differs by ``O(|a|)`` and fails by many orders of magnitude.

    Parameters
    ----------
    fn : callable with a registered vjp (any refattn public function), or any function when ``vjp``
        is given as ``vjp(*args, **kwargs) -> (out, pullback)``.
    args : the positional arrays (float64 for a meaningful check); ``wrt`` picks which to perturb
        (default: every floating array argument). ``pullback`` must return one cotangent per
        positional array argument, in order.
    """
    kwargs = kwargs or {}
    args = list(args)
    rs = _random.default_rng(rng)
    if wrt is None:
        wrt = [i for i, a in enumerate(args) if hasattr(a, "dtype") and
               namespace(a).isdtype(a.dtype, "real floating")]
    out, pullback = (vjp or (lambda *a, **k: _vjp(fn, *a, **k)))(*args, **kwargs)
    xp = namespace(out)
    u = _random.like(rs.standard_normal(tuple(out.shape)), out)
    grads = pullback(u)
    scale = max([1.0] + [float(xp.max(xp.abs(args[i]))) for i in wrt if math.prod(args[i].shape)])
    h = 2.0 ** (-53 / 3) * scale
    eps = 2.0**-53
    results = []
    for _ in range(n_directions):
        ts = {i: _random.like(rs.standard_normal(tuple(args[i].shape)), args[i]) for i in wrt}
        analytic = sum(float(xp.sum(grads[i] * ts[i])) for i in wrt)

        def g(step: float, ts: dict = ts) -> float:
            moved = [a + step * ts[i] if i in ts else a for i, a in enumerate(args)]
            return float(xp.sum(u * fn(*moved, **kwargs)))

        d1 = (g(h) - g(-h)) / (2 * h)
        d2 = (g(2 * h) - g(-2 * h)) / (4 * h)
        numeric = (4 * d1 - d2) / 3
        rounding = 64 * eps * float(xp.sum(xp.abs(u) * xp.abs(out))) / h
        tol = abs(d1 - d2) + rounding + 1e-10 * abs(analytic)
        results.append(GradcheckResult(analytic, numeric, tol, h))
    failed = [r for r in results if not r.ok]
    if failed and raise_on_failure:
        lines = "; ".join(f"analytic {r.analytic:.12e} vs numeric {r.numeric:.12e} "
                          f"(|diff| {abs(r.analytic - r.numeric):.2e} > tol {r.tolerance:.2e})"
                          for r in failed)
        name = getattr(fn, "__name__", repr(fn))
        msg = f"gradcheck of {name} failed along {len(failed)} of {len(results)} directions: {lines}"
        raise AssertionError(msg)
    return results


# ================================================================================================
# refattn as the oracle for other implementations
# ================================================================================================

def __getattr__(name: str) -> Any:
    """``refattn.testing.strategies`` (Hypothesis strategies) is imported on first use, so that
    ``import refattn`` does not need Hypothesis."""
    if name == "strategies":
        try:
            from . import _strategies
        except ImportError as exc:  # pragma: no cover - hypothesis is in the test extra
            msg = f"refattn.testing.strategies needs hypothesis: pip install 'refattn[test]' ({exc})"
            raise ImportError(msg) from exc
        return _strategies
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def _unravel_or_none(flat: int, shape: Sequence[int]) -> tuple[int, ...] | None:
    return _unravel(flat, shape) if math.prod(shape) else None


@dataclass(frozen=True)
class Comparison:
    """The outcome of comparing one array with the oracle (what the failure message prints).

    ``max_ratio`` is the largest ``|actual - desired| / tolerance`` over the elements: at most 1
    passes, and its value on a passing run is the headroom left by the tolerance.
    ``problem`` is set when the arrays could not be compared (shape mismatch, missing array).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    size: int
    n_bad: int
    max_abs: float
    max_rel: float
    worst_index: tuple[int, ...] | None
    worst_actual: float
    worst_desired: float
    worst_tolerance: float
    max_ratio: float
    n_nan: int
    first_nan: tuple[int, ...] | None
    n_inf: int
    first_inf: tuple[int, ...] | None
    why: str
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem and self.n_bad == 0

    @property
    def frac_bad(self) -> float:
        return self.n_bad / self.size if self.size else 0.0

    def summary(self) -> str:
        """One line: verdict, counts, errors, worst index."""
        if self.problem:
            return f"{self.name}: FAIL: {self.problem}"
        if not self.size:
            return f"{self.name}: ok (empty)"
        head = (f"{self.name}: {'ok' if self.ok else 'FAIL'}: {self.n_bad} of {self.size} elements "
                f"({100 * self.frac_bad:.3g}%) out of tolerance; max abs error {self.max_abs:.3e}, "
                f"max rel error {self.max_rel:.3e}; worst (error/tolerance {self.max_ratio:.3g}) at index "
                f"{self.worst_index}: actual {self.worst_actual!r}, desired {self.worst_desired!r}, "
                f"tolerance {self.worst_tolerance:.3e}")
        if self.n_nan:
            head += f"; actual has {self.n_nan} NaN (first at index {self.first_nan})"
        if self.n_inf:
            head += f"; actual has {self.n_inf} inf (first at index {self.first_inf})"
        return head

    def __str__(self) -> str:
        return f"{self.summary()}\n  tolerance: {self.why}"


def _problem(name: str, shape: Sequence[int], dtype: str, problem: str, why: str = "") -> Comparison:
    return Comparison(name, tuple(shape), dtype, math.prod(shape), 0, math.nan, math.nan, None, math.nan,
                      math.nan, math.nan, math.inf, 0, None, 0, None, why, problem)


def _first(xp: Any, flags: Any, shape: Sequence[int]) -> tuple[int, ...] | None:
    flat = xp.reshape(flags, (-1,))
    return _unravel(int(xp.argmax(xp.astype(flat, xp.int8))), shape) if bool(xp.any(flat)) else None


def _compare(name: str, a: Any, d: Any, *, tol: Any = None, rtol: float = 0.0, atol: float = 0.0,
             why: str, dtype: str) -> Comparison:
    """Elementwise ``|a - d| <= tol`` (or ``atol + rtol |d|``) on host float64 arrays of one shape.

    NaN matches NaN and an infinity the same infinity (numpy.testing's convention); any other
    non-finite entry on either side is out of tolerance.
    """
    xp = namespace(a)
    shape = tuple(a.shape)
    size = math.prod(shape)
    if size == 0:
        return Comparison(name, shape, dtype, 0, 0, 0.0, 0.0, None, 0.0, 0.0, 0.0, 0.0, 0, None, 0, None, why)
    fin = xp.isfinite(a) & xp.isfinite(d)
    af, df = xp.where(fin, a, 0.0), xp.where(fin, d, 0.0)
    diff = xp.abs(af - df)
    if tol is None:
        tol = atol + rtol * xp.abs(df)
        tol = xp.where(fin, tol, atol)
    tol = xp.broadcast_to(xp.asarray(tol, dtype=a.dtype), shape)
    nan_a, inf_a = xp.isnan(a), xp.isinf(a)
    same = (nan_a & xp.isnan(d)) | (inf_a & (a == xp.where(xp.isinf(d), d, 0.0)))
    err = xp.where(fin, diff, xp.where(same, 0.0, math.inf))
    bad = err > tol
    finite_tol = xp.isfinite(tol) & (tol > 0)
    # err / tol without overflow (both clamped to [1e-150, 1e150]); a failing entry reports > 1
    quot = xp.minimum(err, 1e150) / xp.where(finite_tol, xp.maximum(tol, 1e-150), 1.0)
    ratio = xp.where(finite_tol, quot, xp.where(xp.isinf(tol) | (err == 0), 0.0, math.inf))
    ratio = xp.where(bad, xp.maximum(ratio, 1.0 + 2.0**-52), ratio)
    worst = int(xp.argmax(xp.reshape(ratio, (-1,))))
    idx = _unravel(worst, shape)
    rel = xp.where(fin & (df != 0), xp.minimum(diff, 1e150) / xp.maximum(xp.abs(df), 1e-150), 0.0)
    return Comparison(
        name=name, shape=shape, dtype=dtype, size=size, n_bad=int(xp.sum(xp.astype(bad, xp.int64))),
        max_abs=float(xp.max(diff)), max_rel=float(xp.max(rel)), worst_index=idx,
        worst_actual=float(a[idx]), worst_desired=float(d[idx]), worst_tolerance=float(tol[idx]),
        max_ratio=float(ratio[idx]), n_nan=int(xp.sum(xp.astype(nan_a, xp.int64))),
        first_nan=_first(xp, nan_a, shape), n_inf=int(xp.sum(xp.astype(inf_a, xp.int64))),
        first_inf=_first(xp, inf_a, shape), why=why)


def _host_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of an attention call with every array brought to the host (float64,
    boolean masks kept boolean, key lengths integer)."""
    out: dict[str, Any] = {}
    for key, val in kwargs.items():
        if val is None or isinstance(val, (bool, int, float, str)):
            out[key] = val
            continue
        h, src = to_host64(val, key)
        xp = namespace(h)
        if src == "bool":
            h = h != 0
        elif key == "key_lengths":
            h = xp.astype(h, xp.int64)
        out[key] = h
    return out


@dataclass(frozen=True)
class ErrorBound:
    """Elementwise tolerances of one attention call: ``bound["out"]``, ``bound["dq"]``, ...

    Host float64 arrays shaped like the quantities; ``why(name)`` says how they were obtained.
    """

    bounds: dict[str, Any]
    method: str
    dtype: str
    accum_dtype: str
    ref_dtype: str
    sizes: dict[str, int]
    logits: tuple[float, float]

    def __getitem__(self, name: str) -> Any:
        try:
            return self.bounds[name]
        except KeyError:
            msg = f"no bound for {name!r}; have {sorted(self.bounds)} (gradients need dout)"
            raise KeyError(msg) from None

    def why(self, name: str) -> str:
        b = self[name]
        xp = namespace(b)
        lo, hi = (float(xp.min(b)), float(xp.max(b))) if math.prod(b.shape) else (0.0, 0.0)
        sz = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return (f"elementwise rounding-error bound of {self.method} attention computed in {self.dtype} "
                f"(accumulating in {self.accum_dtype}) against a {self.ref_dtype} reference: "
                f"{SAFETY:g} x the first-order worst-case bound, which grows with the reduction lengths "
                f"({sz}) and the logit magnitude (logits in [{self.logits[0]:.3g}, {self.logits[1]:.3g}]); "
                f"here {lo:.2e} .. {hi:.2e} (refattn.testing.attention_error_bound)")


def attention_error_bound(q: Any, k: Any, v: Any, /, *params: Any, dtype: Any = None, method: str = "softmax",
                          dout: Any = None, accum_dtype: str | None = None, ref_dtype: str = "float64",
                          **kwargs: Any) -> ErrorBound:
    r"""Elementwise error bounds of an attention computation in ``dtype``, against a reference.

    ``q, k, v, *params, dout`` and the keyword arguments (``mask``, ``causal``, ``scale``,
    ``key_lengths``) are the call's inputs, arrays of any library; they are taken as exact (the
    oracle runs on the values the implementation saw, so input rounding is not counted).
    ``dtype`` is the implementation's format (default: ``q``'s), ``accum_dtype`` the format its
    sums and matrix products accumulate in (default float32 for float16/bfloat16, else ``dtype``;
    ``"tfloat32"`` models TF32 tensor cores, ``"float16"`` a half-precision accumulator),
    ``ref_dtype`` the reference's format (float64 for the oracle).

    Returns an :class:`ErrorBound` with ``"out"`` and, with ``dout``, ``"dq"``, ``"dk"``, ``"dv"``.

    Notes
    -----
    **Model.** The implementation stores values in a format with unit roundoff ``u`` (2^-11
    float16, 2^-8 bfloat16, 2^-24 float32, 2^-53 float64) and accumulates in one with roundoff
    ``u_a``; each elementary operation is correctly rounded (``exp`` within about one ulp), a
    ``k``-term sum or inner product errs by at most :math:`\gamma_k = k u_a/(1 - k u_a)` times the
    sum of absolute values (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, §3.1),
    and nothing overflows. This covers the dense form, the online-softmax (Flash) form with
    deferred normalisation, logits or ``q``/``k`` scaled before or after the product, and weights
    rounded to ``T`` before ``P V``. Masked entries carry no weight; a query with no key has
    output 0 (the bound there is only the subnormal floor, so NaN fails).

    **Forward.** With the logit magnitude :math:`A_{ij} = |s| \sum_c |q_{ic} k_{jc}|`, the computed
    logit differs from :math:`s_{ij} = s\,q_i\cdot k_j + b_{ij}` by at most
    :math:`(\gamma_d + 5u) A_{ij} + 2u|b_{ij}|` (the product; scaling q, k or the product, the
    scale constant and storing S: five roundings). Subtracting the row maximum (or, in a
    recomputing backward, the log-sum-exp :math:`L_i`) costs :math:`u (L_i - s_{ij})`, and ``exp``
    with its storage ``3u``, all at the level of the logit:

    .. math:: \eta_{ij} = (\gamma_d + 5u) A_{ij} + 2u|b_{ij}| + u (L_i - s_{ij}) + 3u .

    Logits perturbed by :math:`|\delta_{ij}| \le \eta_{ij}` give weights
    :math:`\hat p_{ij} = p_{ij} e^{\delta_{ij}} / \sum_k p_{ik} e^{\delta_{ik}}`; with
    :math:`\bar\epsilon_i = \sum_k p_{ik}(e^{\eta_{ik}} - 1)` (exact, not first order)
    :math:`|\hat p_{ij} - p_{ij}| \le W_{ij} = \min(p_{ij}\rho_{ij}, 1 + 2u)`,

    .. math:: \rho_{ij} = e^{\eta_{ij} + \lambda_i} - 1 + u, \qquad
              \lambda_i = -\log(1 - \bar\epsilon_i) + \gamma_{2m} + 2u + u_a |L_i|,

    where :math:`\lambda_i` also covers the normaliser (a sum of at most ``m`` terms, with the
    online form's rescalings: :math:`\gamma_{2m}`), the division, and a log-sum-exp kept in the
    accumulation format; the last ``u`` is rounding P to ``T``. Since the weights sum to one,
    :math:`\hat o_{ic} - o_{ic} = \sum_j (\hat p_{ij} - p_{ij})(v_{jc} - o_{ic})` plus the
    normaliser's and the ``P V`` product's rounding:

    .. math:: E^{out}_{ic} = \sum_j W_{ij}|v_{jc} - o_{ic}| + (\gamma_{2m} + 2u)\sum_j p_{ij}|v_{jc}|
              + (\gamma_{2m} + 3u)|o_{ic}| + \text{tiny}\,(1 + \sum_j |v_{jc}|),

    capped by the same expression with :math:`\max_j |v_{jc} - o_{ic}|` for the first sum (an
    output is a convex combination of the values). "tiny" is the format's smallest subnormal
    (weights that underflow).

    **Backward** (cotangent ``G``). :math:`dP = G V^\top` errs by
    :math:`\theta_{ij} = \gamma_{d_v}(|G||V|^\top)_{ij} + u|dP_{ij}|`; :math:`\delta_i = \sum_c
    o_{ic} g_{ic}` from the stored output errs by :math:`\sum_c E^{out}_{ic}|g_{ic}| +
    (\gamma_{d_v} + u)\sum_c |o_{ic} g_{ic}|`, or computed as :math:`\sum_j p_{ij} dP_{ij}` by
    :math:`\sum_j W_{ij}|dP_{ij}| + (p + W)\theta + (\gamma_{2m} + u)\sum_j p_{ij}|dP_{ij}|`;
    :math:`\omega_i` is the larger. For :math:`dS = P \circ (dP - \delta)`:

    .. math:: \Delta_{ij} = W_{ij}|dP_{ij} - \delta_i| + 3u\,p_{ij}|dP_{ij} - \delta_i|
              + (p_{ij} + W_{ij})(\theta_{ij} + \omega_i),

    .. math:: E^{dq} = |s|\,\Delta |K| + (\gamma_{2m} + 4u)|s|\,|dS||K| + u|dQ|, \quad
              E^{dk} = |s|\,\Delta^\top |Q| + (\gamma_{2n} + 4u)|s|\,|dS|^\top|Q| + u|dK|,

    .. math:: E^{dv} = W^\top |G| + (\gamma_{2n} + 2u) P^\top |G| + u|dV|

    (plus subnormal floors; leading dimensions broadcast in the inputs add
    :math:`\gamma_R \sum |\text{grad}|` over the ``R`` summed copies).

    **Tolerance** = ``SAFETY`` (2) x (E in ``dtype``/``accum_dtype`` + E in ``ref_dtype``): the
    factor covers the neglected products of two roundoffs (relative ``O(u)`` to the terms kept)
    and the reference's own error is added in full (it matters for float64 implementations).
    The bound grows linearly with ``d``, ``n``, ``m`` (the :math:`\gamma`'s and the number of terms
    in each sum) and with the logit magnitude (:math:`A_{ij}`, :math:`L_i - s_{ij}`). It is a
    worst-case bound: correct implementations stay far below it (tests/test_testing_oracle.py
    measures the headroom), and the injected bugs of :data:`BUGS` exceed it.

    Not covered: accumulation in a format other than ``accum_dtype`` (say so), approximate
    ``exp`` with errors of many ulps, overflow in ``T`` (e.g. float16 logits beyond 65504).
    """
    spec = get_method(method)
    missing = spec.missing_model(grads=False)
    if missing:
        msg = f"{missing}: give rtol and atol"
        raise ValueError(msg)
    hq, q_dt = to_host64(q, "q")
    hk, _ = to_host64(k, "k")
    hv, _ = to_host64(v, "v")
    hp = [to_host64(p, name)[0] for p, name in zip(params, spec.param_names)]
    dt = dtype_name(dtype) if dtype is not None else q_dt
    if dt not in FLOAT_NAMES:
        msg = f"dtype must be one of {FLOAT_NAMES}, got {dt!r}"
        raise ValueError(msg)
    accum = accum_dtype or default_accum(dt)
    hdout = to_host64(dout, "dout")[0] if dout is not None else None
    hkw = _host_kwargs(kwargs)
    bounds = spec.error_bound(hq, hk, hv, *hp, dtype=dt, dout=hdout, accum_dtype=accum, ref_dtype=ref_dtype,
                              **hkw)
    sizes = {"n": hq.shape[-2], "m": hk.shape[-2], "d": hq.shape[-1], "dv": hv.shape[-1]}
    return ErrorBound(bounds, spec.name, dt, accum, ref_dtype, sizes, logit_range(hq, hk, **hkw))


def _nominal(d: Any, which: str, dtype: str, accum: str, ref: str) -> tuple[float, float, str]:
    """``(rtol, atol, why)`` without the inputs: the model at stated nominal sizes and magnitudes."""
    xp = namespace(d)
    shape = tuple(d.shape)
    n = shape[-2] if len(shape) >= 2 else 1
    dv = shape[-1] if shape else 1
    big = 10.0  # assumed bound on |logits|
    fin = xp.isfinite(d)
    vmax = float(xp.max(xp.where(fin, xp.abs(d), 0.0))) if math.prod(shape) else 0.0

    def per_format(u: float, ua: float) -> tuple[float, float]:
        g = lambda k: k * ua / (1 - k * ua) if k * ua < 0.5 else math.inf  # noqa: E731
        eta = (g(dv) + 5 * u) * big + u * (2 * big + math.log(max(n, 1))) + 3 * u
        eps = math.expm1(eta)
        lam = (-math.log1p(-eps) if eps < 0.5 else math.inf) + g(2 * n) + 2 * u + ua * (big + math.log(max(n, 1)))
        rho = min(math.expm1(eta + lam) + u if math.isfinite(lam) else math.inf, 1 + 2 * u)
        return g(2 * n) + 3 * u, 2 * rho + g(2 * n) + 2 * u

    r1, a1 = per_format(UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF[accum])
    r2, a2 = per_format(UNIT_ROUNDOFF[ref], UNIT_ROUNDOFF[ref])
    grad = 1.0 if which == "out" else 4.0
    rtol = SAFETY * grad * (r1 + r2)
    atol = SAFETY * grad * (a1 + a2) * vmax
    why = (f"rtol={rtol:.3g}, atol={atol:.3g}: NOMINAL rounding-error model for {which} in {dtype} "
           f"(accumulating in {accum}), no inputs given, so it assumes m = n = {n}, d = dv = {dv}, "
           f"|logits| <= {big:g} and values no larger than max|desired| = {vmax:.3g}"
           f"{' (x4 for a gradient)' if grad > 1 else ''}; pass inputs=(q, k, v) (with mask, scale, "
           "dout) for the data-dependent bound")
    return rtol, atol, why


def _parse_inputs(inputs: Any, spec: MethodSpec) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    if isinstance(inputs, dict):
        names = ("q", "k", "v", *spec.param_names)
        missing = [n for n in names if n not in inputs]
        if missing:
            msg = f"inputs is missing {missing} (method {spec.name!r} takes {list(names)})"
            raise ValueError(msg)
        args = tuple(inputs[n] for n in names)
        kw = {key: inputs[key] for key in spec.kwargs if key in inputs and inputs[key] is not None}
        return args, kw, inputs.get("dout")
    args = tuple(inputs)
    if len(args) != 3 + len(spec.param_names):
        msg = (f"inputs must be (q, k, v{''.join(', ' + p for p in spec.param_names)}) or a dict with "
               f"those keys and mask/causal/scale/key_lengths/dout, got {len(args)} arrays")
        raise ValueError(msg)
    return args, {}, None


def assert_attention_close(actual: Any, desired: Any, *, dtype: Any = None, rtol: float | None = None,
                           atol: float | None = None, inputs: Any = None, which: str = "out",
                           method: str = "softmax", accum_dtype: str | None = None,
                           err_msg: str = "") -> Comparison:
    """Assert that an attention result ``actual`` matches the oracle's ``desired``.

    Parameters
    ----------
    actual : array of any library (NumPy, CuPy, torch, JAX, ...; DLPack or ``__array__``), in the
        implementation's dtype.
    desired : the oracle's result (refattn in float64 on the same input values), any library.
    dtype : the implementation's format (``"float16"``, ``"bfloat16"``, ``"float32"``,
        ``"float64"`` or a dtype object); default: ``actual``'s. A declared dtype that ``actual``
        does not have fails.
    rtol, atol : explicit tolerances ``|actual - desired| <= atol + rtol |desired|`` (a missing one
        is 0); given, they replace the error model.
    inputs : ``(q, k, v)`` or a dict with ``q, k, v`` (method parameters by name) and optionally
        ``mask, causal, scale, key_lengths, dout`` (the npz key names of ``refattn check``): the
        default tolerance is then the elementwise bound of :func:`attention_error_bound`. Without
        inputs a nominal form of the same model is used (stated in the message).
    which : ``"out"``, ``"dq"``, ``"dk"`` or ``"dv"`` (gradients need ``dout`` in ``inputs``).
    method : the method's name in :data:`METHODS`.
    accum_dtype : the implementation's accumulation format (see :func:`attention_error_bound`).

    Returns
    -------
    Comparison : the statistics (also on success: ``max_ratio`` is the headroom).

    Raises
    ------
    AssertionError
        Values out of tolerance, NaN/inf where the oracle is finite (how many, and the first
        index), a shape mismatch, or ``actual`` not in the declared ``dtype``; the message gives
        the max absolute and relative errors, the worst index, the fraction out of tolerance and
        the tolerance used and why.
    TypeError, ValueError
        Non-arrays, non-floating dtypes, malformed ``inputs``, an unknown method.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (xp.asarray(rng.standard_normal((16, 8)), dtype=xp.float32) for _ in range(3))
    >>> out32 = refattn.softmax_attention(q, k, v)      # the kernel under test, in float32
    >>> ref = refattn.softmax_attention(*(xp.astype(x, xp.float64) for x in (q, k, v)))
    >>> assert_attention_close(out32, ref, inputs=(q, k, v)).n_bad
    0
    """
    prefix = f"{err_msg}: " if err_msg else ""
    a, a_dt = to_host64(actual, "actual")
    d, d_dt = to_host64(desired, "desired")
    if tuple(a.shape) != tuple(d.shape):
        msg = f"{prefix}shape mismatch: actual has shape {tuple(a.shape)}, desired {tuple(d.shape)}"
        raise AssertionError(msg)
    declared = dtype_name(dtype) if dtype is not None else a_dt
    for name, dt in (("dtype", declared), ("desired's dtype", d_dt)):
        if dt not in FLOAT_NAMES:
            msg = f"{name} must be one of {FLOAT_NAMES}, got {dt!r}"
            raise TypeError(msg)
    if a_dt != declared:
        msg = f"{prefix}dtype mismatch: actual is {a_dt}, but dtype={declared!r} was declared"
        raise AssertionError(msg)
    accum = accum_dtype or default_accum(declared)
    tol = None
    if rtol is not None or atol is not None:
        rtol, atol = float(rtol or 0.0), float(atol or 0.0)
        why = f"rtol={rtol:g}, atol={atol:g}, given by the caller"
    elif inputs is not None:
        spec = get_method(method)
        args, kw, dout = _parse_inputs(inputs, spec)
        missing = spec.missing_model(grads=which != "out")
        if missing:
            msg = f"{missing}: compare {which} with explicit rtol and atol"
            raise ValueError(msg)
        if which != "out" and dout is None:
            msg = f"which={which!r} needs the output cotangent: pass inputs as a dict with 'dout'"
            raise ValueError(msg)
        eb = attention_error_bound(*args, dtype=declared, method=spec.name, dout=dout if which != "out" else None,
                                   accum_dtype=accum, ref_dtype=d_dt, **kw)
        tol = eb[which]
        if tuple(tol.shape) != tuple(a.shape):
            msg = (f"{prefix}shape mismatch: the inputs give {which} the shape {tuple(tol.shape)}, "
                   f"actual has {tuple(a.shape)}")
            raise AssertionError(msg)
        why = eb.why(which)
        rtol = atol = 0.0
    else:
        rtol, atol, why = _nominal(d, which, declared, accum, d_dt)
    cmp = _compare(which, a, d, tol=tol, rtol=rtol, atol=atol, why=why, dtype=declared)
    if not cmp.ok:
        raise AssertionError(prefix + str(cmp))
    return cmp


# ------------------------------------------------------------------------------------------------
# check_attention
# ------------------------------------------------------------------------------------------------

@dataclass
class CaseResult:
    """One case of :func:`check_attention`: its comparisons, or the exception ``fn`` raised."""

    case: Case
    comparisons: list[Comparison]
    error: str = ""
    logits: tuple[float, float] = (0.0, 0.0)

    @property
    def ok(self) -> bool:
        return not self.error and all(c.ok for c in self.comparisons)

    def __str__(self) -> str:
        lines = [f"{self.case.describe()}; logits in [{self.logits[0]:.3g}, {self.logits[1]:.3g}]"]
        if self.error:
            lines.append(f"  fn raised {self.error}")
        for c in self.comparisons:
            lines.append("  " + (c.summary() if c.ok else str(c).replace("\n", "\n  ")))
        return "\n".join(lines)


@dataclass
class CheckReport:
    """What :func:`check_attention` found. ``ok`` is True when every case passed; ``str(report)``
    is a readable summary (the minimal failing case first, then per-quantity statistics)."""

    method: str
    backend: str
    dtype: str
    accum_dtype: str
    grads: bool
    tolerance: str
    results: list[CaseResult]
    minimal: CaseResult | None = None
    shrink_runs: int = 0

    @property
    def n_cases(self) -> int:
        return len(self.results)

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def ok(self) -> bool:
        return self.n_failed == 0 and (self.minimal is None or self.minimal.ok)

    def worst(self) -> dict[str, float]:
        """Largest ``error / tolerance`` per quantity over the cases (inf where fn raised)."""
        out: dict[str, float] = {}
        for r in self.results:
            for c in r.comparisons:
                out[c.name] = max(out.get(c.name, 0.0), c.max_ratio)
        return out

    def __str__(self) -> str:
        what = "outputs and gradients" if self.grads else "outputs"
        lines = [f"refattn check_attention: method={self.method} backend={self.backend} dtype={self.dtype} "
                 f"(accumulation {self.accum_dtype}); {what} vs the float64 oracle"]
        if self.ok:
            lines.append(f"PASSED: {self.n_cases} cases, none out of tolerance")
        else:
            lines.append(f"FAILED: {self.n_failed} of {self.n_cases} cases out of tolerance or raising")
            if self.minimal is not None:
                lines.append(f"minimal failing case (after {self.shrink_runs} shrinking runs):")
                lines.append("  " + str(self.minimal).replace("\n", "\n  "))
            elif self.failures:
                lines.append("first failing case:")
                lines.append("  " + str(self.failures[0]).replace("\n", "\n  "))
        stats: dict[str, list[Comparison]] = {}
        for r in self.results:
            for c in r.comparisons:
                stats.setdefault(c.name, []).append(c)
        if stats:
            lines.append(f"  {'quantity':<9}{'cases':>6}{'failed':>8}{'max abs err':>13}{'max rel err':>13}"
                         f"{'max err/tol':>13}")
            for name, cs in stats.items():
                fin = [c for c in cs if not c.problem]
                mabs = max((c.max_abs for c in fin), default=math.nan)
                mrel = max((c.max_rel for c in fin), default=math.nan)
                lines.append(f"  {name:<9}{len(cs):>6}{sum(not c.ok for c in cs):>8}{mabs:>13.3e}{mrel:>13.3e}"
                             f"{max(c.max_ratio for c in cs):>13.3g}")
        raised = sum(bool(r.error) for r in self.results)
        if raised:
            lines.append(f"  fn raised in {raised} cases")
        lines.append(f"tolerance: {self.tolerance}")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """``AssertionError(str(self))`` unless every case passed."""
        if not self.ok:
            raise AssertionError(str(self))


class _CaseFailure(AssertionError):
    def __init__(self, result: CaseResult) -> None:
        super().__init__(str(result))
        self.result = result


def _is_registered(fn: Any) -> bool:
    return lookup(fn) is not None


def _torch_vjp(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Callable[[Any], Any]]:
    """``(out, pullback)`` through torch autograd, without importing torch (tensor methods only)."""
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    out = fn(*leaves, **kwargs)
    if not getattr(out, "requires_grad", False):
        msg = "fn's output does not require grad (not differentiable by torch autograd); pass vjp= or grads=False"
        raise TypeError(msg)

    def pullback(dout: Any) -> tuple[Any, ...]:
        out.backward(dout)
        return tuple(x.grad if x.grad is not None else x.detach() * 0 for x in leaves)

    return out, pullback


def check_attention(fn: Callable[..., Any], method: str = "softmax", *, backend: Any = "numpy",
                    dtype: str = "float32", shapes: Any = None, masks: Sequence[str] = ("none", "causal"),
                    grads: bool = True, vjp: Callable[..., Any] | None = None, max_examples: int = 50,
                    seed: int | None = 0, accum_dtype: str | None = None,
                    scales: Sequence[float | None] = (None,), logit_scales: Sequence[float] | None = None,
                    value_scales: Sequence[float] | None = None, cases: Any = None, shrink: bool = True,
                    check_dtype: bool = True, rtol: float | None = None, atol: float | None = None) -> CheckReport:
    """Drive ``fn`` over generated cases and compare it (and its gradients) with the float64 oracle.

    Parameters
    ----------
    fn : ``fn(q, k, v, *params, **kw) -> out`` on ``backend``'s arrays in ``dtype``. ``kw`` holds
        only what a case uses: ``mask`` (boolean keep-mask or additive float mask, shape
        ``(*batch, n, m)``), ``causal`` (``True`` = top-left, or ``"bottom_right"``),
        ``key_lengths`` (integer, shape ``batch``), ``scale`` (when ``scales`` has a value).
    method : the method in :data:`METHODS` (its public function in float64 is the oracle).
    backend : a backend name (``"numpy"``, ``"torch"``, ``"cupy"``, ...) or a ``Backend``.
    dtype : ``"float16"``, ``"bfloat16"``, ``"float32"`` or ``"float64"``.
    shapes : ``None`` (small default sizes), a Hypothesis strategy of :class:`Shape`, or shapes
        ``(*batch, n, m, d, dv)``.
    masks : mask kinds to draw (:data:`MASK_KINDS`; default no mask and causal).
    grads : compare ``dq, dk, dv`` (and parameter gradients) too, through ``vjp`` when given
        (``vjp(q, k, v, *params, **kw) -> (out, pullback)``, ``pullback(dout) -> grads``), through
        refattn's registry for refattn functions, or through torch autograd for torch tensors.
    max_examples, seed : Hypothesis' number of cases and seed (``None``: random).
    accum_dtype : the implementation's accumulation format (see :func:`attention_error_bound`).
    scales, logit_scales, value_scales : what the cases draw (see ``strategies.cases``).
    cases : a strategy of :class:`Case` replacing the one built from the arguments above.
    shrink : on the first failure, shrink to a minimal failing case (and stop); ``False`` runs all
        ``max_examples`` cases and records every failure (for failure rates).
    check_dtype : an output or gradient in another dtype than ``dtype`` fails.
    rtol, atol : fixed tolerances instead of the error model.

    Returns
    -------
    CheckReport : ``report.ok``, ``print(report)``, ``report.raise_if_failed()``.
    """
    from . import backends
    from ._interop import from_host

    spec = get_method(method)
    be = backends.get(backend) if isinstance(backend, str) else backend
    dt = dtype_name(dtype)
    if dt not in FLOAT_NAMES:
        msg = f"dtype must be one of {FLOAT_NAMES}, got {dtype!r}"
        raise ValueError(msg)
    try:
        from_host(_random.normal((1,), rng=0), be, dt)
    except (TypeError, AttributeError, ValueError) as exc:
        msg = f"backend {be.name!r} cannot make {dt} arrays ({exc})"
        raise ValueError(msg) from None
    bad = [k for k in masks if k not in spec.masks]
    if bad or not masks:
        msg = f"masks must be a non-empty subset of {spec.masks} for method {spec.name!r}, got {list(masks)}"
        raise ValueError(msg)
    explicit = rtol is not None or atol is not None
    missing = None if explicit else spec.missing_model(grads=grads)
    if missing:
        msg = f"{missing}: give rtol and atol{' (or grads=False)' if spec.error_bound else ''}"
        raise ValueError(msg)
    if grads and vjp is None and not _is_registered(fn) and be.name != "torch":
        msg = ("grads=True needs a way to differentiate fn: pass vjp=(q, k, v, ...) -> (out, pullback), "
               "use torch tensors (autograd), or set grads=False")
        raise ValueError(msg)
    accum = accum_dtype or default_accum(dt)
    try:
        from hypothesis import HealthCheck, Phase, Verbosity, given
        from hypothesis import seed as hseed
        from hypothesis import settings as hsettings
    except ImportError as exc:  # pragma: no cover
        msg = f"check_attention needs hypothesis: pip install 'refattn[test]' ({exc})"
        raise ImportError(msg) from exc
    from . import _strategies

    if cases is None:
        kw = {}
        if logit_scales is not None:
            kw["logit_scales"] = tuple(logit_scales)
        if value_scales is not None:
            kw["value_scales"] = tuple(value_scales)
        cases = _strategies.cases(spec.name, shapes=shapes, masks=masks, scales=tuple(scales), **kw)
    if explicit:
        tolerance = f"rtol={rtol or 0:g}, atol={atol or 0:g}, given by the caller"
    else:
        tolerance = (f"elementwise rounding-error bound per case (refattn.testing.attention_error_bound): "
                     f"{SAFETY:g} x the worst-case first-order bound for {dt} storage and {accum} accumulation, "
                     f"plus the float64 oracle's own bound")

    def run_case(case: Case) -> CaseResult:
        mat = materialize(case, be, dt, grads=grads)
        out64, pullback64 = _vjp(spec.fn, *mat.host_args, **mat.host_kwargs, **spec.options)
        want = {"out": out64}
        if grads:
            want.update(zip(spec.grad_names, pullback64(mat.host_dout)))
        if explicit:
            tols = dict.fromkeys(want)
        else:
            tols = spec.error_bound(*mat.host_args, dtype=dt, dout=mat.host_dout, accum_dtype=accum,
                                    **mat.host_kwargs)
        logits = logit_range(mat.host_args[0], mat.host_args[1], **mat.host_kwargs)
        try:
            if grads:
                route = vjp or (_vjp if _is_registered(fn) else _torch_vjp)
                args = (fn, *mat.args) if route is not vjp else mat.args
                out, pull = route(*args, **mat.kwargs)
                got = [out, *pull(mat.dout)]
            else:
                got = [fn(*mat.args, **mat.kwargs)]
        except Exception as exc:  # the user's function failing is a finding, not a crash
            return CaseResult(case, [], error=f"{type(exc).__name__}: {exc}", logits=logits)
        comparisons = []
        if len(got) != len(want):
            comparisons.append(_problem("grads", (), dt, f"pullback returned {len(got) - 1} cotangents, "
                                        f"expected {len(want) - 1} ({', '.join(spec.grad_names)})"))
        for (name, ref), g in zip(want.items(), got):
            try:
                h, g_dt = to_host64(g, name)
            except TypeError as exc:
                comparisons.append(_problem(name, tuple(ref.shape), dt, str(exc)))
                continue
            if tuple(h.shape) != tuple(ref.shape):
                comparisons.append(_problem(name, tuple(h.shape), g_dt,
                                            f"shape {tuple(h.shape)}, expected {tuple(ref.shape)}"))
                continue
            if check_dtype and g_dt != dt:
                comparisons.append(_problem(name, tuple(h.shape), g_dt, f"dtype {g_dt}, expected {dt}"))
                continue
            why = tolerance if explicit else "elementwise error bound (attention_error_bound)"
            comparisons.append(_compare(name, h, ref, tol=tols[name], rtol=rtol or 0.0, atol=atol or 0.0,
                                        why=why, dtype=dt))
        return CaseResult(case, comparisons, logits=logits)

    results: list[CaseResult] = []
    shrinking: list[CaseResult] = []

    def body(case: Case) -> None:
        r = run_case(case)
        (shrinking if shrink and any(not x.ok for x in results) else results).append(r)
        if shrink and not r.ok:
            raise _CaseFailure(r)

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    settings = hsettings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                         phases=phases, suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
                         report_multiple_bugs=False, print_blob=False)
    test = settings(given(cases)(body))
    if seed is not None:
        test = hseed(seed)(test)
    minimal = None
    try:
        test()
    except _CaseFailure as exc:
        minimal = exc.result
    except Exception:  # Hypothesis' own errors (e.g. a flaky fn): keep what was recorded
        if not any(not r.ok for r in results):
            raise
        minimal = next((r for r in reversed(shrinking) if not r.ok), None)
    return CheckReport(spec.name, be.name, dt, accum, grads, tolerance, results, minimal, len(shrinking))
