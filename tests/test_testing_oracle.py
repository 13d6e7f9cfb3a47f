"""refattn as the oracle for other implementations: refattn.testing (assert_attention_close,
attention_error_bound, check_attention, strategies), the pytest plugin, `refattn check` and the
SDPA example.

The two sweeps that validate the default tolerances (see attention_error_bound for the model):

* False alarms: 12 correct implementation/dtype pairs (refattn float16/32/64 and bfloat16 on torch;
  the naive in-dtype implementation float16/32/64 and bfloat16; torch SDPA float16, bfloat16,
  float32, float64) x 50 Hypothesis cases each (every mask kind, logit std 0.25 to 2000, value
  scales 0.1 to 10, default and explicit scale) = N = 600 cases, 2400 compared arrays (out, dq, dk,
  dv); each must pass: 0 of 600.
* Detection: 5 injected bugs x 3 dtypes (float16, float32, float64) x 20 cases each in the regime
  where the bug is observable (refattn.testing.bug_regime): every case must fail: 20 of 20 each.

The tolerance is a worst-case bound, so "cannot fail" is not an issue here: the detection sweep
shows that it does fail whenever the computation is wrong, by the margins the reports print.
examples/tolerance_calibration.py runs the same sweeps at larger N.
"""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

import refattn
from refattn import testing as rt
from refattn.cli import main as cli_main

from .conftest import host_qkv

torch = pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
ALL_MASKS = list(rt.MASK_KINDS)
FA_CASES = 50  # per implementation and dtype (false-alarm sweep)
BUG_CASES = 20  # per bug and dtype (detection sweep)


def sdpa(q, k, v, *, mask=None, causal=False, scale=None, key_lengths=None):
    """torch SDPA in refattn's calling convention."""
    n, m = q.shape[-2], k.shape[-2]
    if key_lengths is not None:
        mask = torch.arange(m) < key_lengths[..., None, None]
    if causal == "bottom_right":
        mask, causal = torch.ones(n, m, dtype=torch.bool).tril(m - n), False
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bool(causal),
                                                            scale=scale)


# ------------------------------------------------------------------------------------------------
# The calibration sweeps
# ------------------------------------------------------------------------------------------------

CORRECT = [
    ("refattn", refattn.softmax_attention, None, "numpy", "float16"),
    ("refattn", refattn.softmax_attention, None, "numpy", "float32"),
    ("refattn", refattn.softmax_attention, None, "numpy", "float64"),
    ("refattn", refattn.softmax_attention, None, "torch", "bfloat16"),
    ("naive", rt.naive_attention, rt.naive_attention_vjp, "numpy", "float16"),
    ("naive", rt.naive_attention, rt.naive_attention_vjp, "numpy", "float32"),
    ("naive", rt.naive_attention, rt.naive_attention_vjp, "numpy", "float64"),
    ("naive", rt.naive_attention, rt.naive_attention_vjp, "torch", "bfloat16"),
    ("sdpa", sdpa, None, "torch", "float16"),
    ("sdpa", sdpa, None, "torch", "bfloat16"),
    ("sdpa", sdpa, None, "torch", "float32"),
    ("sdpa", sdpa, None, "torch", "float64"),
]


@pytest.mark.parametrize(("label", "fn", "vjp", "backend", "dtype"), CORRECT,
                         ids=[f"{c[0]}-{c[3]}-{c[4]}" for c in CORRECT])
def test_no_false_alarm_on_correct_implementations(label, fn, vjp, backend, dtype):
    """Correct implementations never exceed the default tolerance (outputs and gradients)."""
    report = rt.check_attention(fn, backend=backend, dtype=dtype, vjp=vjp, masks=ALL_MASKS, shrink=False,
                                max_examples=FA_CASES, seed=1, scales=(None, 0.3),
                                logit_scales=(1.0, 0.25, 4.0, 16.0, 64.0, 2000.0))
    assert report.n_cases == FA_CASES
    assert report.ok, str(report)
    assert all(r.error == "" and len(r.comparisons) == 4 for r in report.results)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("bug", rt.BUGS)
def test_every_injected_bug_is_caught(bug, dtype):
    """Each bug fails every case of its observable regime, by a margin (err/tol > 1)."""
    fn = functools.partial(rt.naive_attention, bug=bug)
    vjp = functools.partial(rt.naive_attention_vjp, bug=bug)
    report = rt.check_attention(fn, backend="numpy", dtype=dtype, vjp=vjp, max_examples=BUG_CASES, shrink=False,
                                seed=2, **rt.bug_regime(bug))
    seen = [r for r in report.results if rt.bug_observable(bug, r.logits, dtype)]
    assert len(seen) == report.n_cases == BUG_CASES
    missed = [str(r) for r in seen if r.ok]
    assert not missed, "\n".join(missed)


def test_bug_detection_in_bfloat16_on_torch():
    """bfloat16 (u = 2^-8): the scale, mask, overflow and transpose bugs are caught in every case
    (the dropped normaliser can hide under bfloat16's tolerance when one key dominates a row,
    l_i ~ 1.1; it is measured, not asserted, in examples/tolerance_calibration.py)."""
    for bug in ("wrong_scale", "causal_off_by_one", "no_max_shift", "transposed_grad"):
        report = rt.check_attention(functools.partial(rt.naive_attention, bug=bug), backend="torch",
                                    dtype="bfloat16", vjp=functools.partial(rt.naive_attention_vjp, bug=bug),
                                    max_examples=10, shrink=False, seed=3, **rt.bug_regime(bug))
        assert report.n_failed == report.n_cases == 10, (bug, str(report))


