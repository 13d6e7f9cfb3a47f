"""Chunk-parallel Dask graphs for exact attention and the causal prefix sums (backend primitives).

refattn's generic code is written for eager arrays: the blockwise softmax loops over query and key
blocks (on Dask a graph quadratic in the number of blocks, with a serial chain over key blocks), the
causal prefix sums carry one running state through every chunk (a serial chain of ``n / chunk``
tasks). The primitives here give the same mathematics the shape a chunked engine wants; each task
runs refattn's own generic implementation on NumPy blocks, so the generic code stays the oracle and
the values agree with NumPy's within rounding (the summation order over chunks differs).

``softmax_attention(q, k, v, spec, scale, batch, block_q, block_k) -> (out, lse)``
    One task per (batch block, query chunk): the query chunk against all keys, the key blocks merged
    by the online softmax (log-sum-exp merging) inside the task, ``O(block_q * block_k)`` logits live
    at a time. The query chunks are ``q``'s chunks along the sequence axis; ``k`` and ``v`` are joined
    into one block per batch block (``m * (d + dv)`` numbers, read by every task of that batch block;
    a ``dask.distributed`` worker fetches them once). Tasks per pass: ``O(n / chunk)``, no chain.
``softmax_attention_backward(res, dout, batch) -> (dq, dk, dv)``
    One task per query chunk recomputes its logits blocks from the saved log-sum-exp and returns
    ``dq`` for its rows and partial ``dK, dV`` over all keys; the partials are tree-summed
    (``sum(split_every=4)``), so only ``m x d`` arrays move between workers, never logits.
``causal_dot(a, b, c, chunk, reverse) -> out``
    Chunk states ``S_c = B_c^T C_c`` (one task per sequence chunk), their exclusive cumulative sum
    over chunks (Blelloch's parallel scan, depth ``O(log(n / chunk))``), and per chunk the
    within-chunk causal product (the generic chunked kernel) plus ``A_c S_{<c}``.

The exact-attention primitives take the plain call (mask, causal, ``key_lengths``); the variants
(GQA, score and mask mods, sinks, ``query_lengths``, dropout, a gradient of the LSE) run the generic
blockwise loop, lazy as well, with its larger graph.
"""

from __future__ import annotations

import operator
from itertools import product
from typing import Any

import numpy as np

__all__ = ["softmax_attention", "softmax_attention_backward", "causal_dot", "primitives"]


def _npx():
    import array_api_compat.numpy as npx

    return npx


def _token(*args: Any) -> str:
    from dask.base import tokenize

    return tokenize(*args)


def _array(dsk: dict, name: str, chunks: tuple, dtype: Any, deps: list) -> Any:
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)
    return da.Array(graph, name, chunks=chunks, dtype=dtype)


def _bcast(da: Any, x: Any, shape: tuple[int, ...]) -> Any:
    return x if tuple(x.shape) == shape else da.broadcast_to(x, shape)


def _starts(chunks: tuple[int, ...]) -> list[int]:
    return [0, *np.cumsum(chunks)[:-1].tolist()]


# ------------------------------------------------------------------------------------------------
# exact attention
# ------------------------------------------------------------------------------------------------

def _prepare(q: Any, k: Any, v: Any, spec: Any, batch: tuple[int, ...]) -> dict[str, Any]:
    """q, k, v and the mask arrays broadcast to the batch shape and chunked alike: batch chunks and
    query chunks from ``q``, one block along keys and features."""
    import dask.array as da

    n, m, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    qb = _bcast(da, q, (*batch, n, d))
    bch = qb.chunks[:len(batch)]
    qch = qb.chunks[-2] if n else (0,)
    out: dict[str, Any] = {"bch": bch, "qch": qch,
                           "q": qb.rechunk((*bch, qch, (d,))),
                           "k": _bcast(da, k, (*batch, m, d)).rechunk((*bch, (m,), (d,))),
                           "v": _bcast(da, v, (*batch, m, dv)).rechunk((*bch, (m,), (dv,)))}
    for name in ("keep", "bias"):
        a = getattr(spec, name)
        if a is None:
            out[name] = None
            continue
        rows = n if a.ndim >= 2 and a.shape[-2] != 1 else 1
        cols = m if a.ndim >= 1 and a.shape[-1] != 1 else 1
        a = _bcast(da, a if a.ndim >= 2 else da.reshape(a, (1,) * (2 - a.ndim) + tuple(a.shape)),
                   (*batch, rows, cols))
        out[name] = a.rechunk((*bch, qch if rows == n else (1,), (cols,)))
    kl = spec.key_lengths
    out["kl"] = None if kl is None else _bcast(da, kl, batch).rechunk(bch)
    return out


def _mask_keys(p: dict[str, Any], b: tuple[int, ...], i: int) -> list[Any]:
    keys = []
    for name in ("keep", "bias"):
        a = p[name]
        keys.append(None if a is None else (a.name, *b, i if a.shape[-2] != 1 else 0, 0))
    keys.append(None if p["kl"] is None else (p["kl"].name, *b))
    return keys


