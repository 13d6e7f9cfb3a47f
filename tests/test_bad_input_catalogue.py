"""The bad-input catalogue (issue 13, part 1): every public function x every class of bad input.

Rows are ``(function, input class)`` pairs built from data: ``tests/_catalogue_specs.py`` says how to
call each public function validly, ``tests/_catalogue_classes.py`` how each input class breaks a call.
Each row either

* raises a clear exception whose message names the argument (``Raises``), or
* returns a documented result (``Result``), checked here. The documented contracts:

  - ``views``: non-contiguous, stride-0 broadcast and read-only inputs give results bit-identical to
    those of contiguous, writeable copies (``refattn._xp`` module docstring, "Input contract").
  - ``propagates``: NaN/inf in an input of a function whose ``check_finite`` is off (or that has no
    such option) reach the output, never a finite wrong answer (``refattn._xp``, "Input contract";
    each method's ``check_finite`` parameter); the rows that raise instead check by default.
  - ``empty``: ``n = 0`` gives an output with 0 rows; ``m = 0`` (no keys) gives zero rows, as for
    fully masked rows (softmax module docstring; each method's "Rows that see no key are zero").
  - ``valid``: a shape that is allowed (e.g. m > n for non-causal methods, iterations = 0 for the
    iterative pseudoinverse: ``Z_0``) gives a finite output of the documented shape.

After every call, including the ones that raise, every input is compared byte for byte with a
snapshot taken before the call. Where the function has a registered vjp, the backward pass of the
valid rows runs too (and must not modify the inputs either), and a wrong ``dout`` is its own class.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
import pytest

import refattn
from refattn.methods.nystrom import PinvConvergenceError

from ._catalogue_classes import CLASSES, Case
from ._catalogue_specs import SAMPLERS, SPECS, Spec

pytest.importorskip("array_api_strict")
pytest.importorskip("torch")


@dataclass(frozen=True)
class Raises:
    exc: type[BaseException] | tuple[type[BaseException], ...]
    arg: str | None = None  # regex the message must contain as a word; None: the case's argument
    numpy_warns: bool = False  # NumPy may emit RuntimeWarnings (inf - inf) before the error


@dataclass(frozen=True)
class Result:
    kind: str  # "views" | "propagates" | "empty_n" | "empty_m" | "valid"
    where: str  # where the result is documented


DOC_XP = "refattn._xp module docstring, 'Input contract'"
# Gradients of view inputs: NumPy may pick another matmul kernel for strided operands (another
# summation order), so they agree within rounding rather than bit for bit: each evaluation is within
# ~c u of the exact value, c of the order of the operation count (<= ~200 on these shapes), so
# they differ by <= 2 c u ~ 5e-14 of the result's size; 1e-12 leaves a margin (same as the torch
# agreement in tests/test_determinism.py).
VIEW_GRAD_TOL = 1e-12

_DEFAULTS: dict[str, Any] = {
    "wrong_rank": Raises(ValueError),
    "feature_dim": Raises(ValueError),
    "seq_dim": Raises(ValueError),
    "batch_dim": Raises(ValueError),
    "dtype_int": Raises(TypeError),
    "dtype_bool": Raises(TypeError),
    "dtype_complex": Raises(TypeError),
    "param_dtype": Raises(TypeError),
    "mixed_width": Raises(TypeError),
    "mixed_namespace": Raises(TypeError),
    "mixed_device": Raises(ValueError),
    "mask_shape": Raises(ValueError),
    "mask_dtype": Raises(TypeError),
    "param_shape": Raises(ValueError),
    "k_gt_m": Raises(ValueError),
    "m_gt_n": Result("valid", "each method's docstring: q (..., n, d), k (..., m, d), n and m independent"),
    "non_pow2": Raises(ValueError),
    "size_zero": Raises(ValueError),
    "size_negative": Raises(ValueError),
    "size_float": Raises((ValueError, TypeError)),
    "param_rank": Raises(ValueError),
    "scale_nonfinite": Raises(ValueError),
    "mask_namespace": Raises(TypeError),
    "key_lengths_dtype": Raises(TypeError),
    "nan_input": Result("propagates", DOC_XP),
    "inf_input": Result("propagates", DOC_XP),
    "nan_input_checked": Raises(ValueError),
    "nan_param": Result("propagates", DOC_XP),
    "inf_param": Result("propagates", DOC_XP),
    "nan_input_unchecked": Result("propagates", DOC_XP),
    "inf_input_unchecked": Result("propagates", DOC_XP),
    "nan_param_unchecked": Result("propagates", DOC_XP),
    "inf_param_unchecked": Result("propagates", DOC_XP),
    "empty_n": Result("empty_n", DOC_XP),
    "empty_m": Result("empty_m", "softmax module docstring (rows that see no key are zero); " + DOC_XP),
    "noncontiguous": Result("views", DOC_XP),
    "broadcast_stride0": Result("views", DOC_XP),
    "readonly": Result("views", DOC_XP),
    # issue 21
    "scalar_input": Raises(TypeError),
    "none_input": Raises(TypeError),
    "list_input": Raises(TypeError),
    "none_second": Raises(TypeError),
    "scalar_second": Raises(TypeError),
    "dtype_float16": Result("half", "refattn._registry.Method.dtypes: float16/bfloat16 computed in float32 and "
                                    "cast back"),
    "dtype_bfloat16": Result("half", "refattn._registry.Method.dtypes"),
    "fortran_order": Result("views", DOC_XP),
    "transposed_view": Result("views", DOC_XP),
    "negative_stride": Result("views", DOC_XP),
    "empty_n_strict": Result("empty_n", DOC_XP),
    "empty_m_strict": Result("empty_m", DOC_XP),
    "empty_n_torch": Result("empty_n", DOC_XP),
    "empty_m_torch": Result("empty_m", DOC_XP),
}

_CHECKS_FINITE = Raises(ValueError)  # functions that reject NaN/inf by default (their docstrings)
_PINV_DIVERGES = Raises(PinvConvergenceError, "landmark", numpy_warns=True)  # nystrom docstring: PinvConvergenceError

_OVERRIDES: dict[tuple[str, str], Any] = {
    **{(f, c): _CHECKS_FINITE for f in ("random_feature_attention", "random_feature_attention[causal,hyperbolic]",
                                        "trig_features", "positive_features", "hyperbolic_features",
                                        "heat_attention", "truncate", "orthogonality_penalty", "exact_pinv")
       for c in ("nan_input", "inf_input", "nan_param", "inf_param")},
    **{(f, c): _CHECKS_FINITE for f in ("kernel_attention", "feature_map") for c in ("nan_param", "inf_param")},
    # check_finite=False: what the computation does with the values, each a documented error
    **{(f, c): Raises(ValueError, "normaliser")
       for f in ("random_feature_attention", "random_feature_attention[causal,hyperbolic]")
       for c in ("nan_input_unchecked", "inf_input_unchecked", "nan_param_unchecked", "inf_param_unchecked")},
    ("positive_features", "inf_param_unchecked"): Raises(ValueError, "max_shift"),  # exp overflow, names the fix
    ("hyperbolic_features", "inf_param_unchecked"): Raises(ValueError, "max_shift"),
    ("heat_attention", "nan_input_unchecked"): _CHECKS_FINITE,  # the truncating readings decompose q and k
    ("heat_attention", "inf_input_unchecked"): _CHECKS_FINITE,
    ("kernel_attention", "nan_param_unchecked"): _CHECKS_FINITE,  # weights are always checked (docstring)
    ("kernel_attention", "inf_param_unchecked"): _CHECKS_FINITE,
    ("nystrom_attention", "nan_input_unchecked"): _PINV_DIVERGES,
    ("nystrom_attention", "inf_input_unchecked"): _PINV_DIVERGES,
    ("nystrom_attention[landmarks]", "nan_param_unchecked"): _PINV_DIVERGES,
    ("nystrom_attention[landmarks]", "inf_param_unchecked"): _PINV_DIVERGES,
    ("iterative_pinv", "nan_input"): _PINV_DIVERGES,
    ("iterative_pinv", "inf_input"): _PINV_DIVERGES,
    ("iterative_pinv", "size_zero[iterations]"): Result("valid", "iterative_pinv docstring: iterations >= 0 (0 gives Z_0)"),
    ("nystrom_attention", "size_zero[iterations]"): Result("valid", "nystrom_attention docstring: iterations >= 0"),
    ("random_feature_attention[causal,hyperbolic]", "m_gt_n"): Raises(ValueError, "causal|queries as keys"),
    ("nystrom_attention", "m_gt_n"): Raises(ValueError, "num_landmarks"),
    ("nystrom_attention", "empty_n"): Raises(ValueError, "q"),
    ("nystrom_attention", "empty_m"): Raises(ValueError, "k"),
    ("nystrom_attention[landmarks]", "empty_n"): Raises(ValueError, "q"),
    ("nystrom_attention[landmarks]", "empty_m"): Raises(ValueError, "k"),
    ("heat_attention", "empty_n"): Raises(ValueError, "rank"),  # docstring: 1 <= rank <= min(n, m, d)
    ("heat_attention", "empty_m"): Raises(ValueError, "rank"),
    ("linformer_attention", "empty_m"): Raises(ValueError, "E"),  # docstring: 1 <= k <= m
    ("verma_attention", "empty_m"): Raises(ValueError, "E"),
    ("segment_means", "k_gt_m"): Raises(ValueError, "num_landmarks"),
    ("orthogonality_penalty", "empty_n"): Result("valid", "orthogonality_penalty docstring: ||W^T W - I||_F^2 "
                                                          "(= d_out for an empty W)"),
    ("multi_head_attention", "non_pow2"): Raises(ValueError, "w_v|projection"),
    ("multi_head_attention", "batch_dim"): Raises(ValueError, "w_q"),
    # issue 21
    ("wht_projection", "none_second"): Result("valid", "wht_projection signature: scale and shift may be None"),
    ("exact_pinv", "dtype_float16"): Raises(TypeError, "a"),  # docstring: xp.linalg has no half precision
    ("exact_pinv", "dtype_bfloat16"): Raises(TypeError, "a"),
}


#: NaN/inf rows of a default call: every function with a ``check_finite`` option checks by default
#: (``check_finite=True``, one default for all, SciPy's convention); the ``*_unchecked`` rows pass
#: ``check_finite=False`` and see what the computation itself does with the values
_DEFAULT_CHECKED = ("nan_input", "inf_input", "nan_param", "inf_param")


def _expectation(spec: Spec, cname: str) -> Any:
    """``cname`` may carry an option suffix (``size_zero[chunk]``): overrides may name either."""
    base = cname.split("[")[0]
    for backend in ("_strict", "_torch"):  # the empty rows on other backends: as on NumPy
        if base.endswith(backend):
            base = base.removesuffix(backend)
            cname = base + cname[len(base) + len(backend):]
    default = _CHECKS_FINITE if spec.has_check_finite and base in _DEFAULT_CHECKED else _DEFAULTS[base]
    return _OVERRIDES.get((spec.name, cname), _OVERRIDES.get((spec.name, base), default))


# ------------------------------------------------------------------------------------ helpers

def _host_bytes(a: Any) -> bytes | None:
    if isinstance(a, np.ndarray):
        return np.ascontiguousarray(a).tobytes() + str((a.shape, a.strides, a.dtype)).encode()
    mod = type(a).__module__
    if mod.startswith("torch"):
        import torch

        t = a.detach().cpu()
        t = t.float() if t.dtype == torch.bfloat16 else t  # exact; NumPy has no bfloat16
        return t.numpy().tobytes() + str((tuple(a.shape), a.dtype)).encode()
    if mod.startswith("array_api_strict"):
        return np.asarray(a._array).tobytes() + str(tuple(a.shape)).encode()  # test-only peek
    return None


def _snapshot(args: list[Any], kwargs: dict[str, Any]) -> list[tuple[str, bytes | None]]:
    items = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    return [(name, _host_bytes(a)) for name, a in items]


def _assert_unmodified(before: list[tuple[str, bytes | None]], args: list[Any], kwargs: dict[str, Any]) -> None:
    after = _snapshot(args, kwargs)
    for (name, b0), (_, b1) in zip(before, after, strict=True):
        assert b0 == b1, f"input {name} was modified by the call"


def _names_arg(msg: str, arg: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_])(?:{arg})(?![A-Za-z0-9_])", msg, flags=re.IGNORECASE) is not None


def _first(out: Any) -> Any:
    """The first output of a function with several (``merge_attention``'s ``(out, lse)``)."""
    return out[0] if isinstance(out, tuple) else out


def _np(out: Any) -> np.ndarray:
    out = out[0] if isinstance(out, tuple) else out
    mod = type(out).__module__
    if mod.startswith("torch"):
        import torch

        return out.detach().to(torch.float64).cpu().numpy() if out.is_floating_point() else out.cpu().numpy()
    if mod.startswith("array_api_strict"):
        import array_api_strict as xs

        return np.asarray(xs.asarray(out, copy=True)._array)  # test-only peek
    return np.asarray(out)


def _rows() -> list[Any]:
    rows = []
    for spec in SPECS:
        for cname, cls in CLASSES.items():
            cases = cls(spec)
            if cases is None:
                continue
            for case in cases if isinstance(cases, list) else [cases]:
                suffix = f"[{case.arg}]" if isinstance(cases, list) else ""
                exp = _expectation(spec, cname + suffix)
                rows.append(pytest.param(spec, cname, case, exp, id=f"{spec.name}-{cname}{suffix}"))
    return rows


ROWS = _rows()


# ------------------------------------------------------------------------------------ the table

@pytest.mark.parametrize("spec,cname,case,exp", ROWS)
def test_catalogue_row(spec: Spec, cname: str, case: Case, exp: Any) -> None:
    before = _snapshot(case.args, case.kwargs)
    if isinstance(exp, Raises):
        with pytest.raises(exp.exc) as info, warnings.catch_warnings(), np.errstate(all="ignore"):
            if exp.numpy_warns:
                warnings.simplefilter("ignore", RuntimeWarning)
            spec.fn(*case.args, **case.kwargs)
        _assert_unmodified(before, case.args, case.kwargs)
        arg = exp.arg or re.escape(case.arg)
        assert _names_arg(str(info.value), arg), f"message does not name {arg!r}: {info.value}"
        return
    with warnings.catch_warnings():
        if exp.kind == "propagates":  # NumPy warns on inf - inf etc.: the library's, documented
            warnings.simplefilter("ignore", RuntimeWarning)
        with np.errstate(all="ignore"):
            out = spec.fn(*case.args, **case.kwargs)
            pullback_ok = exp.kind != "propagates" and spec.fn in refattn.registered()
            grads = None
            if pullback_ok:
                o, pb = refattn.vjp(spec.fn, *case.args, **case.kwargs)
                o = o[0] if isinstance(o, tuple) else o
                grads = pb(array_api_compat.array_namespace(o).ones_like(o))
    _assert_unmodified(before, case.args, case.kwargs)
    got = _np(out)
    if exp.kind == "propagates":
        assert not np.all(np.isfinite(got)), "NaN/inf input gave an all-finite output"
    elif exp.kind == "views":
        ref = _np(spec.fn(*case.ref[0], **case.ref[1]))
        np.testing.assert_array_equal(got, ref)
        if grads is not None:  # the backward pass: within rounding (see the contract in refattn._xp)
            o, pb = refattn.vjp(spec.fn, *case.ref[0], **case.ref[1])
            for g, r in zip(grads, pb(np.ones_like(_first(o))), strict=True):
                if g is None or r is None:  # absent optional arguments (mha biases)
                    assert g is None and r is None
                    continue
                g, r = np.asarray(g), np.asarray(r)
                assert np.max(np.abs(g - r), initial=0.0) <= VIEW_GRAD_TOL * np.max(np.abs(r), initial=0.0)
    elif exp.kind == "half":  # finite, of the input's (half) dtype
        o = out[0] if isinstance(out, tuple) else out
        first = case.args[0]
        assert o.dtype == first.dtype, (o.dtype, first.dtype)
        assert np.all(np.isfinite(got))
    elif exp.kind == "empty_n":
        assert got.size == 0
    elif exp.kind == "empty_m":
        n = case.args[0].shape[-2]  # causal forms need n == m, so their m = 0 rows have n = 0 too
        assert got.shape[-2] == n and not np.any(got), "rows that see no key must be zero"
    elif exp.kind == "valid":
        assert np.all(np.isfinite(got))
        if spec.qkv:
            assert got.shape[-2] == case.args[0].shape[-2]
    else:  # pragma: no cover
        raise AssertionError(exp.kind)


# ------------------------------------------------------------------------------------ vjp: bad dout

VJP_SPECS = [s for s in SPECS if s.fn in refattn.registered()]


@pytest.mark.parametrize("spec", VJP_SPECS, ids=[s.name for s in VJP_SPECS])
@pytest.mark.parametrize("bad", ["shape", "dtype", "namespace"])
def test_pullback_rejects_bad_dout(spec: Spec, bad: str) -> None:
    args, kw = spec.build()
    before = _snapshot(args, kw)
    out, pb = refattn.vjp(spec.fn, *args, **kw)
    out = _np(out)
    if bad == "shape":
        dout, exc = np.ones((*out.shape, 1)), ValueError
    elif bad == "dtype":
        dout, exc = np.ones(out.shape, np.float32), ValueError
    else:
        import torch

        dout, exc = torch.ones(out.shape, dtype=torch.float64), TypeError
    with pytest.raises(exc, match="dout"):
        pb(dout)
    _assert_unmodified(before, args, kw)


# ------------------------------------------------------------------------------------ samplers

def _sampler_rows() -> list[Any]:
    rows = []
    for name, fn, sizes in SAMPLERS:
        for key, val in sizes.items():
            bad_vals = [(-1, "negative")]
            if isinstance(val, tuple):
                bad_vals = [((-1, *val[1:]), "negative")]
            rows.append(pytest.param(fn, {**sizes, key: bad_vals[0][0]}, key, id=f"{name}-{key}-negative"))
            if not isinstance(val, tuple):
                rows.append(pytest.param(fn, {**sizes, key: 0}, key, id=f"{name}-{key}-zero"))
                rows.append(pytest.param(fn, {**sizes, key: 2.5}, key, id=f"{name}-{key}-float"))
    return rows


SAMPLER_ROWS = _sampler_rows()


@pytest.mark.parametrize("fn,kw,arg", SAMPLER_ROWS)
def test_sampler_sizes(fn: Any, kw: dict[str, Any], arg: str) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        fn(**kw)
    assert _names_arg(str(info.value), re.escape(arg)), str(info.value)


def test_sampler_rng_is_required() -> None:
    with pytest.raises(ValueError, match="rng must be given"):
        refattn.random.normal((2, 2), rng=None)


# ------------------------------------------------------------------------------------ the count

def test_catalogue_size(capsys: pytest.CaptureFixture[str]) -> None:
    """Print the table's size: rows (function x class) and how many raise vs return a result."""
    kinds = Counter()
    for p in ROWS:
        exp = p.values[3]
        kinds["raise" if isinstance(exp, Raises) else "result"] += 1
    funcs = {p.values[0].name for p in ROWS}
    classes = {p.values[1] for p in ROWS}
    extra = len(VJP_SPECS) * 3 + len(SAMPLER_ROWS) + 1
    with capsys.disabled():
        print(f"\nbad-input catalogue: {len(ROWS)} rows over {len(funcs)} functions x {len(classes)} classes "
              f"({dict(kinds)}); plus {extra} dout/sampler rows")
    assert len(ROWS) >= 400


def test_vjp_rejects_unregistered_function() -> None:
    with pytest.raises(TypeError, match="fn must be a refattn public function"):
        refattn.vjp(lambda q, k, v: q, np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))


def test_every_declared_function_has_a_spec():
    """The catalogue covers every function of the method registry (and every attention method in it)."""
    covered = {s.fn for s in SPECS}
    missing = [f.__name__ for f in refattn.registered() if f not in covered]
    assert not missing, f"declared functions without a catalogue spec: {missing}"