def test_naive_implementation_is_correct_in_float64():
    q, k, v = host_qkv(20, n=6, m=7)
    dout = np.random.default_rng(21).standard_normal((2, 3, 6, 5))
    for kw in ({}, {"causal": True}, {"causal": "bottom_right"}):
        out, pb = rt.naive_attention_vjp(q, k, v, **kw)
        ref, rpb = refattn.vjp(refattn.softmax_attention, q, k, v, **kw)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
        for g, r in zip(pb(dout), rpb(dout)):
            np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-12)
    with pytest.raises(ValueError, match="bug must be None or one of"):
        rt.naive_attention(q, k, v, bug="nope")


# ------------------------------------------------------------------------------------------------
# assert_attention_close, host conversion, the error model
# ------------------------------------------------------------------------------------------------

class ArrayOnly:
    """A foreign array type that only speaks __array__."""

    def __init__(self, a):
        self._a = np.asarray(a)
        self.dtype = self._a.dtype
        self.shape = self._a.shape

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


class DLPackOnly:
    """A foreign array type that only speaks DLPack."""

    def __init__(self, a):
        self._a = np.asarray(a)
        self.dtype = self._a.dtype
        self.shape = self._a.shape

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def _case(seed=30, n=8, m=9, d=4, dv=5, dtype="float32"):
    q, k, v = (a.astype(dtype) for a in host_qkv(seed, n=n, m=m, d=d, dv=dv))
    dout = np.random.default_rng(seed + 1).standard_normal((2, 3, n, dv)).astype(dtype)
    return q, k, v, dout


def test_host_conversion_of_any_library():
    import array_api_strict as xs

    from refattn._interop import dtype_name, to_host64

    a = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    t = torch.from_numpy(a.copy()).requires_grad_()
    for x, name in [(a, "float32"), (t, "float32"), (t.to(torch.bfloat16), "bfloat16"),
                    (xs.asarray(a), "float32"), (ArrayOnly(a), "float32"), (DLPackOnly(a), "float32"),
                    (a.astype(np.float16), "float16")]:
        h, src = to_host64(x)
        assert src == name and h.dtype == np.float64 and h.shape == (2, 3)
        exact = a.astype(np.float16) if name == "float16" else a
        if name == "bfloat16":
            exact = t.detach().to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(h, exact.astype(np.float64))
    assert dtype_name(torch.float16) == dtype_name(np.float16) == dtype_name("float16") == "float16"
    with pytest.raises(TypeError, match="must be an array"):
        to_host64([1.0, 2.0], "actual")


def test_assert_attention_close_passes_and_reports():
    q, k, v, _ = _case()
    out32 = refattn.softmax_attention(q, k, v, causal=True)
    ref = refattn.softmax_attention(*(x.astype(np.float64) for x in (q, k, v)), causal=True)
    cmp = rt.assert_attention_close(out32, ref, inputs={"q": q, "k": k, "v": v, "causal": True})
    assert cmp.ok and 0 < cmp.max_ratio < 1 and cmp.dtype == "float32" and cmp.n_bad == 0
    # the same on torch tensors (with grad) and a bfloat16-free foreign type
    cmp2 = rt.assert_attention_close(torch.from_numpy(out32).requires_grad_(), ArrayOnly(ref),
                                     inputs={"q": torch.from_numpy(q), "k": k, "v": v, "causal": True})
    assert cmp2.max_abs == cmp.max_abs
    # a 1% error on one row fails, and the message says everything
    bad = out32.copy()
    bad[1, 2, 3, :] *= 1.01
    with pytest.raises(AssertionError) as info:
        rt.assert_attention_close(bad, ref, inputs=(q, k, v), err_msg="my kernel")
    msg = str(info.value)
    for part in ("my kernel", "FAIL", "out of tolerance", "max abs error", "max rel error",
                 "worst (error/tolerance", "index (1, 2, 3,", "%)", "tolerance: elementwise rounding-error bound",
                 "float32", "d=4", "m=9", "logit"):
        assert part in msg, (part, msg)