def _chunk_spec(spec: Any, keep: Any, bias: Any, kl: Any, i0: int, rows: int) -> Any:
    off = spec.causal_offset
    return spec._replace(keep=keep, bias=bias, causal_offset=None if off is None else off + i0,
                         key_lengths=kl, n=rows)


def _fwd_task(q, k, v, keep, bias, kl, i0, spec, scale, bq, bk):
    from refattn.methods.softmax import _blockwise_forward

    npx = _npx()
    cs = _chunk_spec(spec, keep, bias, kl, i0, q.shape[-2])
    out, lse = _blockwise_forward(npx, q, k, v, cs, scale, tuple(q.shape[:-2]), bq, bk)
    return np.concatenate([out, lse[..., None]], axis=-1)


def softmax_attention(q: Any, k: Any, v: Any, spec: Any, scale: float, batch: tuple[int, ...],
                      block_q: int, block_k: int) -> tuple[Any, Any]:
    """Forward: ``(out, lse)`` as the generic blockwise path returns them (see the module)."""
    p = _prepare(q, k, v, spec, batch)
    dv = v.shape[-1]
    name = "refattn-sdpa-" + _token(p["q"], p["k"], p["v"], p["keep"], p["bias"], p["kl"], spec.causal_offset,
                                    scale, block_q, block_k)
    bspec = spec._replace(keep=None, bias=None, key_lengths=None)
    dsk = {}
    starts = _starts(p["qch"])
    for b in product(*(range(len(c)) for c in p["bch"])):
        for i, i0 in enumerate(starts):
            dsk[(name, *b, i, 0)] = (_fwd_task, (p["q"].name, *b, i, 0), (p["k"].name, *b, 0, 0),
                                     (p["v"].name, *b, 0, 0), *_mask_keys(p, b, i), i0, bspec, scale,
                                     block_q, block_k)
    deps = [x for x in (p["q"], p["k"], p["v"], p["keep"], p["bias"], p["kl"]) if x is not None]
    packed = _array(dsk, name, (*p["bch"], p["qch"], (dv + 1,)), q.dtype, deps)
    return packed[..., :dv], packed[..., dv]


def _bwd_task(q, k, v, out, lse, dout, keep, bias, kl, i0, spec, scale, bq, bk):
    from refattn.methods.softmax import Residuals, _blockwise_backward

    npx = _npx()
    cs = _chunk_spec(spec, keep, bias, kl, i0, q.shape[-2])
    res = Residuals(q, k, v, out, lse, cs, scale, "blockwise", bq, bk, q.dtype,
                    (q.shape, k.shape, v.shape))
    delta = np.sum(out * dout, axis=-1, keepdims=True)
    return _blockwise_backward(npx, res, dout, tuple(q.shape[:-2]), delta)


def _part(t, j):
    return np.expand_dims(t[j], axis=-3)


