"""The oracle side of :mod:`refattn.testing`: the method table, test cases, and the rounding-error
model behind the default tolerances.

Everything here speaks the array API (``xp = namespace(...)``); the arrays are NumPy float64 on the
host in practice (the oracle precision), but nothing depends on that.

The method table
----------------
:data:`METHODS` maps a method name (the CLI's ``METHOD``, ``check_attention(method=...)``) to a
:class:`MethodSpec`: the public refattn function that is the oracle, the names of its extra
positional parameter arrays (npz keys too), a builder for those parameters, the mask kinds and
keyword arguments it honours, and its error model (``None`` while a method has none: callers must
then give ``rtol``/``atol``). Adding a method is one entry in :func:`_builtin_methods`.

Every method of refattn is registered, each with an error model of the same kind as softmax's (a
first-order elementwise worst-case rounding bound in Higham's model, ``SAFETY`` x (implementation +
float64 reference), derived in each ``*_error_bound`` docstring):

- ``softmax``: :func:`refattn.softmax_attention`; output and gradients.
- ``linear``: :func:`refattn.linear_attention` (elu+1, eps 1e-6); output (kernelized bound).
- ``efficient``: :func:`refattn.efficient_attention` (softmax normalisation); output.
- ``random_feature``: :func:`refattn.random_feature_attention` (FAVOR+ defaults); output.
- ``kernel``: :func:`refattn.kernel_attention` (``kernel="glu"``); output.
- ``linformer``: :func:`refattn.linformer_attention`; output (softmax model plus the projections).
- ``verma``: :func:`refattn.verma_attention`; output (a product of two softmaxes and ``F V``).
- ``heat``: :func:`refattn.heat_attention` (``reading="hadamard"``); output and gradients (softmax
  attention per channel).
- ``nystrom``: :func:`refattn.nystrom_attention` (2 landmarks, ``pinv="exact"``); output (the
  pseudoinverse's perturbation bound, which carries ``cond(A)``).

"out" only: the gradients need explicit ``rtol``/``atol`` (``MethodSpec.grad_bounds`` is False).
The options are fixed because the oracle must compute the same function as the implementation
under test: a user's HEAT with a rank-``r`` truncation, or an iterative-pinv Nystromformer, is
checked with explicit tolerances (or by registering a spec with those options and a model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from . import random as _random
from ._masks import make_mask, mask_block
from ._xp import device, namespace, resolve_scale, unbroadcast, validate_qkv

__all__ = [
    "Shape", "Case", "MethodSpec", "METHODS", "get_method", "register_method", "MASK_KINDS",
    "UNIT_ROUNDOFF", "SAFETY", "default_accum", "Materialized", "materialize", "mask_kwargs",
    "softmax_error_bound", "logit_range", "linear_error_bound", "efficient_error_bound",
    "random_feature_error_bound", "kernel_error_bound", "linformer_error_bound", "verma_error_bound",
    "heat_hadamard_error_bound", "nystrom_error_bound",
]

# ----------------------------------------------------------------------------------------------
# Floating-point formats (IEEE 754 binary16/32/64, bfloat16; TF32 = 10 explicit mantissa bits)
# ----------------------------------------------------------------------------------------------

#: unit roundoff u = 2^-p (p = significand bits incl. the implicit one): |fl(x) - x| <= u |x|
UNIT_ROUNDOFF = MappingProxyType({"float16": 2.0**-11, "bfloat16": 2.0**-8, "tfloat32": 2.0**-11,
                                  "float32": 2.0**-24, "float64": 2.0**-53})
#: smallest positive subnormal: the absolute rounding error below the normal range is <= TINY / 2
TINY = MappingProxyType({"float16": 2.0**-24, "bfloat16": 2.0**-133, "tfloat32": 2.0**-149,
                         "float32": 2.0**-149, "float64": 2.0**-1074})
#: the factor between the first-order bound and the tolerance (see the derivation)
SAFETY = 2.0


def default_accum(dtype: str) -> str:
    """Accumulation format assumed for a computation in ``dtype``: float32 for float16/bfloat16
    (what FlashAttention, cuBLAS/cuDNN with fp32 accumulate, torch's CPU kernels, NumPy's float16
    matmul and refattn do), the format itself otherwise."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def _check_format(name: str, what: str) -> None:
    if name not in UNIT_ROUNDOFF:
        msg = f"{what} must be one of {sorted(UNIT_ROUNDOFF)}, got {name!r}"
        raise ValueError(msg)