def test_assert_attention_close_nans_shapes_dtypes():
    q, k, v, _ = _case()
    ref = refattn.softmax_attention(*(x.astype(np.float64) for x in (q, k, v)))
    out = refattn.softmax_attention(q, k, v)
    bad = out.copy()
    bad[0, 1, 2, 3] = np.nan
    bad[1, 0, 0, 0] = np.nan
    bad[1, 2, 5, 1] = np.inf
    with pytest.raises(AssertionError, match=r"actual has 2 NaN \(first at index \(0, 1, 2, 3\)\); "
                                             r"actual has 1 inf \(first at index \(1, 2, 5, 1\)\)"):
        rt.assert_attention_close(bad, ref, inputs=(q, k, v))
    with pytest.raises(AssertionError, match=r"shape mismatch: actual has shape \(2, 3, 8, 4\), desired"):
        rt.assert_attention_close(out[..., :4], ref)
    with pytest.raises(AssertionError, match="dtype mismatch: actual is float32, but dtype='float16'"):
        rt.assert_attention_close(out, ref, dtype="float16")
    with pytest.raises(TypeError, match="actual must be an array"):
        rt.assert_attention_close(out.tolist(), ref)
    with pytest.raises(TypeError, match="dtype must be one of"):
        rt.assert_attention_close(out.astype(np.int32), ref)
    with pytest.raises(ValueError, match="needs the output cotangent"):
        rt.assert_attention_close(out, ref, inputs=(q, k, v), which="dq")
    with pytest.raises(ValueError, match=r"inputs must be \(q, k, v\)"):
        rt.assert_attention_close(out, ref, inputs=(q, k))
    with pytest.raises(ValueError, match="inputs is missing"):
        rt.assert_attention_close(out, ref, inputs={"q": q, "k": k})
    with pytest.raises(ValueError, match="unknown method 'nope'; known methods: efficient, heat, kernel, linear, linformer, nystrom, random_feature, softmax, verma"):
        rt.assert_attention_close(out, ref, inputs=(q, k, v), method="nope")


def test_explicit_and_nominal_tolerances():
    q, k, v, _ = _case(dtype="float16")
    ref = refattn.softmax_attention(*(x.astype(np.float64) for x in (q, k, v)))
    out = refattn.softmax_attention(q, k, v)
    cmp = rt.assert_attention_close(out, ref, rtol=1e-2, atol=1e-3)
    assert "rtol=0.01, atol=0.001, given by the caller" in cmp.why
    with pytest.raises(AssertionError, match="rtol=0, atol=1e-09, given by the caller"):
        rt.assert_attention_close(out, ref, atol=1e-9)
    cmp = rt.assert_attention_close(out, ref)  # no inputs: the nominal model, stated as such
    assert "NOMINAL" in cmp.why and "m = n = 8" in cmp.why and "pass inputs=" in cmp.why
    # without the data the nominal bound is loose (|logits| <= 10 assumed): it still catches a
    # dropped normaliser-sized error (factor 2) but not every 20% error
    with pytest.raises(AssertionError, match="NOMINAL"):
        rt.assert_attention_close(out * 2, ref)


def test_gradients_through_inputs_dict():
    q, k, v, dout = _case()
    args64 = [x.astype(np.float64) for x in (q, k, v)]
    _, pb64 = refattn.vjp(refattn.softmax_attention, *args64, causal=True)
    _, pb32 = refattn.vjp(refattn.softmax_attention, q, k, v, causal=True)
    inputs = {"q": q, "k": k, "v": v, "causal": True, "dout": dout}
    for name, g, r in zip(("dq", "dk", "dv"), pb32(dout), pb64(dout.astype(np.float64))):
        assert rt.assert_attention_close(g, r, inputs=inputs, which=name).ok
    # dv from the transposed product fails (square case so that the shapes match)
    q, k, v, dout = _case(n=6, m=6)
    _, pb = rt.naive_attention_vjp(q, k, v, bug="transposed_grad")
    _, pb64 = refattn.vjp(refattn.softmax_attention, *(x.astype(np.float64) for x in (q, k, v)))
    with pytest.raises(AssertionError, match="dv: FAIL"):
        rt.assert_attention_close(pb(dout)[2], pb64(dout.astype(np.float64))[2],
                                  inputs={"q": q, "k": k, "v": v, "dout": dout}, which="dv")


def test_error_bound_grows_with_d_m_logits_and_precision():
    """The bound is monotone in what the model says it grows with, on data where the exact result
    is unchanged: zero-padded head dimension (same logits, larger d), every key duplicated (same
    output, m doubled), a constant added to every logit (same weights, larger |logits|), a
    cancelling pair of coordinates (same logits, larger |q_c k_c| sums), and coarser formats."""
    q, k, v = host_qkv(40, batch=(2,), n=5, m=6, d=3, dv=4)

    def bound(q, k, v, dtype="float32", **kw):
        return float(np.max(rt.attention_error_bound(q, k, v, dtype=dtype, **kw)["out"]))

    base = bound(q, k, v, scale=0.5)
    pad = lambda x: np.concatenate([x, np.zeros((*x.shape[:-1], 5))], -1)  # noqa: E731
    assert bound(pad(q), pad(k), v, scale=0.5) > base
    assert bound(q, np.concatenate([k, k], -2), np.concatenate([v, v], -2), scale=0.5) > base
    assert bound(q, k, v, scale=0.5, mask=np.full((5, 6), 30.0)) > base
    c = 3.0
    cq = np.concatenate([q, np.full((2, 5, 2), c)], -1)
    ck = np.concatenate([k, np.stack([np.full((2, 6), c), np.full((2, 6), -c)], -1)], -1)
    np.testing.assert_allclose(cq @ np.swapaxes(ck, -1, -2), q @ np.swapaxes(k, -1, -2), atol=1e-12)
    assert bound(cq, ck, v, scale=0.5) > base
    assert bound(q, k, v, "bfloat16", scale=0.5) > bound(q, k, v, "float16", scale=0.5) > base
    assert base > bound(q, k, v, "float64", scale=0.5) > 0


