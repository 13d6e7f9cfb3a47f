"""Test helpers for refattn and for implementations checked against it.

- :func:`assert_allclose`: checks namespace, shape, dtype and device before values, and reports the
  maximum absolute and relative error and where the worst one is.
- :func:`gradcheck`: compares a hand-written vector-Jacobian product with central finite
  differences along random directions, in float64, with a tolerance derived from the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import random as _random
from ._vjp import vjp as _vjp
from ._xp import device, namespace

__all__ = ["assert_allclose", "gradcheck", "GradcheckResult"]


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
