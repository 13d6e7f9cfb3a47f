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
    "softmax_error_bound", "logit_range",
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
    masked rows differ between libraries: torch SDPA returns NaN, refattn zeros).
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
    """

    name: str
    fn: Callable[..., Any]
    param_names: tuple[str, ...] = ()
    make_params: Callable[[Shape, Any], dict[str, Any]] | None = None
    masks: tuple[str, ...] = ("none",)
    kwargs: frozenset[str] = frozenset()
    options: Mapping[str, Any] = field(default_factory=dict)
    error_bound: Callable[..., dict[str, Any]] | None = None

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
    Eo = E1 + (g(2 * m) + 2 * u) * PV + (g(2 * m) + 3 * u) * absO + floor_o
    capo = (1.0 + g(2 * m) + 3 * u) * CAP + (g(2 * m) + 3 * u) * (PV + absO) + floor_o
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
    _check_format(dtype, "dtype")
    accum_dtype = accum_dtype or default_accum(dtype)
    _check_format(accum_dtype, "accum_dtype")
    _check_format(ref_dtype, "ref_dtype")
    xp, batch = validate_qkv(q, k, v, extra={"mask": mask, "dout": dout, "key_lengths": key_lengths})
    n, d, m, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    s = resolve_scale(scale, d)
    f64 = q.dtype
    spec = make_mask(xp, mask=mask, causal=causal, key_lengths=key_lengths, n=n, m=m, batch=batch, dtype=f64)
    keep_b, bias_b = mask_block(xp, spec, 0, n, 0, m, device(q))
    full = (*batch, n, m)
    Q = xp.broadcast_to(q, (*batch, n, d))
    K = xp.broadcast_to(k, (*batch, m, d))
    V = xp.broadcast_to(v, (*batch, m, dv))
    keep = xp.ones(full, dtype=xp.bool, device=device(q))
    if keep_b is not None:
        keep = keep & keep_b
    S = (Q @ xp.matrix_transpose(K)) * s
    absB = xp.zeros(full, dtype=f64, device=device(q))
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
    O = P @ V
    c: dict[str, Any] = dict(n=n, m=m, d=d, dv=dv, keep=keep, P=P, O=O, V=V, L=L, scale=s, absB=absB,
                             A=abs(s) * (xp.abs(Q) @ xp.matrix_transpose(xp.abs(K))),
                             LmS=xp.where(keep, L - S, 0.0))
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


def _softmax_params(shape: Shape, rng: Any) -> dict[str, Any]:
    return {}


def _builtin_methods() -> None:
    from .methods.softmax import softmax_attention

    register_method(MethodSpec(
        name="softmax", fn=softmax_attention, param_names=(), make_params=_softmax_params,
        masks=MASK_KINDS, kwargs=frozenset({"mask", "causal", "scale", "key_lengths"}),
        error_bound=softmax_error_bound,
    ))
    # Later methods: one register_method(MethodSpec(...)) each, e.g.
    # linear: fn=linear_attention, masks=("none", "causal", "key_lengths"), error_bound=None.


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
