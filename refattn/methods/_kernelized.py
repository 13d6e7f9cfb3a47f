r"""The normalised kernelized-attention core shared by every feature-map method.

Given features already computed (``phi_q = phi(Q)``, ``phi_k = phi(K)``: linear attention's
elementwise maps (:mod:`.linear`), random features (:mod:`.random_features`, whose exponent
stabiliser is applied to the features before they get here), trainable kernels (:mod:`.kernels`)),
this module evaluates

.. math::

    \text{out}_i = \frac{\phi_{q,i}^\top S_i}{\phi_{q,i}^\top z_i + \varepsilon},
    \qquad S_i = \sum_{j \in J(i)} \phi_{k,j}\, v_j^\top, \qquad z_i = \sum_{j \in J(i)} \phi_{k,j},

with ``J(i)`` every kept key (non-causal) or the kept keys ``j <= i + offset`` (causal), and returns
the cotangents of ``phi_q``, ``phi_k`` and ``v``: the caller chains them through its feature map.

Shapes: ``phi_q (..., n, D)``, ``phi_k (..., m, D)``, ``v (..., m, dv)`` -> ``out (..., n, dv)``;
leading dimensions broadcast. ``D`` (the feature dimension) need not equal the head dimension.

How it is computed
------------------
The numerator and the normaliser are one product: with ``C = [V, 1]`` (``v`` with a column of
ones appended, ``(..., m, dv + 1)``), ``phi_q (phi_k^T C)`` holds ``phi_q^T S`` in its first ``dv``
columns and ``phi_q^T z`` in the last. Non-causal: two matmuls, ``O((n + m) D dv)`` time and
``O(D dv)`` state. Causal: :func:`refattn.methods._prefix.causal_dot` (the one shared chunked
prefix-sum kernel) on ``(phi_q, phi_k, C)``, extra memory ``O(chunk^2 + chunk (D + dv) + D dv)``
per batch element, never ``O(n D dv)``. Causal alignment follows :mod:`refattn._masks`
(``True``/``"top_left"``: ``j <= i``; ``"bottom_right"``: ``j <= i + m - n``); for ``n != m`` the
sequences are aligned by zero-padding (zero feature rows contribute nothing) or truncation (keys no
query can see) before the kernel, so the kernel always runs on a square ``j' <= i'`` problem.

Key padding (``key_keep (..., m)``, ``True`` = keep) zeroes the rows of ``phi_k`` of dropped keys
(as fast-transformers does), which removes them from both ``S`` and ``z``.

eps and non-positive normalisers
--------------------------------
``eps >= 0`` is added to the normaliser, ``r_i = phi_q,i^T z_i + eps`` (the placement of the
official fast-transformers code, ``1 / (phi(Q) . sum phi(K) + eps)``; the paper's formula has no eps).
For non-negative features ``r_i >= eps``. ``eps_placement="prefix"`` adds ``eps`` to every component
of the key sum instead, ``r_i = phi_q,i^T (z_i + eps 1) = phi_q,i^T z_i + eps sum_l phi_q,il`` (the
placement of performer-pytorch's causal path, ``k.cumsum(dim=-2) + eps``); its backward adds
``eps * dr_i`` to every component of ``dphi_q,i``. ``r_i == 0`` with a zero numerator (a query that sees no
key, or every feature product underflowing with ``eps = 0``) is the *empty row*: output zeros and
zero gradient, as ``softmax_attention`` returns for fully masked rows. A normaliser ``r_i < 0``, or
``r_i == 0`` with a non-zero numerator, can only come from sign-indefinite features (``"identity"``,
a user map): the ratio is then not a weighted average and may be arbitrarily large. The failure
policy ``errors`` (:mod:`refattn._checks`) decides: ``"raise"`` (default: ``ValueError`` naming how
many rows), ``"warn"`` (``RuntimeWarning``, the ratio is returned as computed, singular rows as
zeros) or ``"ignore"``.

That is the ``normalizer="nonzero"`` rule (linear attention, trainable kernels). The
``normalizer="positive"`` rule (random features, whose sin/cos estimates can be negative and whose
exponentials can under/overflow) uses a row only when ``r_i > 0``, ``r_i`` finite and its numerator
finite; a row that sees no kept key *by construction* (every key padded away, ``m = 0``, or, causal,
every kept key after ``i + offset``) is an empty row (zeros, zero gradient, never reported), and every
other row is *invalid*: by default it returns zeros with zero gradient as well (the fallback
``zero_invalid=True``; ``False`` returns the ratio as computed), and ``errors`` decides whether that
is an error (``"raise"``), a ``RuntimeWarning`` (``"warn"``) or silent (``"ignore"``). The caller
may word the report (``message(xp, bad, r) -> str``, ``bad (..., n)`` the reported rows, ``r`` the
normalisers) and choose its exception (``error``).

Options arrive resolved in a :class:`CoreOptions` (the core validates nothing). The one
data-dependent step is :func:`_check_normalizers` (the row rule and its report), called once per
forward pass; with ``errors="ignore"`` it reads no value back to the host beyond the test that
picks the one-division fast path.

Backward (``G = [dout / r, -delta / r]``, ``delta_i = out_i . dout_i``; rows with ``r_i == 0`` get
``G_i = 0``): with ``A = phi_q (phi_k^T C)`` the augmented product,
non-causal ``dphi_q = G (phi_k^T C)^T``, ``d(phi_k^T C) = phi_q^T G``, ``dphi_k = C d(.)^T``,
``dC = phi_k d(.)``; causal: :func:`refattn.methods._prefix.causal_dot_backward` (reverse prefix
sums). ``dv = dC[..., :dv]``; rows of dropped keys get ``dphi_k = 0``.

Forward cost (one broadcast batch element; conventions of :mod:`refattn.cost`), with ``e = dv + 1``:
non-causal ``2 m D e + 2 n D e`` (matmuls) ``+ n`` (eps, added even when it is 0) ``+ n dv``
(division) flops; causal: the cost of ``causal_dot`` on the aligned length (:func:`causal_dot_flops`)
``+ n + n dv``. No transcendentals (the row checks, including the integer search for the first kept
key of the ``"positive"`` rule, are comparisons: 0 flops).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .._checks import report
from .._masks import _causal_offset
from .._xp import device, is_lazy, namespace, unbroadcast
from ._prefix import DEFAULT_CHUNK, _causal_dot, causal_dot_backward

__all__ = ["kernelized_forward", "kernelized_backward", "KernelizedResiduals", "CoreOptions",
           "kernelized_flops", "causal_dot_flops", "NORMALIZER_RULES", "EPS_PLACEMENTS", "DEFAULT_CHUNK"]

NORMALIZER_RULES = ("nonzero", "positive")
#: where eps enters the normaliser: ``phi_q . z + eps`` or ``phi_q . (z + eps 1)`` (performer-pytorch, causal)
EPS_PLACEMENTS = ("normalizer", "prefix")


class KernelizedResiduals(NamedTuple):
    """What :func:`kernelized_backward` needs."""

    phi_q: Any  # aligned (causal: front-padded) features, (..., L, D) or (..., n, D)
    phi_k: Any  # masked (and aligned) key features
    c: Any  # [v, 1], masked rows irrelevant (phi_k is zero there)
    state: Any  # phi_k^T C (non-causal) or None
    out: Any  # (..., n, dv)
    r: Any  # (..., n) normaliser + eps
    valid: Any  # (..., n) bool: rows whose ratio is returned (the others are zeros, zero gradient)
    key_keep: Any
    offset: int | None  # causal offset, None when non-causal
    pad_q: int  # rows prepended to phi_q (causal alignment)
    pad_k: int  # rows prepended to phi_k
    chunk: int
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # phi_q, phi_k, v as given
    prefix_eps: float = 0.0  # eps of eps_placement="prefix" (0 otherwise)


def _pad_rows(xp: Any, x: Any, front: int, length: int) -> Any:
    """``x`` with ``front`` zero rows prepended, then truncated or zero-padded to ``length`` rows."""
    dev = device(x)
    if front:
        x = xp.concat([xp.zeros((*x.shape[:-2], front, x.shape[-1]), dtype=x.dtype, device=dev), x], axis=-2)
    if x.shape[-2] > length:
        x = x[..., :length, :]
    elif x.shape[-2] < length:
        extra = length - x.shape[-2]
        x = xp.concat([x, xp.zeros((*x.shape[:-2], extra, x.shape[-1]), dtype=x.dtype, device=dev)], axis=-2)
    return x


def _unpad_rows(xp: Any, g: Any, front: int, rows: int) -> Any:
    """Adjoint of :func:`_pad_rows`: rows ``front : front + rows`` of ``g`` (zeros where truncated)."""
    avail = g.shape[-2] - front
    if avail < rows:
        g = _pad_rows(xp, g, 0, front + rows)
    return g[..., front:front + rows, :]


def _alignment(offset: int, n: int, m: int) -> tuple[int, int, int]:
    """``(pad_q, pad_k, length)``: prepend rows so that query ``i`` sees key ``j`` iff ``j' <= i'``."""
    pad_q, pad_k = max(offset, 0), max(-offset, 0)
    return pad_q, pad_k, n + pad_q


def _empty_rows(xp: Any, keep: Any, n: int, m: int, offset: int | None, dev: Any) -> Any:
    """Rows that see no kept key by construction, ``(..., n)`` bool (broadcasting against the
    normalisers); ``None`` when there are none. Causal: row ``i`` sees keys ``j <= i + offset``, so it
    is empty iff the first kept key comes after ``i + offset``."""
    if m == 0:
        return xp.ones((n,), dtype=xp.bool, device=dev)
    rows = xp.arange(n, device=dev)
    if keep is None:
        return None if offset is None or offset >= 0 else rows + offset < 0
    if offset is None:
        return ~xp.any(keep, axis=-1, keepdims=True)
    first = xp.min(xp.where(keep, xp.arange(m, device=dev), m), axis=-1, keepdims=True)  # (..., 1)
    return first > rows + offset


@dataclass(frozen=True)
class CoreOptions:
    """The core's options, resolved by the calling method (the core validates nothing).

    ``errors`` is the failure policy of the normaliser check (:mod:`refattn._checks`); ``normalizer``
    the rule deciding which rows are reported (``"nonzero"`` or ``"positive"``, see the module
    docstring); ``zero_invalid`` the fallback: reported rows return zeros with zero gradient
    (``True``) or the ratio as computed (``False``; rows with a zero normaliser are zeros either way).
    ``message(xp, bad, r) -> str`` and ``error`` let the caller word the report and pick the exception.
    """

    causal: Any = False
    chunk: int = DEFAULT_CHUNK
    eps: float = 1e-6
    errors: str = "raise"
    normalizer: str = "nonzero"
    zero_invalid: bool | None = None  # None: the rule's own fallback (nonzero: ratio, positive: zeros)
    message: Callable[[Any, Any, Any], str] | None = None
    error: type[Exception] = ValueError
    method: str = "kernelized attention"
    eps_placement: str = "normalizer"  # EPS_PLACEMENTS: r = phi_q.z + eps, or phi_q.(z + eps 1) ("prefix")


def _check_normalizers(xp: Any, r: Any, numer: Any, key_keep: Any, n: int, m: int, offset: int | None,
                       dev: Any, opts: CoreOptions) -> tuple[Any, bool]:
    """The core's one data-dependent step: which rows' ratios are returned, and the report of the
    rows whose normaliser breaks ``opts.normalizer``'s rule (under ``opts.errors``).

    Returns ``(valid, all_valid)``: ``valid (..., n)`` the rows returned as a ratio (the others are
    zeros with zero gradient) and whether every row is one (then the output is one division).

    Lazy and traced arrays (:func:`refattn._xp.is_lazy`): nothing is read back; ``all_valid`` is
    ``False`` (the masked form, same values) and no report is made, whatever ``opts.errors``: the
    invalid rows are returned as the ``errors="ignore"`` policy returns them.
    """
    positive = opts.normalizer == "positive"
    zero_invalid = positive if opts.zero_invalid is None else opts.zero_invalid
    if is_lazy(r, numer):
        if positive:
            good = (r > 0) & xp.isfinite(r) & xp.all(xp.isfinite(numer), axis=-1)
            return (good if zero_invalid else r != 0), False
        return (r > 0 if zero_invalid else r != 0), False
    if positive:
        good = (r > 0) & xp.isfinite(r) & xp.all(xp.isfinite(numer), axis=-1)

        def bad_rows() -> Any:
            empty = _empty_rows(xp, key_keep, n, m, offset, dev)
            return ~good if empty is None else ~(good | empty)

        valid = good if zero_invalid else r != 0
        all_good = bool(xp.all(good))

        def due_() -> bool:
            return not all_good

        all_valid = all_good if zero_invalid else bool(xp.all(valid))
        what, why = "that is not positive and finite", "these rows are returned as zeros"
    else:
        valid = r > 0 if zero_invalid else r != 0
        all_valid = bool(xp.all(valid))

        def bad_rows() -> Any:  # only when a report is due and some r <= 0 (sign-indefinite features)
            return (r < 0) | ((r == 0) & xp.any(numer != 0, axis=-1))

        def due_() -> bool:
            return not (all_valid and (zero_invalid or bool(xp.all(r > 0))))

        what = "<= 0"
        why = ("the feature map is not non-negative (e.g. 'identity'), so the output is not a weighted "
               "average of the values. Use a non-negative feature map, a larger eps, or "
               "errors='warn'/'ignore'")
    # the row checks (and the (n, dv) pass of bad_rows) run only when a report can be due
    if opts.errors != "ignore" and due_():
        bad = bad_rows()
        if bool(xp.any(bad)):
            if opts.message is not None:
                msg = opts.message(xp, bad, r)
            else:
                count = int(xp.sum(xp.astype(bad, xp.int64)))
                msg = (f"{opts.method}: {count} query rows have a normaliser phi(q_i) . sum_j phi(k_j) + eps "
                       f"{what} (out of {math.prod(r.shape)}); {why}")
            report(opts.errors, msg, error=opts.error)
    return valid, all_valid


def kernelized_forward(phi_q: Any, phi_k: Any, v: Any, /, opts: CoreOptions | None = None, *,
                       key_keep: Any = None, **options: Any) -> tuple[Any, KernelizedResiduals]:
    """Normalised kernelized attention from features; returns ``(out, KernelizedResiduals)``.

    Parameters
    ----------
    phi_q, phi_k, v : arrays ``(..., n, D)``, ``(..., m, D)``, ``(..., m, dv)``
        Features (already computed and validated by the caller) and values, one dtype.
    opts : CoreOptions
        The resolved options (or give them as keywords, ``**options``: the fields of
        :class:`CoreOptions`). Nothing is validated here.
    key_keep : boolean array ``(..., m)`` or None
        Key-padding mask, ``True`` = keep.
    """
    if opts is None:
        opts = CoreOptions(**options)
    xp = namespace(phi_q, phi_k, v)
    n, m, dv = phi_q.shape[-2], phi_k.shape[-2], v.shape[-1]
    shapes = (tuple(phi_q.shape), tuple(phi_k.shape), tuple(v.shape))
    offset = _causal_offset(opts.causal, n, m)
    chunk = opts.chunk
    if key_keep is not None:
        phi_k = xp.where(key_keep[..., None], phi_k, 0.0)
    ones = xp.ones((*v.shape[:-1], 1), dtype=v.dtype, device=device(v))
    c = xp.concat([v, ones], axis=-1)
    state = None
    pad_q = pad_k = 0
    if offset is None:
        state = xp.matrix_transpose(phi_k) @ c
        num = phi_q @ state
    else:
        pad_q, pad_k, length = _alignment(offset, n, m)
        phi_q = _pad_rows(xp, phi_q, pad_q, length)
        phi_k = _pad_rows(xp, phi_k, pad_k, length)
        c = _pad_rows(xp, c, pad_k, length)
        num = _causal_dot(xp, phi_q, phi_k, c, chunk, False)[..., pad_q:, :]
    if opts.eps_placement == "prefix":
        prefix_eps = opts.eps
        r = num[..., dv] + opts.eps * xp.sum(phi_q[..., pad_q:, :], axis=-1)
    else:
        prefix_eps = 0.0
        r = num[..., dv] + opts.eps
    numer = num[..., :dv]
    valid, all_valid = _check_normalizers(xp, r, numer, key_keep, n, m, offset, device(v), opts)
    if all_valid:  # the common case (every row has a usable normaliser): one division
        out = numer / r[..., None]
    else:
        safe = xp.where(valid, r, 1.0)
        out = xp.where(valid[..., None], numer / safe[..., None], 0.0)
    res = KernelizedResiduals(phi_q, phi_k, c, state, out, r, valid, key_keep, offset, pad_q, pad_k, chunk,
                              shapes, prefix_eps)
    return out, res


def kernelized_backward(res: KernelizedResiduals, dout: Any, /) -> tuple[Any, Any, Any]:
    """Cotangents ``(dphi_q, dphi_k, dv)`` of :func:`kernelized_forward`, in the given shapes."""
    xp = namespace(res.out, dout)
    nq, mk, vv = res.shapes
    m, dv = mk[-2], vv[-1]
    inv = xp.where(res.valid, 1.0 / xp.where(res.valid, res.r, 1.0), 0.0)[..., None]
    delta = xp.sum(res.out * dout, axis=-1, keepdims=True)
    g = xp.concat([dout * inv, -delta * inv], axis=-1)  # cotangent of [numerator, normaliser]
    if res.offset is None:
        dphi_q = g @ xp.matrix_transpose(res.state)
        dstate = xp.matrix_transpose(res.phi_q) @ g
        dphi_k = res.c @ xp.matrix_transpose(dstate)
        dc = res.phi_k @ dstate
    else:
        g = _pad_rows(xp, g, res.pad_q, res.phi_q.shape[-2])
        da, db, dc = causal_dot_backward(res.phi_q, res.phi_k, res.c, g, chunk=res.chunk)
        dphi_q = da[..., res.pad_q:, :]
        dphi_k = _unpad_rows(xp, db, res.pad_k, m)
        dc = _unpad_rows(xp, dc, res.pad_k, m)
    if res.prefix_eps:
        dphi_q = dphi_q + g[..., res.pad_q:, dv:] * res.prefix_eps
    if res.key_keep is not None:
        dphi_k = xp.where(res.key_keep[..., None], dphi_k, 0.0)
    dv_ = dc[..., :dv]
    return (unbroadcast(xp, dphi_q, nq), unbroadcast(xp, dphi_k, mk), unbroadcast(xp, dv_, vv))


def causal_dot_flops(length: int, d_feat: int, e: int, chunk: int) -> int:
    """Exact flops of ``causal_dot(a, b, c, chunk=chunk)`` for ``a, b (length, d_feat)``,
    ``c (length, e)``, one batch element: per chunk of ``t`` rows ``2 t^2 D`` (``a b^T``),
    ``2 t^2 e`` (masked product with ``c``), ``2 t D e`` (``a S``), ``t e`` (their sum),
    ``2 D t e`` (state update product) and ``D e`` (state sum)."""
    total = 0
    for i0 in range(0, length, chunk):
        t = min(chunk, length - i0)
        total += 2 * t * t * d_feat + 2 * t * t * e + 2 * t * d_feat * e + t * e + 2 * d_feat * t * e + d_feat * e
    return total


def kernelized_flops(n: int, m: int, d_feat: int, dv: int, *, causal: Any = False,
                     chunk: int = DEFAULT_CHUNK) -> int:
    """Exact forward flops of :func:`kernelized_forward` for one broadcast batch element."""
    e = dv + 1
    offset = _causal_offset(causal, n, m)
    if offset is None:
        core = 2 * m * d_feat * e + 2 * n * d_feat * e
    else:
        _, _, length = _alignment(offset, n, m)
        core = causal_dot_flops(length, d_feat, e, chunk)
    return core + n + n * dv