def _gamma(k: int, u: float) -> float:
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of a k-term sum; inf when the
    bound is void (k u >= 1/2)."""
    ku = k * u
    return ku / (1.0 - ku) if ku < 0.5 else math.inf


# ----------------------------------------------------------------------------------------------
# Shapes, cases
# ----------------------------------------------------------------------------------------------

class Shape(NamedTuple):
    """Sizes of one attention call: ``q (*batch, n, d)``, ``k (*batch, m, d)``, ``v (*batch, m, dv)``."""

    batch: tuple[int, ...]
    n: int
    m: int
    d: int
    dv: int

    @classmethod
    def parse(cls, obj: Any) -> Shape:
        """A :class:`Shape` from a Shape, a mapping with its fields, or a tuple ``(*batch, n, m, d, dv)``."""
        if isinstance(obj, Shape):
            return obj
        if isinstance(obj, Mapping):
            return cls(tuple(obj.get("batch", ())), int(obj["n"]), int(obj["m"]), int(obj["d"]),
                       int(obj["dv"]))
        try:
            t = tuple(int(x) for x in obj)
        except (TypeError, ValueError):
            t = ()
        if len(t) < 4 or any(x < 0 for x in t):
            msg = f"a shape must be (*batch, n, m, d, dv) with non-negative sizes, got {obj!r}"
            raise ValueError(msg)
        return cls(t[:-4], *t[-4:])

    def __str__(self) -> str:
        b = "x".join(map(str, self.batch)) or "-"
        return f"batch={b} n={self.n} m={self.m} d={self.d} dv={self.dv}"


MASK_KINDS = ("none", "causal", "bottom_right", "bool", "additive", "key_lengths")


@dataclass(frozen=True)
class Case:
    """One generated test case; the arrays are drawn from ``seed`` by :func:`materialize`.

    ``logit_scale``: q and k entries are ``N(0, logit_scale)``, so with the default scale
    ``1/sqrt(d)`` the logits are ``N(0, logit_scale^2)``. ``value_scale``: v entries are
    ``N(0, value_scale^2)``. Masks keep at least one key for every query (conventions for fully
    masked rows differ between libraries: older torch SDPA returned NaN, refattn returns zeros).
    """

    method: str
    shape: Shape
    mask: str = "none"
    scale: float | None = None
    logit_scale: float = 1.0
    value_scale: float = 1.0
    seed: int = 0

    def describe(self) -> str:
        sc = "1/sqrt(d)" if self.scale is None else f"{self.scale:g}"
        return (f"{self.method}: {self.shape}, mask={self.mask}, scale={sc}, "
                f"logit_scale={self.logit_scale:g}, value_scale={self.value_scale:g}, seed={self.seed}")


# ----------------------------------------------------------------------------------------------
# The method table
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodSpec:
    """One row of the method table.

    Attributes
    ----------
    name : the method's name (CLI ``METHOD``).
    fn : the public refattn function (with a registered vjp): the oracle, run in float64.
    param_names : names of the extra positional arrays after ``q, k, v`` (npz keys; their
        cotangents are ``"d" + name``).
    make_params : ``(shape, rng) -> {name: host float64 array}`` drawing those parameters.
    masks : mask kinds the method honours (subset of :data:`MASK_KINDS`).
    kwargs : keyword arguments passed through to ``fn`` (``mask``, ``causal``, ``scale``, ...).
    options : fixed keyword options for the oracle call (e.g. a feature-map name).
    error_bound : ``(q, k, v, *params, out=, dout=, dtype=, accum_dtype=, ref_dtype=, **kw) ->
        {quantity: elementwise bound}`` or ``None`` (no model yet: give ``rtol``/``atol``).
    grad_bounds : whether ``error_bound`` also bounds the gradients (with ``dout``); ``False``: a
        forward model only (gradients need ``rtol``/``atol``).
    adapt_shape : ``(shape, mask_kind) -> shape`` making a drawn shape one the method accepts
        (e.g. ``m = n`` for a causal prefix-sum method), or ``None``.
    """

    name: str
    fn: Callable[..., Any]
    param_names: tuple[str, ...] = ()
    make_params: Callable[[Shape, Any], dict[str, Any]] | None = None
    masks: tuple[str, ...] = ("none",)
    kwargs: frozenset[str] = frozenset()
    options: Mapping[str, Any] = field(default_factory=dict)
    error_bound: Callable[..., dict[str, Any]] | None = None
    grad_bounds: bool = True
    adapt_shape: Callable[[Shape, str], Shape] | None = None

    def missing_model(self, *, grads: bool) -> str | None:
        """Why the error model cannot give the tolerances asked for (``None`` when it can); callers
        append how to give explicit tolerances."""
        if self.error_bound is None:
            return f"method {self.name!r} has no error model yet"
        if grads and not self.grad_bounds:
            return f"method {self.name!r} has a forward error model only (no gradient bound)"
        return None

    @property
    def grad_names(self) -> tuple[str, ...]:
        return ("dq", "dk", "dv", *("d" + p for p in self.param_names))


_METHODS: dict[str, MethodSpec] = {}
METHODS: Mapping[str, MethodSpec] = MappingProxyType(_METHODS)


def register_method(spec: MethodSpec) -> None:
    """Add (or replace) a row of the method table."""
    unknown = set(spec.masks) - set(MASK_KINDS)
    if unknown:
        msg = f"{spec.name}: unknown mask kinds {sorted(unknown)}; known: {MASK_KINDS}"
        raise ValueError(msg)
    _METHODS[spec.name] = spec


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; ``ValueError`` listing the known methods otherwise."""
    if isinstance(name, MethodSpec):
        return name
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        msg = f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}"
        raise ValueError(msg) from None


# ----------------------------------------------------------------------------------------------
# Materialising a case: host float64 arrays, the user's backend arrays, and the exact values seen
# ----------------------------------------------------------------------------------------------

