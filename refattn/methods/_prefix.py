r"""The causal prefix-sum kernel shared by every kernelized method (linear attention, random
features, trainable kernels): one tested function, forward and backward.

.. math::

    \operatorname{causal\_dot}(A, B, C)_i = A_i^\top \sum_{j \le i} B_j C_j^\top
                                         = \sum_{j \le i} (A_i \cdot B_j)\, C_j

for ``A (..., n, D)``, ``B (..., n, D)``, ``C (..., n, e)`` -> ``(..., n, e)``; ``reverse=True`` sums
over ``j >= i`` instead. Computed in chunks of ``chunk`` rows: inside a chunk the masked
``(chunk, chunk)`` product, across chunks a running state ``S = sum_j B_j C_j^T`` of shape ``(D, e)``,
so the extra memory is ``O(chunk^2 + chunk (D + e) + D e)`` per batch element and never
``O(n D e)`` (Katharopoulos et al. 2020 materialise the prefix sums; chunking avoids that).

:func:`causal_dot` validates its arguments and calls the implementation :func:`_causal_dot`, which
assumes valid input (the kernelized core and :func:`causal_dot_backward` call it directly, so
nothing is validated twice and the backward validates nothing).

Backward (``G`` the cotangent of the output):
``dA = causal_dot(G, C, B)``, ``dB = causal_dot(C, G, A, reverse=True)``,
``dC = causal_dot(B, A, G, reverse=True)``, each the same kernel.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._checks import check_flag, check_int
from .._primitives import backend_primitive
from .._xp import broadcast_shapes, check_float_array, check_same_namespace_device, device, namespace

__all__ = ["causal_dot", "causal_dot_backward", "CausalDotGrads", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 64  # measured (benchmarks/RESULTS.md): 64 beats 32 and 128 for d = 64, D = 64..256


class CausalDotGrads(NamedTuple):
    da: Any
    db: Any
    dc: Any


def _validate(xp: Any, a: Any, b: Any, c: Any, chunk: Any) -> None:
    named = {"a": a, "b": b, "c": c}
    check_same_namespace_device(named, xp, "a")
    for name, x in named.items():
        check_float_array(name, x, xp, ndim_min=2)
    if not (a.dtype == b.dtype == c.dtype):
        msg = f"a, b and c must share one dtype, got {a.dtype}, {b.dtype}, {c.dtype}"
        raise TypeError(msg)
    if b.shape[-1] != a.shape[-1]:
        msg = f"b must have shape (..., n, {a.shape[-1]}) to match a's last axis, got {tuple(b.shape)}"
        raise ValueError(msg)
    if not (a.shape[-2] == b.shape[-2] == c.shape[-2]):
        msg = (f"a, b and c must have the same sequence length (axis -2), got shapes "
               f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(c.shape)}")
        raise ValueError(msg)
    broadcast_shapes(a.shape[:-2], b.shape[:-2], c.shape[:-2], names=("a", "b", "c"))
    check_int("chunk", chunk, minimum=1)


def causal_dot(a: Any, b: Any, c: Any, /, *, chunk: int = DEFAULT_CHUNK, reverse: bool = False) -> Any:
    """``out_i = sum_{j <= i} (a_i . b_j) c_j`` (``j >= i`` when ``reverse``), chunked; see the module.

    ``a (..., n, D)``, ``b (..., n, D)``, ``c (..., n, e)``: real floating arrays of one dtype,
    namespace and device, leading dimensions broadcasting; ``chunk`` a positive integer. Anything
    else raises ``TypeError``/``ValueError`` naming the argument.
    """
    xp = namespace(a, b, c)
    _validate(xp, a, b, c, chunk)
    return _causal_dot(xp, a, b, c, chunk, check_flag("reverse", reverse))


def _causal_dot(xp: Any, a: Any, b: Any, c: Any, chunk: int, reverse: bool) -> Any:
    """The implementation of :func:`causal_dot` (valid input assumed): the backend's ``causal_dot``
    primitive where it has one (Dask: chunk states, a parallel scan over chunks, within-chunk
    products), else :func:`_causal_dot_generic`, the oracle."""
    prim = backend_primitive(xp, "causal_dot")
    if prim is not None and a.shape[-2] > 0:
        return prim(a, b, c, chunk, reverse)
    return _causal_dot_generic(xp, a, b, c, chunk, reverse)


def _causal_dot_generic(xp: Any, a: Any, b: Any, c: Any, chunk: int, reverse: bool) -> Any:
    """The generic chunked kernel: one running state through the chunks."""
    if reverse:
        a, b, c = (xp.flip(x, axis=-2) for x in (a, b, c))
    n = a.shape[-2]
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2], c.shape[:-2])  # (no [:1] slices: empty axes)
    dev = device(a)
    state = xp.zeros((*batch, a.shape[-1], c.shape[-1]), dtype=a.dtype, device=dev)
    idx = xp.arange(min(chunk, n), device=dev)
    tril_full = idx[None, :] <= idx[:, None]  # built once; the last chunk uses its leading block
    outs = []
    for i0 in range(0, n, chunk):
        i1 = min(i0 + chunk, n)
        ac, bc, cc = a[..., i0:i1, :], b[..., i0:i1, :], c[..., i0:i1, :]
        tril = tril_full[:i1 - i0, :i1 - i0]
        o = xp.where(tril, ac @ xp.matrix_transpose(bc), 0.0) @ cc
        o += ac @ state
        outs.append(o)
        state += xp.matrix_transpose(bc) @ cc  # state is this function's own accumulator
    out = (xp.concat(outs, axis=-2) if outs
           else xp.zeros((*batch, 0, c.shape[-1]), dtype=a.dtype, device=dev))
    return xp.flip(out, axis=-2) if reverse else out


def causal_dot_backward(a: Any, b: Any, c: Any, g: Any, /, *, chunk: int = DEFAULT_CHUNK,
                        reverse: bool = False) -> CausalDotGrads:
    """Cotangents of ``causal_dot(a, b, c)`` for the output cotangent ``g`` (shapes before
    un-broadcasting: the caller reduces broadcast batch axes). Validates nothing (a backward)."""
    xp = namespace(a, b, c, g)
    return CausalDotGrads(
        _causal_dot(xp, g, c, b, chunk, reverse),
        _causal_dot(xp, c, g, a, chunk, not reverse),
        _causal_dot(xp, b, a, g, chunk, not reverse),
    )