def test_error_bound_broadcast_and_masks():
    """k, v shared across heads: dk/dv bounds have k/v's shapes; fully masked rows get bound 0."""
    rs = np.random.default_rng(41)
    q = rs.standard_normal((2, 3, 4, 5)).astype(np.float32)
    k, v = rs.standard_normal((2, 1, 6, 5)).astype(np.float32), rs.standard_normal((2, 1, 6, 2)).astype(np.float32)
    dout = rs.standard_normal((2, 3, 4, 2)).astype(np.float32)
    keep = np.ones((4, 6), bool)
    keep[2] = False
    eb = rt.attention_error_bound(q, k, v, dout=dout, mask=keep)
    assert [eb[n].shape for n in ("out", "dq", "dk", "dv")] == [(2, 3, 4, 2), q.shape, k.shape, v.shape]
    # the masked row: only the subnormal floor (refattn returns exact zeros there, NaN fails)
    assert np.all(eb["out"][..., 2, :] < 1e-40) and np.all(eb["out"][..., [0, 1, 3], :] > 1e-9)
    out32, pb = refattn.vjp(refattn.softmax_attention, q, k, v, mask=keep)
    ref, pb64 = refattn.vjp(refattn.softmax_attention, *(x.astype(np.float64) for x in (q, k, v)), mask=keep)
    inputs = {"q": q, "k": k, "v": v, "mask": keep, "dout": dout}
    rt.assert_attention_close(out32, ref, inputs=inputs)
    for name, g, r in zip(("dq", "dk", "dv"), pb(dout), pb64(dout.astype(np.float64))):
        rt.assert_attention_close(g, r, inputs=inputs, which=name)
    with pytest.raises(ValueError, match="dtype must be one of"):
        rt.attention_error_bound(q, k, v, dtype="float8")


# ------------------------------------------------------------------------------------------------
# check_attention
# ------------------------------------------------------------------------------------------------

def test_check_attention_report_and_minimal_case():
    report = rt.check_attention(refattn.softmax_attention, backend="numpy", dtype="float32", max_examples=8)
    assert report.ok and report.n_cases == 8 and report.minimal is None
    text = str(report)
    assert "PASSED: 8 cases" in text and "max err/tol" in text and "dq" in text and "tolerance:" in text
    report.raise_if_failed()
    bad = functools.partial(rt.naive_attention, bug="dropped_normaliser")
    report = rt.check_attention(bad, backend="numpy", dtype="float32", grads=False, max_examples=20)
    assert not report.ok and report.minimal is not None and not report.minimal.ok
    shape = report.minimal.case.shape
    assert shape.m == 2 and shape.n == 1  # shrunk to the smallest case where a normaliser matters
    assert "FAILED" in str(report) and "minimal failing case" in str(report)
    with pytest.raises(AssertionError, match="minimal failing case"):
        report.raise_if_failed()


def test_check_attention_backends_and_routes():
    import array_api_strict  # noqa: F401

    rep = rt.check_attention(refattn.softmax_attention, backend="array_api_strict", dtype="float32",
                             masks=["none", "bool", "key_lengths"], max_examples=5)
    assert rep.ok, str(rep)
    rep = rt.check_attention(sdpa, backend="torch", dtype="float16", masks=["causal"], max_examples=5)
    assert rep.ok and rep.worst()["dq"] < 1, str(rep)
    rep = rt.check_attention(sdpa, backend="torch", dtype="float32", max_examples=5, rtol=1e-4, atol=1e-5,
                             logit_scales=(1.0,), value_scales=(1.0,))
    assert rep.ok and "given by the caller" in str(rep), str(rep)
    rep = rt.check_attention(sdpa, backend="torch", dtype="float32", max_examples=5, atol=1e-12)
    assert not rep.ok and "rtol=0, atol=1e-12, given by the caller" in str(rep)


def test_check_attention_findings():
    """What a broken fn looks like in the report: exceptions, wrong shapes and dtypes, a wrong
    number of cotangents, a non-differentiable torch function."""
    def raises(q, k, v, **kw):
        raise RuntimeError("kernel launch failed")

    rep = rt.check_attention(raises, backend="numpy", grads=False, max_examples=3, shrink=False)
    assert rep.n_failed == 3 and "fn raised RuntimeError: kernel launch failed" in str(rep)
    rep = rt.check_attention(lambda q, k, v, **kw: refattn.softmax_attention(q, k, v, **kw)[..., :1, :],
                             backend="numpy", grads=False, max_examples=2, shrink=False,
                             shapes=[(2, 3, 4, 5)])
    assert not rep.ok and "shape (2, 5), expected (2, 5)" not in str(rep) and "expected (2, 5)" in str(rep)
    rep = rt.check_attention(lambda q, k, v, **kw: refattn.softmax_attention(q, k, v, **kw).astype(np.float64),
                             backend="numpy", dtype="float32", grads=False, max_examples=2)
    assert not rep.ok and "dtype float64, expected float32" in str(rep)

    def two_grads(q, k, v, **kw):
        out, pb = refattn.vjp(refattn.softmax_attention, q, k, v, **kw)
        return out, lambda g: pb(g)[:2]

    rep = rt.check_attention(refattn.softmax_attention, vjp=two_grads, backend="numpy", max_examples=2)
    assert not rep.ok and "pullback returned 2 cotangents, expected 3 (dq, dk, dv)" in str(rep)
    rep = rt.check_attention(lambda q, k, v, **kw: sdpa(q, k, v, **kw).detach(), backend="torch",
                             max_examples=2)
    assert not rep.ok and "does not require grad" in str(rep)


