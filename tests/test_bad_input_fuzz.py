"""Generated from the method registry (issue 21): every option of every method against bad values,
and a hypothesis fuzz test over random shapes, dtypes, masks, options and input scales asserting the
catalogue's rule. The CI profile is deterministic (``tests/conftest.py``: ``ci`` derandomised, 25
examples per test; ``HYPOTHESIS_PROFILE=dev`` runs 200 with fresh randomness; ``fuzz`` 2000).

The rule: a ``ValueError``/``TypeError`` naming the argument (or a method's documented error), or a
documented result: finite output of shape ``(*batch, n, dv)`` from finite inputs; never a finite output
from NaN inputs; never NaN/inf from finite inputs without an error.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refattn._registry import methods

METHODS = dict(methods())
DOCUMENTED = ("PinvConvergenceError", "NonPositiveNormalizerError")
#: options that take arrays or callables (their bad values are the catalogue's mask/array classes)
ARRAY_OPTIONS = {"mask", "key_lengths"}
BAD_VALUES = {"object": object(), "string": "nonsense", "negative": -1, "nan": float("nan"), "fraction": 2.5,
              "list": [1, 2]}


def _call(name: str, n: int = 4, m: int = 4, d: int = 3, dv: int = 2, batch: tuple[int, ...] = (2,),
          dtype: str = "float64", seed: int = 0, options: dict[str, Any] | None = None,
          scale: float = 1.0) -> tuple[list[Any], dict[str, Any]]:
    meth = METHODS[name]
    rs = np.random.default_rng(seed)
    opts = {**meth.oracle_options, **(options or {})}
    if name == "heat" and opts.get("reading", "logits") != "hadamard":
        opts.setdefault("rank", 1)
    if name == "heat" and opts.get("reading") == "hadamard":
        dv = d
    if name == "nystrom":
        opts["num_landmarks"] = max(1, min(opts.get("num_landmarks", 2), n, m))
    q, k, v = (scale * rs.standard_normal((*batch, r, c)) for r, c in ((n, d), (m, d), (m, dv)))
    params = meth.make_params({"batch": batch, "n": n, "m": m, "d": d, "dv": dv}, rs, None, dtype, opts)
    arrays = [a.astype(dtype) for a in (q, k, v)] + [np.asarray(p) for p in params.values()]
    return arrays, opts


def _names(msg: str, arg: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])", msg) is not None


OPTION_ROWS = [pytest.param(name, opt, bad, id=f"{name}-{opt}-{bad}")
               for name, meth in METHODS.items() for opt in meth.options if opt not in ARRAY_OPTIONS
               for bad in BAD_VALUES]


@pytest.mark.parametrize("name,opt,bad", OPTION_ROWS)
def test_every_option_bad_value(name: str, opt: str, bad: str) -> None:
    """Each option of each registered method with each class of bad value: refused naming the option,
    or (where the value is a valid one, e.g. ``scale=-1``) a finite output of the right shape."""
    arrays, opts = _call(name)
    opts = {**opts, opt: BAD_VALUES[bad]}
    fn = METHODS[name].function
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            out = fn(*arrays, **opts)
        except (TypeError, ValueError) as exc:
            named = _names(str(exc), opt) or (opt in ("on_degenerate", "on_divergence", "on_nonpositive",
                                                      "invalid_normalizer") and "errors" in str(exc))
            assert named, f"{name}({opt}={BAD_VALUES[bad]!r}): message does not name {opt!r}: {exc}"
            return
    out = np.asarray(out)
    assert np.all(np.isfinite(out)), f"{name}({opt}={BAD_VALUES[bad]!r}) accepted and gave NaN/inf"
    assert out.shape[-2] == arrays[0].shape[-2]


def _mask_kwargs(draw: Any, name: str, batch: tuple[int, ...], n: int, m: int) -> dict[str, Any]:
    kinds = [k for k in METHODS[name].masks if k in ("none", "causal", "key_lengths", "bool")]
    kind = draw(st.sampled_from(kinds))
    if kind == "causal":
        return {"causal": True}
    if kind == "key_lengths":
        return {"key_lengths": np.asarray(draw(st.lists(st.integers(0, m), min_size=batch[-1], max_size=batch[-1])),
                                          dtype=np.int64) if batch else np.asarray(draw(st.integers(0, m)))}
    if kind == "bool":
        rows = n if name in ("softmax", "heat") else 1  # the others honour key padding only
        return {"mask": np.asarray(draw(st.lists(st.booleans(), min_size=rows * m, max_size=rows * m)),
                                   bool).reshape(rows, m)}
    return {}


@st.composite
def _cases(draw: Any) -> tuple[str, list[Any], dict[str, Any], bool]:
    name = draw(st.sampled_from(sorted(METHODS)))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=2)))
    low = 0 if METHODS[name].params is None else 1  # the parameter samplers need m >= 1
    n, m = draw(st.integers(0, 6)), draw(st.integers(low, 6))
    d, dv = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(["float64", "float32"]))
    top = 160 if dtype == "float64" else 20
    scale = 10.0 ** draw(st.integers(-3, top))
    kw = _mask_kwargs(draw, name, batch, n, m)
    if kw.get("causal"):
        m = n
        if "key_lengths" in kw:
            kw.pop("key_lengths")
    arrays, opts = _call(name, n, m, d, dv, batch, dtype, draw(st.integers(0, 2 ** 16)), scale=scale)
    poison = draw(st.sampled_from([None, "nan", "inf"]))
    if poison and arrays[0].size:
        arrays[0] = arrays[0].copy()
        arrays[0].reshape(-1)[0] = np.nan if poison == "nan" else np.inf
    return name, arrays, {**opts, **kw}, poison is not None and arrays[0].size > 0


@given(_cases())
def test_fuzz_rule(case: tuple[str, list[Any], dict[str, Any], bool]) -> None:
    name, arrays, kw, poisoned = case
    fn = METHODS[name].function
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            out = fn(*arrays, **kw)
    except (TypeError, ValueError) as exc:
        assert str(exc), "an exception without a message"
        if poisoned:
            assert "finite" in str(exc) or "NaN" in str(exc), str(exc)
        return
    except ArithmeticError as exc:  # a method's documented errors (Nystrom's pseudoinverse)
        assert type(exc).__name__ in DOCUMENTED, repr(exc)
        return
    assert not poisoned, f"{name}: NaN/inf in q accepted by default (check_finite=True)"
    out = np.asarray(out)
    assert out.shape[-2] == arrays[0].shape[-2]
    assert np.all(np.isfinite(out)), f"{name}({kw}): finite inputs gave NaN/inf without an error"