def softmax_attention_backward(res: Any, dout: Any, batch: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """Backward: ``(dq, dk, dv)`` in the broadcast batch shape (the caller un-broadcasts)."""
    q, k, v, spec = res.q, res.k, res.v, res.spec
    n, m, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    p = _prepare(q, k, v, spec, batch)
    bch, qch = p["bch"], p["qch"]
    out = _bcast_rechunk(res.out, (*batch, n, dv), (*bch, qch, (dv,)))
    do = _bcast_rechunk(dout, (*batch, n, dv), (*bch, qch, (dv,)))
    lse = _bcast_rechunk(res.lse, (*batch, n), (*bch, qch))
    tok = _token(p["q"], p["k"], p["v"], out, lse, do, p["keep"], p["bias"], p["kl"], spec.causal_offset,
                 res.scale, res.block_q, res.block_k)
    tname, qn, kn, vn = (f"refattn-sdpa-bwd-{w}-{tok}" for w in ("task", "dq", "dkp", "dvp"))
    bspec = spec._replace(keep=None, bias=None, key_lengths=None)
    dsk: dict = {}
    starts = _starts(qch)
    for b in product(*(range(len(c)) for c in bch)):
        for i, i0 in enumerate(starts):
            dsk[(tname, *b, i)] = (_bwd_task, (p["q"].name, *b, i, 0), (p["k"].name, *b, 0, 0),
                                   (p["v"].name, *b, 0, 0), (out.name, *b, i, 0), (lse.name, *b, i),
                                   (do.name, *b, i, 0), *_mask_keys(p, b, i), i0, bspec, res.scale,
                                   res.block_q, res.block_k)
            dsk[(qn, *b, i, 0)] = (operator.getitem, (tname, *b, i), 0)
            dsk[(kn, *b, i, 0, 0)] = (_part, (tname, *b, i), 1)
            dsk[(vn, *b, i, 0, 0)] = (_part, (tname, *b, i), 2)
    deps = [x for x in (p["q"], p["k"], p["v"], out, lse, do, p["keep"], p["bias"], p["kl"]) if x is not None]
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    layers = {tname: {}, qn: {}, kn: {}, vn: {}}
    for key, task in dsk.items():
        layers[key[0]][key] = task
    base = HighLevelGraph.merge(*(x.__dask_graph__() for x in deps))
    inputs = {name for x in deps for name in x.__dask_layers__()}
    graph = HighLevelGraph({**base.layers, **layers},
                           {**base.dependencies, tname: inputs, qn: {tname}, kn: {tname}, vn: {tname}})
    ones = (1,) * len(qch)
    dq = da.Array(graph, qn, chunks=(*bch, qch, (d,)), dtype=q.dtype)
    dkp = da.Array(graph, kn, chunks=(*bch, ones, (m,), (d,)), dtype=q.dtype)
    dvp = da.Array(graph, vn, chunks=(*bch, ones, (m,), (dv,)), dtype=q.dtype)
    return dq, da.sum(dkp, axis=-3, split_every=4), da.sum(dvp, axis=-3, split_every=4)


def _bcast_rechunk(x: Any, shape: tuple[int, ...], chunks: tuple) -> Any:
    import dask.array as da

    return _bcast(da, x, shape).rechunk(chunks)


# ------------------------------------------------------------------------------------------------
# causal prefix sums
# ------------------------------------------------------------------------------------------------

def _state_task(b, c):
    return np.expand_dims(np.swapaxes(b, -1, -2) @ c, axis=-3)


def _within_task(a, b, c, s, chunk):
    from refattn.methods._prefix import _causal_dot_generic

    return _causal_dot_generic(_npx(), a, b, c, chunk, False) + a @ s[..., 0, :, :]


def causal_dot(a: Any, b: Any, c: Any, chunk: int, reverse: bool) -> Any:
    """``out_i = sum_{j <= i} (a_i . b_j) c_j`` (``j >= i`` when ``reverse``) as a chunk-parallel graph."""
    import dask.array as da

    if reverse:
        return da.flip(causal_dot(*(da.flip(x, axis=-2) for x in (a, b, c)), chunk, False), axis=-2)
    n, dd, e = a.shape[-2], a.shape[-1], c.shape[-1]
    batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2], c.shape[:-2]))
    ab = _bcast(da, a, (*batch, n, dd))
    bch, sch = ab.chunks[:len(batch)], ab.chunks[-2]
    a2 = ab.rechunk((*bch, sch, (dd,)))
    b2 = _bcast_rechunk(b, (*batch, n, dd), (*bch, sch, (dd,)))
    c2 = _bcast_rechunk(c, (*batch, n, e), (*bch, sch, (e,)))
    if len(sch) == 1:
        return _single(a2, b2, c2, chunk)
    tok = _token(a2, b2, c2, chunk)
    sname, oname = f"refattn-causal-state-{tok}", f"refattn-causal-dot-{tok}"
    blocks = list(product(*(range(len(x)) for x in bch)))
    dsk = {(sname, *bb, i, 0, 0): (_state_task, (b2.name, *bb, i, 0), (c2.name, *bb, i, 0))
           for bb in blocks for i in range(len(sch))}
    ones = (1,) * len(sch)
    states = _array(dsk, sname, (*bch, ones, (dd,), (e,)), a.dtype, [b2, c2])
    incl = da.cumsum(states, axis=-3, method="blelloch")
    zero = da.zeros((*batch, 1, dd, e), dtype=a.dtype, chunks=(*bch, (1,), (dd,), (e,)))
    excl = da.concatenate([zero, incl[..., :-1, :, :]], axis=-3)
    dsk2 = {(oname, *bb, i, 0): (_within_task, (a2.name, *bb, i, 0), (b2.name, *bb, i, 0),
                                 (c2.name, *bb, i, 0), (excl.name, *bb, i, 0, 0), chunk)
            for bb in blocks for i in range(len(sch))}
    return _array(dsk2, oname, (*bch, sch, (e,)), a.dtype, [a2, b2, c2, excl])


def _single_task(a, b, c, chunk):
    from refattn.methods._prefix import _causal_dot_generic

    return _causal_dot_generic(_npx(), a, b, c, chunk, False)


def _single(a2: Any, b2: Any, c2: Any, chunk: int) -> Any:
    import dask.array as da

    return da.map_blocks(_single_task, a2, b2, c2, chunk, dtype=a2.dtype,
                         chunks=(*a2.chunks[:-1], c2.chunks[-1]), meta=np.empty((0,) * a2.ndim, a2.dtype))


def primitives() -> dict[str, Any]:
    return {"softmax_attention": softmax_attention, "softmax_attention_backward": softmax_attention_backward,
            "causal_dot": causal_dot}