def test_check_attention_bad_arguments():
    f = refattn.softmax_attention
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        rt.check_attention(f, "nope")
    with pytest.raises(ValueError, match="masks must be a non-empty subset"):
        rt.check_attention(f, masks=["sliding_window"])
    with pytest.raises(ValueError, match="backend 'numpy' cannot make bfloat16 arrays"):
        rt.check_attention(f, dtype="bfloat16")
    with pytest.raises(ValueError, match="backend 'array_api_strict' cannot make float16 arrays"):
        rt.check_attention(f, backend="array_api_strict", dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        rt.check_attention(f, dtype="int8")
    with pytest.raises(ValueError, match="grads=True needs a way to differentiate fn"):
        rt.check_attention(rt.naive_attention, backend="numpy")


# ------------------------------------------------------------------------------------------------
# strategies and the method table
# ------------------------------------------------------------------------------------------------

def test_strategies_are_exported():
    from refattn.testing import strategies as rst

    assert rst is rt.strategies and rst.MASK_KINDS == rt.MASK_KINDS
    with pytest.raises(AttributeError):
        rt.no_such_thing  # noqa: B018


@settings(max_examples=20)
@given(case=rt.strategies.cases("softmax"))
def test_generated_cases_keep_a_key_for_every_query(case):
    be = refattn.backends.get("numpy")
    m = rt.materialize(case, be, "float16")
    q, k, v = m.host_args
    sh = case.shape
    assert q.shape == (*sh.batch, sh.n, sh.d) and v.shape == (*sh.batch, sh.m, sh.dv)
    assert all(a.dtype == np.float16 for a in m.args) and m.dout.shape == (*sh.batch, sh.n, sh.dv)
    np.testing.assert_array_equal(m.host_args[0], m.args[0].astype(np.float64))
    out = refattn.softmax_attention(q, k, v, **m.host_kwargs)
    assert np.all(np.isfinite(out))
    _, res = refattn.methods.softmax.forward(q, k, v, **m.host_kwargs)
    assert np.all(np.isfinite(res.lse)), case.describe()  # no fully masked query row


def test_method_table_and_shape_parsing():
    spec = rt.METHODS["softmax"]
    assert spec.fn is refattn.softmax_attention and spec.grad_names == ("dq", "dk", "dv")
    assert set(spec.masks) == set(rt.MASK_KINDS) and spec.error_bound is not None
    assert rt.Shape.parse((2, 3, 4, 5, 6, 7)) == rt.Shape((2, 3), 4, 5, 6, 7)
    assert rt.Shape.parse({"n": 1, "m": 2, "d": 3, "dv": 4}) == rt.Shape((), 1, 2, 3, 4)
    with pytest.raises(ValueError, match=r"\(\*batch, n, m, d, dv\)"):
        rt.Shape.parse((1, 2))
    with pytest.raises(ValueError, match="unknown mask kinds"):
        rt.register_method(rt.MethodSpec("x", refattn.softmax_attention, masks=("window",)))


# ------------------------------------------------------------------------------------------------
# the pytest plugin
# ------------------------------------------------------------------------------------------------

def test_pytest_plugin(tmp_path):
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        from refattn.testing import naive_attention

        def test_good(refattn_check):
            assert refattn_check(naive_attention, masks=["none", "causal"], grads=False).ok

        def test_bad(refattn_check):
            refattn_check(lambda q, k, v, **kw: naive_attention(q, k, v, bug="wrong_scale", **kw),
                          grads=False, shapes=[(4, 4, 8, 2)])

        def test_fixtures(refattn_backend, refattn_dtype):
            assert refattn_backend.name in ("numpy", "torch") and refattn_dtype in ("float32", "bfloat16")
        """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "refattn.pytest_plugin", "-p", "no:cacheprovider", "-rA",
         "--refattn-backend=numpy,torch", "--refattn-dtype=float32,bfloat16", "--refattn-max-examples=5",
         "test_user.py"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    text = proc.stdout + proc.stderr
    assert "refattn: backends=numpy,torch dtypes=float32,bfloat16" in text
    assert "PASSED test_user.py::test_good[refattn-torch-bfloat16]" in text
    assert "PASSED test_user.py::test_good[refattn-numpy-float32]" in text
    assert "SKIPPED" in text and "has no bfloat16" in text  # numpy x bfloat16
    assert "FAILED test_user.py::test_bad[refattn-numpy-float32]" in text
    assert "minimal failing case" in text
    assert "3 failed, 6 passed, 3 skipped" in text, text


# ------------------------------------------------------------------------------------------------
# the CLI
# ------------------------------------------------------------------------------------------------

def _cli(capsys, *argv):
    rc = cli_main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


@pytest.fixture
def dumped(tmp_path, capsys):
    """example inputs (float32, causal) + refattn's outputs and gradients on them."""
    inp = tmp_path / "in.npz"
    rc, text = _cli(capsys, "example-inputs", "softmax", "--out", str(inp), "--shape", "2,3,8,8,4,4")
    assert rc == 0 and "wrote" in text
    f = dict(np.load(inp))
    assert set(f) == {"q", "k", "v", "causal", "dout"} and str(f["causal"]) == "top_left"
    out, pb = refattn.vjp(refattn.softmax_attention, f["q"], f["k"], f["v"], causal=True)
    dq, dk, dv = pb(f["dout"])
    np.savez(tmp_path / "out.npz", out=out)
    np.savez(tmp_path / "grads.npz", dq=dq, dk=dk, dv=dv)
    return tmp_path, f, out, (dq, dk, dv)


def test_cli_check_passes_and_fails(dumped, capsys):
    d, f, out, (dq, dk, dv) = dumped
    rc, text = _cli(capsys, "check", "softmax", "--inputs", str(d / "in.npz"), "--outputs", str(d / "out.npz"),
                    "--grads", str(d / "grads.npz"))
    assert rc == 0, text
    for part in ("quantity", "max abs err", "worst index", "out of tol", "err/tol", "verdict: PASS (4 of 4",
                 "computed in float32", "tolerance: elementwise rounding-error bound"):
        assert part in text
    np.savez(d / "grads_bad.npz", dq=dq, dk=dk, dv=dv[..., ::-1, :])  # rows of dv swapped
    rc, text = _cli(capsys, "check", "softmax", "--inputs", str(d / "in.npz"), "--outputs", str(d / "out.npz"),
                    "--grads", str(d / "grads_bad.npz"))
    assert rc == 1 and "verdict: FAIL (3 of 4" in text and "dv: FAIL" in text
    rc, text = _cli(capsys, "check", "softmax", "--inputs", str(d / "in.npz"), "--outputs", str(d / "out.npz"),
                    "--rtol", "0", "--atol", "1e-30")
    assert rc in (0, 1) and "given on the command line" in text
    # bfloat16 results stored as float32, declared
    rc, text = _cli(capsys, "check", "softmax", "--inputs", str(d / "in.npz"), "--outputs", str(d / "out.npz"),
                    "--dtype", "bfloat16")
    assert rc == 0 and "computed in bfloat16, accumulating in float32" in text


@pytest.mark.parametrize("mask", ["none", "bool", "additive", "key_lengths", "bottom_right"])
def test_cli_example_inputs_round_trip(tmp_path, capsys, mask):
    inp = tmp_path / "in.npz"
    rc, _ = _cli(capsys, "example-inputs", "softmax", "--out", str(inp), "--shape", "2,5,7,3,2",
                 "--mask", mask, "--dtype", "float16", "--scale", "0.5")
    assert rc == 0
    f = dict(np.load(inp))
    kw = {"scale": 0.5}
    if "mask" in f:
        kw["mask"] = f["mask"]
    if "key_lengths" in f:
        kw["key_lengths"] = f["key_lengths"]
    if "causal" in f:
        kw["causal"] = str(f["causal"])
    out = rt.naive_attention(f["q"], f["k"], f["v"], **kw)  # computed in float16
    np.savez(tmp_path / "out.npz", out=out)
    rc, text = _cli(capsys, "check", "softmax", "--inputs", str(inp), "--outputs", str(tmp_path / "out.npz"))
    assert rc == 0, text


def test_cli_bad_input_exits_2(dumped, capsys):
    d, f, out, grads = dumped
    inp, outp = str(d / "in.npz"), str(d / "out.npz")

    def check(*extra, outputs=outp, inputs=inp, method="softmax"):
        return _cli(capsys, "check", method, "--inputs", inputs, "--outputs", outputs, *extra)

    bad = out.copy()
    bad[0, 1, 2, :2] = np.nan
    bad[1, 0, 7, 3] = np.inf
    np.savez(d / "nan.npz", out=bad)
    rc, text = check(outputs=str(d / "nan.npz"))
    assert rc == 2 and "out has 2 NaN of 192 entries (first at (0, 1, 2, 0), (0, 1, 2, 1))" in text
    assert "1 inf" in text and "2 of 48 rows (query positions) affected" in text
    rc, text = check(method="nope")
    assert rc == 2 and "unknown method 'nope'; known methods: efficient, heat, kernel, linear, linformer, nystrom, random_feature, softmax, verma" in text
    np.savez(d / "noout.npz", output=out)
    rc, text = check(outputs=str(d / "noout.npz"))
    assert rc == 2 and "missing key(s) out; it has output" in text
    np.savez(d / "short.npz", out=out[..., :3])
    rc, text = check(outputs=str(d / "short.npz"))
    assert rc == 2 and "shape mismatch: out has shape (2, 3, 8, 3), the inputs give (2, 3, 8, 4)" in text
    np.savez(d / "f16.npz", out=out.astype(np.float16))
    rc, text = check(outputs=str(d / "f16.npz"))
    assert rc == 2 and "dtype mismatch: q float32, k float32, v float32, out float16" in text
    np.savez(d / "noq.npz", **{k: v for k, v in f.items() if k != "dout"})
    rc, text = check("--grads", str(d / "grads.npz"), inputs=str(d / "noq.npz"))
    assert rc == 2 and "missing key(s) dout" in text
    rc, text = check(outputs=str(d / "missing.npz"))
    assert rc == 2 and "does not exist" in text
    (d / "junk.npz").write_text("not an archive")
    rc, text = check(outputs=str(d / "junk.npz"))
    assert rc == 2 and "not a readable .npz archive" in text
    np.savez(d / "int.npz", out=out.astype(np.int32))
    rc, text = check(outputs=str(d / "int.npz"))
    assert rc == 2 and "out must be a float16/float32/float64 array" in text
    rc, text = _cli(capsys, "example-inputs", "nope", "--out", str(d / "x.npz"))
    assert rc == 2 and "unknown method 'nope'" in text


def test_check_help_documents_key_names(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["check", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text  # the help is plain text (refattn._cli_text strips the RST markup)
    for key in ("q", "mask", "causal", "scale", "key_lengths", "dout", "out", "dq"):
        assert re.search(rf"(?<![A-Za-z_]){key}(?![A-Za-z_])", text), key
    assert "exit status" in text.lower()


# ------------------------------------------------------------------------------------------------
# the example
# ------------------------------------------------------------------------------------------------

def test_example_check_torch_sdpa(capsys):
    import importlib.util

    path = ROOT / "examples" / "check_torch_sdpa.py"
    spec = importlib.util.spec_from_file_location("check_torch_sdpa", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--max-examples", "6"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert text.count("PASSED: 6 cases") == 2  # SDPA float32 and float16
    assert "deliberately buggy attention caught" in text and "minimal failing case" in text
    assert "assert_attention_close, torch SDPA float16" in text
    try:
        refattn.backends.get("cupy")
    except refattn.backends.BackendUnavailable:
        assert "CuPy check skipped" in text
    else:  # pragma: no cover - with a GPU
        assert text.count("backend=cupy") == 2


def test_unit_roundoffs():
    assert rt.UNIT_ROUNDOFF["float16"] == np.finfo(np.float16).eps / 2
    assert rt.UNIT_ROUNDOFF["float32"] == np.finfo(np.float32).eps / 2
    assert rt.UNIT_ROUNDOFF["float64"] == np.finfo(np.float64).eps / 2
    assert rt.UNIT_ROUNDOFF["bfloat16"] == torch.finfo(torch.bfloat16).eps / 2
    assert math.isclose(rt.UNIT_ROUNDOFF["float16"], 2**-11)


def test_error_model_and_naive_run_under_array_api_strict():
    """The error model and the naive implementation speak the array API only: array_api_strict
    gives the same bound as NumPy (float64, same operations) and the naive pass runs there."""
    import array_api_strict as xs

    rs = np.random.default_rng(50)
    host = [rs.standard_normal(s) for s in [(2, 5, 4), (2, 6, 4), (2, 6, 3), (2, 5, 3)]]
    keep = rs.random((5, 6)) < 0.8
    keep[:, 0] = True
    strict = [xs.asarray(a) for a in host]
    kw = {"dtype": "float16", "causal": "bottom_right"}
    from refattn._oracle import softmax_error_bound

    b_np = softmax_error_bound(*host[:3], dout=host[3], mask=keep, **kw)
    b_xs = softmax_error_bound(*strict[:3], dout=strict[3], mask=xs.asarray(keep), **kw)
    for name in ("out", "dq", "dk", "dv"):
        np.testing.assert_allclose(np.asarray(b_xs[name]), b_np[name], rtol=1e-12, atol=0)
    f32 = [xs.astype(a, xs.float32) for a in strict]
    out, pb = rt.naive_attention_vjp(*f32[:3], causal=True)
    assert out.dtype == xs.float32 and [tuple(g.shape) for g in pb(f32[3])] == [(2, 5, 4), (2, 6, 4), (2, 6, 3)]


# ------------------------------------------------------------------------------------------------
# every registered method: passes on its own float32 output, fails on planted bugs
# ------------------------------------------------------------------------------------------------

OTHER_METHODS = ["linear", "efficient", "random_feature", "kernel", "linformer", "verma", "heat", "nystrom"]
BUG_SCALE = 1.0 + 2.0**-7  # a wrong scale constant: every logit/feature argument off by 0.8%


def _method_fn(name, bug=None):
    """The registered method with its oracle options, computing in the inputs' dtype; ``bug``
    plants "wrong_scale" (queries times BUG_SCALE) or "dropped_key" (the last value row zeroed)."""
    spec = rt.METHODS[name]

    def prepare(q, k, v):
        if bug == "wrong_scale":
            q = q * BUG_SCALE
        elif bug == "dropped_key":
            v = v.copy()
            v[..., -1, :] = 0
        return q, k, v

    def fn(q, k, v, *params, **kw):
        return spec.fn(*prepare(q, k, v), *params, **spec.options, **kw)

    def vjp(q, k, v, *params, **kw):
        return refattn.vjp(spec.fn, *prepare(q, k, v), *params, **spec.options, **kw)

    return fn, (vjp if spec.grad_bounds else None)


def test_every_method_is_registered():
    from refattn.methods import heat, kernels, linear, linformer, nystrom, random_features

    fns = {"softmax": refattn.softmax_attention, "linear": linear.linear_attention,
           "efficient": linear.efficient_attention, "random_feature": random_features.random_feature_attention,
           "kernel": kernels.kernel_attention, "linformer": linformer.linformer_attention,
           "verma": linformer.verma_attention, "heat": heat.heat_attention, "nystrom": nystrom.nystrom_attention}
    assert set(rt.METHODS) == set(fns)
    for name, fn in fns.items():
        spec = rt.METHODS[name]
        assert spec.fn is fn and spec.error_bound is not None and "none" in spec.masks, name
    assert rt.METHODS["linformer"].grad_names == ("dq", "dk", "dv", "dE", "dF")
    assert rt.METHODS["kernel"].grad_names == ("dq", "dk", "dv", "dw_f0", "dw_g0")


@pytest.mark.parametrize("name", OTHER_METHODS)
def test_registered_method_passes_on_its_own_float32_output(name):
    """Each method computed in float32 (and, with a gradient model, its gradients) is within its
    derived forward rounding bound of its own float64 result, on every mask kind it honours and
    logits up to std 16. (The bounds are worst-case: the measured err/tol stays below ~0.1.)"""
    spec = rt.METHODS[name]
    fn, vjp = _method_fn(name)
    report = rt.check_attention(fn, method=name, dtype="float32", grads=spec.grad_bounds, vjp=vjp,
                                masks=list(spec.masks), max_examples=12, shrink=False, seed=4,
                                logit_scales=(1.0, 0.25, 4.0, 16.0))
    assert report.n_cases == 12 and report.ok, str(report)
    assert all(r.error == "" and len(r.comparisons) == (4 if spec.grad_bounds else 1) for r in report.results)
    worst = max(c.max_ratio for r in report.results for c in r.comparisons)
    assert 0 < worst < 1


@pytest.mark.parametrize("bug", ["wrong_scale", "dropped_key"])
@pytest.mark.parametrize("name", OTHER_METHODS)
def test_registered_method_catches_planted_bug(name, bug):
    """A 2^-7 relative scale error on the queries, or a dropped last key, fails every case in
    float32 (u = 6e-8: the bugs move the output by ~1e-3 relative or more, the tolerances are
    ~1e-6 relative for most methods). The regime where both bugs are observable: no mask, logits
    of std 4 (with std << 1 the scale error is hidden in the rounding; with std >> 4 the softmaxes
    saturate and a scale error changes nothing), at least 3 keys and 2 features (with one key, one
    projected position, or one feature under a feature softmax the output does not depend on the
    queries' scale). Nystrom's bound carries cond(A) of the landmark matrix and is the loosest
    (measured err/tol of a correct float32 run <= 0.01), which is why the bug is 2^-7, not 2^-10."""
    fn, _ = _method_fn(name, bug)
    report = rt.check_attention(fn, method=name, dtype="float32", grads=False, masks=["none"], max_examples=8,
                                shrink=False, seed=5, logit_scales=(4.0,),
                                shapes=rt.strategies.shapes(min_m=3, min_d=2))
    assert report.n_failed == report.n_cases == 8, str(report)
    assert all(r.error == "" for r in report.results)


def test_forward_only_models_refuse_gradient_checks(tmp_path, capsys):
    q, k, v, dout = _case()
    with pytest.raises(ValueError, match="forward error model only"):
        rt.check_attention(refattn.linear_attention, method="linear")
    out = refattn.linear_attention(q, k, v)
    ref = refattn.linear_attention(*(x.astype(np.float64) for x in (q, k, v)))
    assert rt.assert_attention_close(out, ref, inputs=(q, k, v), method="linear").ok
    with pytest.raises(ValueError, match="forward error model only"):
        rt.assert_attention_close(out, ref, inputs={"q": q, "k": k, "v": v, "dout": dout}, which="dq",
                                  method="linear")
    # explicit tolerances still work for the gradients
    report = rt.check_attention(refattn.linear_attention, method="linear", max_examples=3, rtol=1e-3, atol=1e-5)
    assert report.ok, str(report)


def test_cli_checks_a_method_with_parameters(tmp_path, capsys):
    """refattn check for linformer (parameters E, F in the npz): passes on linformer's own float32
    output, fails on the wrong-scale bug, refuses --grads without explicit tolerances."""
    inp = tmp_path / "in.npz"
    rc, text = _cli(capsys, "example-inputs", "linformer", "--out", str(inp), "--shape", "2,6,8,4,3",
                    "--mask", "key_lengths")
    assert rc == 0 and "E (4, 8) float32" in text, text
    f = dict(np.load(inp))
    args = [f[key] for key in ("q", "k", "v", "E", "F")]
    out = refattn.linformer_attention(*args, key_lengths=f["key_lengths"])
    np.savez(tmp_path / "out.npz", out=out)
    rc, text = _cli(capsys, "check", "linformer", "--inputs", str(inp), "--outputs", str(tmp_path / "out.npz"))
    assert rc == 0 and "verdict: PASS" in text, text
    bad = refattn.linformer_attention(args[0] * np.float32(BUG_SCALE), *args[1:], key_lengths=f["key_lengths"])
    np.savez(tmp_path / "bad.npz", out=bad)
    rc, text = _cli(capsys, "check", "linformer", "--inputs", str(inp), "--outputs", str(tmp_path / "bad.npz"))
    assert rc == 1 and "verdict: FAIL" in text, text
    _, pb = refattn.vjp(refattn.linformer_attention, *args, key_lengths=f["key_lengths"])
    np.savez(tmp_path / "grads.npz", **dict(zip(rt.METHODS["linformer"].grad_names, pb(f["dout"]))))
    rc, text = _cli(capsys, "check", "linformer", "--inputs", str(inp), "--outputs", str(tmp_path / "out.npz"),
                    "--grads", str(tmp_path / "grads.npz"))
    assert rc == 2 and "forward error model only" in text, text