@dataclass
class Materialized:
    """A case's arrays. ``args``/``kwargs``/``dout``: on the user's backend in the tested dtype;
    ``host_args``/``host_kwargs``/``host_dout``: float64 host copies of exactly those values (the
    oracle's inputs, so input rounding is not counted as error)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dout: Any
    host_args: tuple[Any, ...]
    host_kwargs: dict[str, Any]
    host_dout: Any


def mask_kwargs(kind: str, shape: Shape, rng: Any) -> dict[str, Any]:
    """Host (NumPy) keyword arguments of a mask kind; every query keeps at least one key."""
    n, m, batch = shape.n, shape.m, shape.batch
    if kind == "none":
        return {}
    if kind == "causal":
        return {"causal": True}
    if kind == "bottom_right":
        if n > m:
            msg = f"mask kind 'bottom_right' needs n <= m (else the first n - m queries see no key), got {shape}"
            raise ValueError(msg)
        return {"causal": "bottom_right"}
    if kind == "key_lengths":
        lengths = _random.default_rng(rng).integers(1, m + 1, size=batch) if m else None
        return {"key_lengths": lengths}
    u = _random.uniform((*batch, n, m), rng=rng)
    xp = namespace(u)
    i = xp.arange(n)[:, None]
    j = xp.arange(m)[None, :]
    always = j == (i % max(m, 1))  # one key per query that is never masked
    if kind == "bool":
        return {"mask": (u < 0.7) | always}
    if kind == "additive":
        bias = _random.normal((*batch, n, m), rng=rng)
        return {"mask": xp.where((u < 0.2) & ~always, -math.inf, bias)}
    msg = f"unknown mask kind {kind!r}; known: {MASK_KINDS}"
    raise ValueError(msg)


def materialize(case: Case, backend: Any, dtype: str, *, grads: bool = True) -> Materialized:
    """Draw the case's arrays on the host, move them to ``backend`` in ``dtype`` and read back the
    exact values the implementation will see."""
    from ._interop import from_host, to_host64

    spec = get_method(case.method)
    sh = case.shape
    rs = _random.default_rng(case.seed)
    a = math.sqrt(case.logit_scale)
    host = [a * rs.standard_normal((*sh.batch, sh.n, sh.d)), a * rs.standard_normal((*sh.batch, sh.m, sh.d)),
            case.value_scale * rs.standard_normal((*sh.batch, sh.m, sh.dv))]
    if spec.make_params is not None:
        params = spec.make_params(sh, rs)
        host += [params[p] for p in spec.param_names]
    hkw = mask_kwargs(case.mask, sh, rs)
    dout = rs.standard_normal((*sh.batch, sh.n, sh.dv)) if grads else None
    args = tuple(from_host(h, backend, dtype) for h in host)
    kwargs: dict[str, Any] = {}
    for key, val in hkw.items():
        if key == "mask":
            floating = val.dtype != namespace(val).bool
            kwargs[key] = from_host(val, backend, dtype if floating else None)
        elif key == "key_lengths":
            kwargs[key] = backend.asarray(val)
        else:
            kwargs[key] = val
    if case.scale is not None:
        kwargs["scale"] = case.scale
    dout_b = from_host(dout, backend, dtype) if grads else None
    host_args = tuple(to_host64(x)[0] for x in args)
    host_kwargs = dict(kwargs)
    if "mask" in kwargs:
        m = kwargs["mask"]
        host_kwargs["mask"] = hkw["mask"] if hkw["mask"].dtype == namespace(hkw["mask"]).bool else to_host64(m)[0]
    if "key_lengths" in kwargs:
        host_kwargs["key_lengths"] = hkw["key_lengths"]
    host_dout = to_host64(dout_b)[0] if grads else None
    return Materialized(args, kwargs, dout_b, host_args, host_kwargs, host_dout)


# ----------------------------------------------------------------------------------------------
# The rounding-error model of softmax attention (derivation: refattn.testing.attention_error_bound)
# ----------------------------------------------------------------------------------------------

def _model_terms(xp: Any, c: dict[str, Any], u: float, ua: float, tiny: float,
                 with_grads: bool) -> dict[str, Any]:
    """First-order elementwise error bounds of one computation with storage roundoff ``u``,
    accumulation roundoff ``ua`` and subnormal spacing ``tiny``; ``c`` holds the exact quantities."""
    n, m, d, dv = c["n"], c["m"], c["d"], c["dv"]
    keep, P, O, V, L = c["keep"], c["P"], c["O"], c["V"], c["L"]
    s = abs(c["scale"])
    g = lambda k: _gamma(k, ua)  # noqa: E731
    zero = xp.zeros_like(P)
    eta = (g(d) + 5 * u) * c["A"] + 2 * u * c["absB"] + u * c["LmS"] + 3 * u
    for k_len, a_extra in c.get("eta_extra", ()):  # further logit errors (e.g. a projection's products)
        eta = eta + g(k_len) * a_extra
    eta = xp.where(keep, eta, zero)
    live = P > 0  # keys with a (float64-)nonzero weight
    big = 50.0  # exponents are clamped here: e^50 - 1 already voids the model (keeps inf/NaN out)
    epsbar = xp.sum(xp.where(live, P * xp.expm1(xp.minimum(eta, big)), zero), axis=-1, keepdims=True)
    okrow = epsbar < 0.5
    lam = xp.where(okrow, -xp.log1p(-xp.where(okrow, epsbar, 0.0)), big)
    lam = lam + g(2 * m) + 2 * u + ua * xp.abs(L)
    rho = xp.expm1(xp.minimum(eta + lam, big)) + u
    # W_ij >= |p^_ij - p_ij|; both weights lie in [0, 1 + 2u], which caps W where the model is void
    W = xp.where(live, xp.minimum(P * rho, 1.0 + 2 * u), zero)
    # sum_j W_ij |v_jc - o_ic| and max_j keep_ij |v_jc - o_ic|, in query chunks (memory)
    batch = tuple(P.shape[:-2])
    per_row = max(1, math.prod(batch) * m * dv)
    chunk = max(1, 2**22 // per_row)
    e1, cap = [], []
    Vx = xp.expand_dims(V, axis=-3)  # (..., 1, m, dv)
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        diff = xp.abs(Vx - xp.expand_dims(O[..., i0:i1, :], axis=-2))  # (..., ci, m, dv)
        w = xp.expand_dims(W[..., i0:i1, :], axis=-1)
        kp = xp.expand_dims(keep[..., i0:i1, :], axis=-1)
        e1.append(xp.sum(xp.where(kp, w * diff, 0.0), axis=-2))
        cap.append(xp.max(xp.where(kp, diff, 0.0), axis=-2) if m else xp.zeros_like(O[..., i0:i1, :]))
    E1 = xp.concat(e1, axis=-2) if e1 else xp.zeros_like(O)
    CAP = xp.concat(cap, axis=-2) if cap else xp.zeros_like(O)
    absV, absO = xp.abs(V), xp.abs(O)
    keepf = xp.astype(keep, P.dtype)
    PV = P @ absV
    floor_o = tiny * (1.0 + keepf @ absV)
    extra_o = xp.zeros_like(O)
    for k_len, pv_extra in c.get("out_extra", ()):  # errors of the values themselves, weighted by P
        extra_o = extra_o + g(k_len) * pv_extra
    Eo = E1 + (g(2 * m) + 2 * u) * PV + (g(2 * m) + 3 * u) * absO + floor_o + extra_o
    capo = (1.0 + g(2 * m) + 3 * u) * CAP + (g(2 * m) + 3 * u) * (PV + absO) + floor_o + extra_o
    Eo = xp.minimum(Eo, capo)
    out = {"out": Eo}
    if not with_grads:
        return out
    G, Q, K = c["G"], c["Q"], c["K"]
    absG, absQ, absK = xp.abs(G), xp.abs(Q), xp.abs(K)
    mT = xp.matrix_transpose
    dP = G @ mT(V)
    theta = g(dv) * (absG @ mT(absV)) + u * xp.abs(dP)
    delta = xp.sum(O * G, axis=-1, keepdims=True)
    omega1 = xp.sum(Eo * absG, axis=-1, keepdims=True) + (g(dv) + u) * xp.sum(xp.abs(O * G), axis=-1,
                                                                                keepdims=True)
    omega2 = (xp.sum(W * xp.abs(dP), axis=-1, keepdims=True) + xp.sum((P + W) * theta, axis=-1, keepdims=True)
              + (g(2 * m) + u) * xp.sum(P * xp.abs(dP), axis=-1, keepdims=True))
    omega = xp.maximum(omega1, omega2)
    dmd = xp.abs(dP - delta)
    DS = P * (dP - delta)
    Delta = W * dmd + xp.where(keep, 3 * u * P * dmd + (P + W) * (theta + omega), zero)
    absDS = xp.abs(DS)
    dQ, dK, dV = c["dQ"], c["dK"], c["dV"]
    spread = 1.0 + xp.max(xp.where(keep, dmd, 0.0)) if m and n else 1.0
    Edq = (s * (Delta @ absK) + (g(2 * m) + 4 * u) * s * (absDS @ absK) + u * xp.abs(dQ)
           + tiny * (1.0 + s * spread * (keepf @ absK)))
    Edk = (s * (mT(Delta) @ absQ) + (g(2 * n) + 4 * u) * s * (mT(absDS) @ absQ) + u * xp.abs(dK)
           + tiny * (1.0 + s * spread * (mT(keepf) @ absQ)))
    Edv = (mT(W) @ absG + (g(2 * n) + 2 * u) * (mT(P) @ absG) + u * xp.abs(dV)
           + tiny * (1.0 + mT(keepf) @ absG))
    out.update(dq=Edq, dk=Edk, dv=Edv)
    return out


def _check_formats(dtype: str, accum_dtype: str | None, ref_dtype: str) -> str:
    """Validate the three format names; returns the accumulation format (defaulted)."""
    _check_format(dtype, "dtype")
    accum_dtype = accum_dtype or default_accum(dtype)
    _check_format(accum_dtype, "accum_dtype")
    _check_format(ref_dtype, "ref_dtype")
    return accum_dtype


def _keep_bias(xp: Any, q: Any, k: Any, batch: tuple[int, ...], *, mask: Any, causal: Any,
               key_lengths: Any) -> tuple[Any, Any]:
    """The full ``(*batch, n, m)`` boolean keep matrix of a call and its additive bias (or None)."""
    n, m = q.shape[-2], k.shape[-2]
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch,
                     dtype=q.dtype)
    keep_b, bias_b = mask_block(xp, spec, 0, n, 0, m, device(q))
    keep = xp.ones((*batch, n, m), dtype=xp.bool, device=device(q))
    return (keep if keep_b is None else keep & keep_b), bias_b


def _softmax_exact(xp: Any, Q: Any, K: Any, V: Any, keep: Any, bias_b: Any, s: float) -> dict[str, Any]:
    """The exact (float64) quantities of softmax attention on full-batch ``Q, K, V`` that the error
    model needs (``keep`` also drops ``-inf`` bias entries)."""
    n, d, m, dv = Q.shape[-2], Q.shape[-1], K.shape[-2], V.shape[-1]
    full = tuple(keep.shape)
    S = (Q @ xp.matrix_transpose(K)) * s
    absB = xp.zeros(full, dtype=Q.dtype, device=device(Q))
    if bias_b is not None:
        B = xp.broadcast_to(bias_b, full)
        keep = keep & xp.isfinite(B)
        S = S + xp.where(keep, B, 0.0)
        absB = xp.where(keep, xp.abs(B), 0.0)
    has = xp.any(keep, axis=-1, keepdims=True)
    Sm = xp.where(keep, S, -math.inf)
    mx = xp.where(has, xp.max(Sm, axis=-1, keepdims=True) if m else 0.0, 0.0)
    E = xp.where(keep, xp.exp(xp.where(keep, S - mx, 0.0)), 0.0)
    ell = xp.sum(E, axis=-1, keepdims=True)
    ell1 = xp.where(has, ell, 1.0)
    P = E / ell1
    L = xp.where(has, mx + xp.log(ell1), 0.0)
    return dict(n=n, m=m, d=d, dv=dv, keep=keep, P=P, O=P @ V, V=V, L=L, scale=s, absB=absB,
                A=abs(s) * (xp.abs(Q) @ xp.matrix_transpose(xp.abs(K))), LmS=xp.where(keep, L - S, 0.0))


def softmax_error_bound(q: Any, k: Any, v: Any, /, *, dtype: str, dout: Any = None, mask: Any = None,
                        causal: Any = False, scale: float | None = None, key_lengths: Any = None,
                        accum_dtype: str | None = None, ref_dtype: str = "float64",
                        **_ignored: Any) -> dict[str, Any]:
    """Elementwise tolerances ``{"out": ..., "dq": ..., "dk": ..., "dv": ...}`` for softmax attention
    computed in ``dtype`` (accumulating in ``accum_dtype``) against a reference in ``ref_dtype``.

    ``q, k, v, dout, mask`` are the exact (float64) values the implementation saw. The derivation
    is in :func:`refattn.testing.attention_error_bound`; the result is
    ``SAFETY * (bound(dtype, accum_dtype) + bound(ref_dtype, ref_dtype))``.
    """
    accum_dtype = _check_formats(dtype, accum_dtype, ref_dtype)
    xp, batch = validate_qkv(q, k, v, extra={"mask": mask, "dout": dout, "key_lengths": key_lengths})
    n, d, m, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    s = resolve_scale(scale, d)
    keep, bias_b = _keep_bias(xp, q, k, batch, mask=mask, causal=causal, key_lengths=key_lengths)
    Q = xp.broadcast_to(q, (*batch, n, d))
    K = xp.broadcast_to(k, (*batch, m, d))
    V = xp.broadcast_to(v, (*batch, m, dv))
    c = _softmax_exact(xp, Q, K, V, keep, bias_b, s)
    keep, P, O = c["keep"], c["P"], c["O"]
    with_grads = dout is not None
    if with_grads:
        G = xp.broadcast_to(dout, (*batch, n, dv))
        dP = G @ xp.matrix_transpose(V)
        DS = P * (dP - xp.sum(O * G, axis=-1, keepdims=True))
        c.update(G=G, Q=Q, K=K, dQ=s * (DS @ K), dK=s * (xp.matrix_transpose(DS) @ Q),
                 dV=xp.matrix_transpose(P) @ G)
    impl = _model_terms(xp, c, UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF[accum_dtype], TINY[dtype], with_grads)
    ref = _model_terms(xp, c, UNIT_ROUNDOFF[ref_dtype], UNIT_ROUNDOFF[ref_dtype], TINY[ref_dtype], with_grads)
    bounds = {key: SAFETY * (impl[key] + ref[key]) for key in impl}
    if with_grads:  # broadcast leading dimensions: the gradient is a further sum over copies
        ua = UNIT_ROUNDOFF[accum_dtype]
        for key, arg, full_g in (("dq", q, c["dQ"]), ("dk", k, c["dK"]), ("dv", v, c["dV"])):
            copies = math.prod(full_g.shape) // max(1, math.prod(arg.shape))
            e = unbroadcast(xp, bounds[key], arg.shape)
            if copies > 1:
                e = e + SAFETY * _gamma(copies, ua) * unbroadcast(xp, xp.abs(full_g), arg.shape)
            bounds[key] = e
    return bounds


# ----------------------------------------------------------------------------------------------
# Forward error models of the other methods (same kind as softmax's: first-order elementwise
# worst-case bounds from Higham's model, SAFETY x (implementation + float64 reference))
# ----------------------------------------------------------------------------------------------

def _both_formats(dtype: str, accum_dtype: str | None, ref_dtype: str,
                  one: Callable[[float, float, float], dict[str, Any]]) -> dict[str, Any]:
    """``SAFETY * (one(dtype's u, accum's u, tiny) + one(ref's u, ref's u, tiny))`` per quantity."""
    accum = _check_formats(dtype, accum_dtype, ref_dtype)
    impl = one(UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF[accum], TINY[dtype])
    ref = one(UNIT_ROUNDOFF[ref_dtype], UNIT_ROUNDOFF[ref_dtype], TINY[ref_dtype])
    return {key: SAFETY * (impl[key] + ref[key]) for key in impl}


def _full(xp: Any, batch: tuple[int, ...], *arrays: Any) -> list[Any]:
    return [xp.broadcast_to(a, (*batch, *a.shape[-2:])) for a in arrays]


def _prologue(q: Any, k: Any, v: Any, mask: Any, causal: Any, key_lengths: Any,
              params: dict[str, Any] | None = None) -> tuple[Any, tuple[int, ...], Any, Any, Any, Any]:
    """``(xp, batch, keep, Q, K, V)``: validated inputs, the full keep matrix, full-batch arrays."""
    xp, batch = validate_qkv(q, k, v, extra={**(params or {}), "mask": mask, "key_lengths": key_lengths})
    keep, _ = _keep_bias(xp, q, k, batch, mask=mask, causal=causal, key_lengths=key_lengths)
    return (xp, batch, keep, *_full(xp, batch, q, k, v))


def _key_keep(xp: Any, keep: Any) -> Any:
    """``(..., 1, m)``: the keys that some query keeps (the key-padding vector of a padding-only or
    causal keep matrix)."""
    return xp.any(keep, axis=-2, keepdims=True)


def _kernelized_bound(xp: Any, fq: Any, fk: Any, eq: Any, ek: Any, V: Any, keep: Any, gk: float, u: float,
                      tiny: float, eps: float | None) -> Any:
    r"""First-order bound of ``out = (a V) / (a 1 + eps)``, ``a_ij = keep_ij fq_i . fk_j`` (``eps=None``:
    no normaliser, ``out = a V``), for features known to ``eq``, ``ek`` (absolute, elementwise) and
    every sum and product of depth at most ``K`` (``gk = gamma_K``):
    ``|da_ij| <= T_ij = keep_ij (gk |fq_i|.|fk_j| + eq_i.|fk_j| + |fq_i|.ek_j)``,
    ``E_num = T |V|``, ``E_den = T 1 + u den``, ``E_out = (E_num + |out| E_den) / (den - E_den) + u|out|``
    (void, ``inf``, where ``E_den >= den / 2``; rows with ``den = 0`` must be exactly 0)."""
    mT = xp.matrix_transpose
    absq, absk, absV = xp.abs(fq), xp.abs(fk), xp.abs(V)
    n_feat = fq.shape[-1]
    a = xp.where(keep, fq @ mT(fk), 0.0)
    # every feature, product and sum may also under/overflow to the subnormal range: tiny each
    eq, ek = eq + tiny, ek + tiny
    T = xp.where(keep, gk * (absq @ mT(absk)) + eq @ mT(absk) + absq @ mT(ek) + (n_feat + 2) * tiny, 0.0)
    floor = tiny * (1.0 + xp.astype(keep, V.dtype) @ (absV + 1.0))
    num = a @ V
    e_num = T @ absV + floor
    if eps is None:
        return e_num + u * xp.abs(num)
    den = xp.sum(a, axis=-1, keepdims=True) + eps
    e_den = xp.sum(T, axis=-1, keepdims=True) + u * xp.abs(den) + tiny
    nz = den != 0
    out = xp.where(nz, num / xp.where(nz, den, 1.0), 0.0)
    ok = xp.abs(den) > 2 * e_den
    e = (e_num + xp.abs(out) * e_den) / xp.where(ok, xp.abs(den) - e_den, 1.0) + u * xp.abs(out)
    return xp.where(nz, xp.where(ok, e, math.inf), floor)


def _softmax_rows(xp: Any, S: Any, keep: Any, axis: int = -1) -> tuple[Any, Any]:
    """``(P, |S - max|)``: the softmax of ``S`` along ``axis`` over the kept entries (0 elsewhere, and
    0 for a slice without kept entries)."""
    has = xp.any(keep, axis=axis, keepdims=True)
    mx = xp.max(xp.where(keep, S, -math.inf), axis=axis, keepdims=True)
    mx = xp.where(has, mx, 0.0)
    E = xp.where(keep, xp.exp(xp.where(keep, S - mx, 0.0)), 0.0)
    ell = xp.sum(E, axis=axis, keepdims=True)
    return E / xp.where(has, ell, 1.0), xp.where(keep, xp.abs(S - mx), 0.0)


def _softmax_rel(xp: Any, P: Any, eta: Any, L: int, u: float, ua: float, axis: int = -1) -> Any:
    r"""Relative error bound of each softmax weight whose argument errs by ``eta`` (its exp included):
    ``eta_j + sum_k p_k eta_k + gamma_L + u`` (the normaliser's sum of ``L`` terms and the division)."""
    return eta + xp.sum(P * eta, axis=axis, keepdims=True) + _gamma(L, ua) + u


def linear_error_bound(q: Any, k: Any, v: Any, /, *, dtype: str, dout: Any = None, mask: Any = None,
                       causal: Any = False, scale: float | None = None, key_lengths: Any = None,
                       accum_dtype: str | None = None, ref_dtype: str = "float64",
                       **_ignored: Any) -> dict[str, Any]:
    r"""Forward tolerance ``{"out": ...}`` of :func:`refattn.linear_attention` (``feature_map="elu+1"``,
    ``eps = 1e-6``) computed in ``dtype``.

    Features ``phi(x) = x + 1`` (``x > 0``) or ``e^x``, ``x = s q`` (``s = 1`` unless given): the
    scaling errs by ``u|x|``, which moves ``phi`` by ``u |x| phi'(x)`` (``phi' = 1`` or ``e^x``), and
    ``x + 1`` or ``exp`` with its storage by ``3u phi``; keys are not scaled. Every weight
    ``a_ij = phi(q_i) . phi(k_j)`` and every entry of ``a V`` and ``a 1`` is a sum of at most
    ``K = m + D + 4`` rounded terms (the ``D``-term inner products, the ``m``-term sums, plain or in
    the causal chunks, and the products), so the normalised assembly errs by
    :func:`_kernelized_bound` with ``gamma_K``: ``E = (E_num + |out| E_den) / (den - E_den) + u|out|``.
    """
    xp, batch, keep, Q, K, V = _prologue(q, k, v, mask, causal, key_lengths)
    d, m = q.shape[-1], k.shape[-2]
    s = 1.0 if scale is None else resolve_scale(scale, d)
    from .methods.linear import _elu1

    x = Q * s
    fq, fk = _elu1(xp, x), _elu1(xp, K)
    slope = xp.where(x > 0, 1.0, fq)

    def one(u: float, ua: float, tiny: float) -> dict[str, Any]:
        eq = 3 * u * fq + (u * xp.abs(x) * slope if s != 1.0 else 0.0)
        return {"out": _kernelized_bound(xp, fq, fk, eq, 3 * u * fk, V, keep, _gamma(m + d + 4, ua), u, tiny,
                                         1e-6)}

    return _both_formats(dtype, accum_dtype, ref_dtype, one)


def efficient_error_bound(q: Any, k: Any, v: Any, /, *, dtype: str, dout: Any = None, mask: Any = None,
                          causal: Any = False, scale: float | None = None, key_lengths: Any = None,
                          accum_dtype: str | None = None, ref_dtype: str = "float64",
                          **_ignored: Any) -> dict[str, Any]:
    r"""Forward tolerance of :func:`refattn.efficient_attention` (``normalization="softmax"``).

    ``rho_q`` is a softmax over the ``d`` features of ``x = s q`` and ``rho_k`` a softmax over the
    kept positions of ``k``: an argument that errs by ``eta`` (``u|x - max|`` for the shift, ``u|x|``
    for the scaling when ``s != 1``, ``3u`` for ``exp`` and its storage) gives the relative weight error
    ``eta_j + sum_k p_k eta_k + gamma_L + u`` (:func:`_softmax_rel`, ``L = d`` or ``m``). Then
    ``out = rho_q (rho_k^T V)`` (no normaliser) errs by ``T |V| + u|out|`` with sums of depth
    ``K = m + d + 2`` (:func:`_kernelized_bound` with ``eps=None``).
    """
    xp, batch, keep, Q, K, V = _prologue(q, k, v, mask, causal, key_lengths)
    d, m = q.shape[-1], k.shape[-2]
    s = 1.0 if scale is None else resolve_scale(scale, d)
    x = Q * s
    rq, aq = _softmax_rows(xp, x, xp.ones(x.shape, dtype=xp.bool, device=device(x)))
    kcol = xp.matrix_transpose(_key_keep(xp, keep))  # (..., m, 1)
    kcol_full = xp.broadcast_to(kcol, K.shape)
    rk, ak = _softmax_rows(xp, K, kcol_full, axis=-2)

    def one(u: float, ua: float, tiny: float) -> dict[str, Any]:
        eta_q = u * aq + 3 * u + (u * xp.abs(x) if s != 1.0 else 0.0)
        eq = _softmax_rel(xp, rq, eta_q, d, u, ua) * rq
        ek = _softmax_rel(xp, rk, u * ak + 3 * u, m, u, ua, axis=-2) * rk
        return {"out": _kernelized_bound(xp, rq, rk, eq, ek, V, keep, _gamma(m + d + 2, ua), u, tiny, None)}

    return _both_formats(dtype, accum_dtype, ref_dtype, one)


def random_feature_error_bound(q: Any, k: Any, v: Any, w: Any, /, *, dtype: str, dout: Any = None,
                               mask: Any = None, causal: Any = False, scale: float | None = None,
                               key_lengths: Any = None, accum_dtype: str | None = None,
                               ref_dtype: str = "float64", **_ignored: Any) -> dict[str, Any]:
    r"""Forward tolerance of :func:`refattn.random_feature_attention` (defaults: positive features,
    ``kernel="softmax"``, stabilised, no ``normalize``).

    Features ``exp(t - c) / sqrt(D)``, ``t = x W^T - |x|^2/2``, ``x = sqrt(s) q`` (or ``k``); ``c`` is
    the row maximum (queries) or the maximum over the kept keys (keys), a common factor of a row or of
    a batch element that cancels in the ratio, so its own error does not count. The exponent errs by
    ``(gamma_d + 4u) (|x| |W|^T) + (gamma_d + 7u) |x|^2/2 + u|t|`` (the product, ``sqrt(s)`` and its
    rounding on ``x``, ``x * x`` and its sum, the subtraction), the shift by ``u|t - c|``, ``exp``,
    ``1/sqrt(D)`` and storage by ``4u``: a relative feature error ``eps_t``. Then the normalised
    assembly (``eps = 0``) as :func:`_kernelized_bound` with ``K = m + D + 4``.
    """
    xp, batch, keep, Q, K, V = _prologue(q, k, v, mask, causal, key_lengths, {"W": w})
    d, m = q.shape[-1], k.shape[-2]
    n_freq = w.shape[-2]
    s = resolve_scale(scale, d)
    root = math.sqrt(s)
    mT = xp.matrix_transpose

    def parts(x: Any, kept: Any) -> tuple[Any, Any, Any, Any, Any]:
        sq = xp.sum(x * x, axis=-1, keepdims=True) * 0.5
        t = x @ mT(w) - sq
        axes = (-1,) if kept is None else (-2, -1)
        tt = t if kept is None else xp.where(kept, t, -math.inf)
        has = xp.any(xp.isfinite(tt), axis=axes, keepdims=True)
        c = xp.where(has, xp.max(tt, axis=axes, keepdims=True), 0.0)
        f = xp.exp(t - c) / math.sqrt(n_freq)
        if kept is not None:
            f = xp.where(kept, f, 0.0)
        return f, xp.abs(x) @ mT(xp.abs(w)), sq, xp.abs(t), xp.abs(t - c)

    kcol = xp.broadcast_to(xp.matrix_transpose(_key_keep(xp, keep)), (*K.shape[:-1], 1))
    fq, xwq, sqq, atq, acq = parts(Q * root, None)
    fk, xwk, sqk, atk, ack = parts(K * root, kcol)

    def one(u: float, ua: float, tiny: float) -> dict[str, Any]:
        g = _gamma(d, ua)
        eq = ((g + 4 * u) * xwq + (g + 7 * u) * sqq + u * atq + u * acq + 4 * u) * fq
        ek = ((g + 4 * u) * xwk + (g + 7 * u) * sqk + u * atk + u * ack + 4 * u) * fk
        return {"out": _kernelized_bound(xp, fq, fk, eq, ek, V, keep, _gamma(m + n_freq + 4, ua), u, tiny,
                                         0.0)}

    return _both_formats(dtype, accum_dtype, ref_dtype, one)


def kernel_error_bound(q: Any, k: Any, v: Any, w_f: Any, w_g: Any, /, *, dtype: str, dout: Any = None,
                       mask: Any = None, causal: Any = False, scale: float | None = None,
                       key_lengths: Any = None, accum_dtype: str | None = None, ref_dtype: str = "float64",
                       **_ignored: Any) -> dict[str, Any]:
    r"""Forward tolerance of :func:`refattn.kernel_attention` with one GLU output unit (``kernel="glu"``).

    ``phi(x) = Softplus(a) sigmoid(b)``, ``a = x W_f``, ``b = x W_g``: ``a`` errs by
    ``da = gamma_d (|x||W_f|) + u|a|`` (``b`` alike); ``Softplus`` has slope ``sigmoid(a) <= 1`` and is
    evaluated (``max``, ``exp``, ``log1p``, ``+``) within ``5u Softplus(a)`` (``log1p(e) >= e/(1+e)``),
    ``sigmoid`` has slope ``sigmoid(b)(1 - sigmoid(b))`` and is evaluated within ``4u sigmoid(b)``,
    the product adds ``u``: ``|dphi| <= sigmoid(b)(sigmoid(a) da + 5u Softplus(a))
    + phi ((1 - sigmoid(b)) db + 5u)``. Then the assembly (``eps = 0``) as :func:`_kernelized_bound`
    with ``K = m + D + 4``.
    """
    xp, batch, keep, Q, K, V = _prologue(q, k, v, mask, causal, key_lengths, {"w_f0": w_f, "w_g0": w_g})
    d, m, n_feat = q.shape[-1], k.shape[-2], w_f.shape[-1]

    from .methods.kernels import _sigmoid, _softplus

    def parts(x: Any) -> tuple[Any, ...]:
        a, b = x @ w_f, x @ w_g
        sp, sa, sb = _softplus(xp, a)[0], _sigmoid(xp, a)[0], _sigmoid(xp, b)[0]
        return sp * sb, sp, sa, sb, xp.abs(x) @ xp.abs(w_f) + 0.0, xp.abs(x) @ xp.abs(w_g), xp.abs(a), xp.abs(b)

    pq, pk = parts(Q), parts(K)

    def err(p: tuple[Any, ...], u: float, g: float) -> Any:
        f, sp, sa, sb, xa, xb, aa, ab = p
        da, db = g * xa + u * aa, g * xb + u * ab
        return sb * (sa * da + 5 * u * sp) + f * ((1.0 - sb) * db + 5 * u)

    def one(u: float, ua: float, tiny: float) -> dict[str, Any]:
        g = _gamma(d, ua)
        return {"out": _kernelized_bound(xp, pq[0], pk[0], err(pq, u, g), err(pk, u, g), V, keep,
                                         _gamma(m + n_feat + 4, ua), u, tiny, 0.0)}

    return _both_formats(dtype, accum_dtype, ref_dtype, one)


def linformer_error_bound(q: Any, k: Any, v: Any, e: Any, f: Any, /, *, dtype: str, dout: Any = None,
                          mask: Any = None, causal: Any = False, scale: float | None = None,
                          key_lengths: Any = None, accum_dtype: str | None = None,
                          ref_dtype: str = "float64", **_ignored: Any) -> dict[str, Any]:
    r"""Forward tolerance of :func:`refattn.linformer_attention`: softmax attention's model
    (:func:`softmax_error_bound`) on ``(q, E K, F V)`` (padded keys zeroed first), plus the errors of
    the projections: ``|d(EK)| <= gamma_m |E||K|`` adds ``gamma_m |s| |Q| (|E||K|)^T`` to every
    logit's error, and ``|d(FV)| <= gamma_m |F||V|`` adds ``gamma_m P (|F||V|)`` to the output's."""
    xp, batch, keep, Q, K, V = _prologue(q, k, v, mask, causal, key_lengths, {"E": e, "F": f})
    n, d, m = q.shape[-2], q.shape[-1], k.shape[-2]
    s = resolve_scale(scale, d)
    kcol = xp.matrix_transpose(_key_keep(xp, keep))
    K, V = xp.where(kcol, K, 0.0), xp.where(kcol, V, 0.0)
    kp, vp = e @ K, f @ V
    keep_p = xp.ones((*batch, n, kp.shape[-2]), dtype=xp.bool, device=device(q))
    c = _softmax_exact(xp, Q, kp, vp, keep_p, None, s)
    eabs = xp.abs(e) @ xp.abs(K)
    c["eta_extra"] = [(m, abs(s) * (xp.abs(Q) @ xp.matrix_transpose(eabs)))]
    c["out_extra"] = [(m, c["P"] @ (xp.abs(f) @ xp.abs(V)))]
    accum = _check_formats(dtype, accum_dtype, ref_dtype)
    impl = _model_terms(xp, c, UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF[accum], TINY[dtype], False)
    ref = _model_terms(xp, c, UNIT_ROUNDOFF[ref_dtype], UNIT_ROUNDOFF[ref_dtype], TINY[ref_dtype], False)
    return {"out": SAFETY * (impl["out"] + ref["out"])}


def verma_error_bound(q: Any, k: Any, v: Any, e: Any, f: Any, /, *, dtype: str, dout: Any = None,
                      mask: Any = None, causal: Any = False, scale: float | None = None, key_lengths: Any = None,
                      accum_dtype: str | None = None, ref_dtype: str = "float64",
                      **_ignored: Any) -> dict[str, Any]:
    r"""Forward tolerance of :func:`refattn.verma_attention`: ``out = H L X`` with ``H`` the softmax of
    ``s q`` over features, ``L`` the row softmax of ``s (E K)^T`` over the ``k`` projected positions and
    ``X = F V`` (padded keys zeroed first). Weight errors as in :func:`_softmax_rel` (``H``: arguments
    err by ``u|x - max| + u|x| + 3u``; ``L``: by ``gamma_m |s| (|E||K|)^T + 2u|y| + u|y - max| + 3u``),
    ``|dX| <= gamma_m |F||V|``; the product of two non-negative matrices and ``X`` (either association)
    errs by ``((H (eps_H + gamma_{d+k+2})) L + H (L eps_L)) |X| + H L |dX| + u|out|``."""
    xp, batch, keep, Q, K, V = _prologue(q, k, v, mask, causal, key_lengths, {"E": e, "F": f})
    d, m = q.shape[-1], k.shape[-2]
    s = resolve_scale(scale, d)
    mT = xp.matrix_transpose
    kcol = mT(_key_keep(xp, keep))
    K, V = xp.where(kcol, K, 0.0), xp.where(kcol, V, 0.0)
    x = Q * s
    y = mT(e @ K) * s  # (..., d, k)
    kk = y.shape[-1]
    H, ah = _softmax_rows(xp, x, xp.ones(x.shape, dtype=xp.bool, device=device(x)))
    L, al = _softmax_rows(xp, y, xp.ones(y.shape, dtype=xp.bool, device=device(y)))
    X = f @ V
    yerr = abs(s) * mT(xp.abs(e) @ xp.abs(K))
    xerr = xp.abs(f) @ xp.abs(V)
    HL = H @ L
    out = HL @ X

    def one(u: float, ua: float, tiny: float) -> dict[str, Any]:
        eps_h = _softmax_rel(xp, H, u * ah + u * xp.abs(x) + 3 * u, d, u, ua)
        eps_l = _softmax_rel(xp, L, _gamma(m, ua) * yerr + 2 * u * xp.abs(y) + u * al + 3 * u, kk, u, ua)
        g = _gamma(d + kk + 2, ua)
        e_out = (((H * (eps_h + g)) @ L + H @ (L * eps_l)) @ xp.abs(X) + HL @ (_gamma(m, ua) * xerr)
                 + u * xp.abs(out) + tiny * (1.0 + HL @ xp.abs(X)))
        return {"out": e_out}

    return _both_formats(dtype, accum_dtype, ref_dtype, one)


def heat_hadamard_error_bound(q: Any, k: Any, v: Any, /, *, dtype: str, dout: Any = None, mask: Any = None,
                              causal: Any = False, scale: float | None = None, key_lengths: Any = None,
                              accum_dtype: str | None = None, ref_dtype: str = "float64",
                              **_ignored: Any) -> dict[str, Any]:
    r"""Tolerances (output and gradients) of :func:`refattn.heat_attention` with
    ``reading="hadamard"``: channel ``c`` is softmax attention of ``q[..., c]``, ``k[..., c]``,
    ``v[..., c]`` (head dimension 1, the full-width scale ``s``), so the bound is
    :func:`softmax_error_bound` per channel."""
    xp, _ = validate_qkv(q, k, v, extra={"mask": mask, "dout": dout, "key_lengths": key_lengths})
    s = resolve_scale(scale, q.shape[-1])
    parts = [softmax_error_bound(q[..., c:c + 1], k[..., c:c + 1], v[..., c:c + 1], dtype=dtype,
                                 dout=None if dout is None else dout[..., c:c + 1], mask=mask, causal=causal,
                                 scale=s, key_lengths=key_lengths, accum_dtype=accum_dtype, ref_dtype=ref_dtype)
             for c in range(q.shape[-1])]
    return {key: xp.concat([p[key] for p in parts], axis=-1) for key in parts[0]}


#: landmarks of the registered Nystromformer oracle
from .methods.nystrom import ORACLE_LANDMARKS as NYSTROM_LANDMARKS  # noqa: E402


def nystrom_error_bound(q: Any, k: Any, v: Any, /, *, dtype: str, dout: Any = None, mask: Any = None,
                        causal: Any = False, scale: float | None = None, key_lengths: Any = None,
                        accum_dtype: str | None = None, ref_dtype: str = "float64",
                        **_ignored: Any) -> dict[str, Any]:
    r"""Forward tolerance of :func:`refattn.nystrom_attention` with ``num_landmarks=2``,
    ``pinv="exact"``, no mask: ``out = F (Z (B V))``, ``Z = A^+``.

    Landmarks (segment means) err by ``(gamma_n + u)`` times the segment means of ``|q|``, ``|k|``; each
    logit ``s x . y`` by ``|s| ((gamma_d + 2u)|x|.|y| + dx.|y| + |x|.dy) + u|S|``; each softmax weight
    relatively by :func:`_softmax_rel`. The pseudoinverse of the ``2 x 2`` (in general ``r x r``)
    ``A``: first order ``dZ = -Z dA Z``, plus the SVD's backward error ``||dA||_2 <= gamma_{10 r}
    ||A||_F`` (an assumed constant for LAPACK's "modest" ``p(r)``: stated, not proven) and the product
    ``V diag(1/sigma) U^T`` (``gamma_{r+2}``): ``|dZ| <= |Z| (|dA| + beta 1 1^T) |Z| + gamma_{r+2}
    |V| diag(1/sigma) |U|^T``. Valid while ``A`` is well conditioned (no singular value cut by
    ``pinv``'s ``rtol``; ``|Z|`` carries ``cond(A)``). Products: ``d(BV) <= |dB||V| + gamma_m |B||V|``,
    ``dY <= |dZ||BV| + |Z| d(BV) + gamma_r |Z||BV|``, ``dout <= |dF||Y| + F dY + gamma_r F|Y| + u|out|``.
    """
    from .methods.nystrom import segment_means

    xp, _, _, Q, K, V = _prologue(q, k, v, mask, causal, key_lengths)
    n, d, m = q.shape[-2], q.shape[-1], k.shape[-2]
    r = NYSTROM_LANDMARKS
    s = resolve_scale(scale, d)
    mT = xp.matrix_transpose
    qt, kt = segment_means(Q, r), segment_means(K, r)
    aqt, akt = segment_means(xp.abs(Q), r), segment_means(xp.abs(K), r)

    def soft(x: Any, y: Any) -> tuple[Any, Any, Any]:
        S = (x @ mT(y)) * s
        P, a = _softmax_rows(xp, S, xp.ones(S.shape, dtype=xp.bool, device=device(S)))
        return P, a, S

    F_, aF, SF = soft(Q, kt)
    A, aA, SA = soft(qt, kt)
    B, aB, SB = soft(qt, K)
    Z = xp.linalg.pinv(A)
    uu, sig, vh = xp.linalg.svd(A, full_matrices=False)
    zprod = xp.abs(mT(vh)) @ (xp.abs(mT(uu)) / sig[..., :, None])
    normA = xp.sqrt(xp.sum(A * A, axis=(-2, -1), keepdims=True))
    absZ, absV = xp.abs(Z), xp.abs(V)
    BV = B @ V
    Y = Z @ BV
    out = F_ @ Y

    def one(u: float, ua: float, tiny: float) -> dict[str, Any]:
        gl = _gamma(max(n, m), ua) + u
        dqt, dkt = gl * aqt, gl * akt
        g2 = _gamma(d, ua) + 2 * u

        def rel(x: Any, dx: Any, y: Any, dy: Any, S: Any, a: Any, P: Any, L: int) -> Any:
            ax, ay = xp.abs(x), xp.abs(y)
            eta = abs(s) * (g2 * (ax @ mT(ay)) + dx @ mT(ay) + ax @ mT(dy)) + u * xp.abs(S) + u * a + 3 * u
            return _softmax_rel(xp, P, eta, L, u, ua) * P

        dF = rel(Q, 0.0 * Q, kt, dkt, SF, aF, F_, r)
        dA = rel(qt, dqt, kt, dkt, SA, aA, A, r)
        dB = rel(qt, dqt, K, 0.0 * K, SB, aB, B, m)
        beta = _gamma(10 * r, ua) * normA
        dZ = absZ @ (dA + beta) @ absZ + _gamma(r + 2, ua) * zprod
        dBV = dB @ absV + _gamma(m, ua) * (B @ absV)
        dY = dZ @ xp.abs(BV) + absZ @ dBV + _gamma(r, ua) * (absZ @ xp.abs(BV))
        e_out = dF @ xp.abs(Y) + F_ @ dY + _gamma(r, ua) * (F_ @ xp.abs(Y)) + u * xp.abs(out) + tiny
        return {"out": e_out}

    return _both_formats(dtype, accum_dtype, ref_dtype, one)


def _from_registry(method: Any) -> MethodSpec:
    """The oracle's row of a declared :class:`refattn._registry.Method`."""
    masks = method.oracle_masks or method.masks
    kwargs = {kw for kind, kw in (("causal", "causal"), ("bottom_right", "causal"), ("bool", "mask"),
                                  ("additive", "mask"), ("key_lengths", "key_lengths"), ("key_lengths", "mask"))
              if kind in masks and kw in method.options}
    if method.has_scale:
        kwargs.add("scale")
    make = None
    if method.params is not None:
        def make(shape: Shape, rng: Any, _m: Any = method) -> dict[str, Any]:
            sizes = {"batch": shape.batch, "n": shape.n, "m": shape.m, "d": shape.d, "dv": shape.dv}
            return _m.make_params(sizes, rng)
    return MethodSpec(name=method.name, fn=method.function, param_names=method.param_names, make_params=make,
                      masks=masks, kwargs=frozenset(kwargs), options=dict(method.oracle_options),
                      error_bound=method.error_bound(), grad_bounds=method.grad_error_model,
                      adapt_shape=method.adapt_shape)


def _builtin_methods() -> None:
    from ._registry import methods

    for method in methods().values():
        register_method(_from_registry(method))


_builtin_methods()


def logit_range(q: Any, k: Any, /, *, mask: Any = None, causal: Any = False, scale: float | None = None,
                key_lengths: Any = None, **_ignored: Any) -> tuple[float, float]:
    """``(min, max)`` of the scaled logits ``s q.k + b`` over the kept entries (``(0, 0)`` if none)."""
    xp = namespace(q, k)
    n, d, m = q.shape[-2], q.shape[-1], k.shape[-2]
    if not (n and m):
        return 0.0, 0.0
    s = resolve_scale(scale, d)
    S = (q @ xp.matrix_transpose(k)) * s
    batch = tuple(S.shape[:-2])
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch, dtype=q.dtype)
    keep, bias = mask_block(xp, spec, 0, n, 0, m, device(q))
    if bias is not None:
        S = S + bias
    ok = xp.isfinite(S)
    if keep is not None:
        ok = ok & keep
    if not bool(xp.any(ok)):
        return 0.0, 0.0
    return float(xp.min(xp.where(ok, S, math.inf))), float(xp.max(xp.where(ok, S, -math.inf)))
