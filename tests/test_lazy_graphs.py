"""The shape of the Dask graphs: exact attention and the causal prefix sums are chunk-parallel.

Blockwise softmax (the backend primitive): ``O(n / chunk)`` tasks per pass and a critical path that
does not grow with ``n`` beyond the ``log`` of the dK/dV tree sums; the causal prefix sums: chunk
states, a Blelloch scan (depth ``O(log(n / chunk))``), within-chunk products. Values: the primitives
against the generic code on NumPy (the oracle), float64, multi-chunk arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

import refattn
from refattn.methods._prefix import causal_dot, causal_dot_backward

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")


def _graph_stats(*arrays):
    """(tasks, longest dependency chain) of the graph of ``arrays``."""
    from dask.core import get_dependencies

    graph = {}
    for a in arrays:
        graph.update(dict(a.__dask_graph__()))
    deps = {k: get_dependencies(graph, k) for k in graph}
    depth: dict = {}

    def walk(k):
        stack = [k]
        while stack:
            x = stack[-1]
            todo = [d for d in deps[x] if d not in depth]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            depth[x] = 1 + max((depth[d] for d in deps[x]), default=0)

    for k in graph:
        if k not in depth:
            walk(k)
    return len(graph), max(depth.values())


def _softmax_graph(n, chunk):
    q = da.zeros((1, 1, n, 8), chunks=(1, 1, chunk, 8))
    out, pull = refattn.vjp(refattn.softmax_attention, q, q, q, impl="blockwise", check_finite=False)
    return _graph_stats(out), _graph_stats(*pull(out))


def test_softmax_graph_linear_in_chunks_without_serial_chain():
    small, large = _softmax_graph(64 * 8, 64), _softmax_graph(64 * 64, 64)  # 8 and 64 query chunks
    (fs, fds), (bs, bds) = small
    (fl, fdl), (bl, bdl) = large
    assert fl <= 8.5 * fs and bl <= 8.5 * bs  # linear: 8x the chunks, at most ~8x the tasks
    assert fl >= 4 * fs
    assert fdl <= fds + 2  # forward: the depth does not grow with n
    assert bdl <= bds + 6  # backward: + log_4(8) levels of the dK/dV tree sums


def test_causal_prefix_graph_linear_in_chunks_and_logarithmic_depth():
    def stats(chunks):
        a = da.zeros((1, 16 * chunks, 4), chunks=(1, 16, 4))
        return _graph_stats(causal_dot(a, a, a, chunk=8))

    (ts, ds), (tl, dl) = stats(8), stats(64)
    assert 4 * ts <= tl <= 9 * ts
    assert dl <= ds + 2 * 3 + 4  # Blelloch: 2 log2(64 / 8) more levels; a serial chain would add 56


@pytest.mark.parametrize("reverse", [False, True])
def test_causal_dot_primitive_matches_generic(reverse):
    rs = np.random.default_rng(3)
    a, b, c, g = (rs.standard_normal(s) for s in ((2, 50, 3), (1, 50, 3), (2, 50, 4), (2, 50, 4)))
    want = causal_dot(a, b, c, chunk=4, reverse=reverse)
    wgrad = causal_dot_backward(a, b, c, g, chunk=4, reverse=reverse)
    x = [da.from_array(t, chunks=(1, 7, -1)) for t in (a, b, c, g)]
    got = causal_dot(*x[:3], chunk=4, reverse=reverse)
    ggrad = causal_dot_backward(*x, chunk=4, reverse=reverse)
    got, ggrad = dask.compute(got, tuple(ggrad))
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-13 * scale
    for p, w in zip(ggrad, wgrad):
        assert np.abs(np.asarray(p) - w).max() <= 1e-13 * np.abs(w).max()


def test_nan_input_propagates_instead_of_raising_on_lazy_arrays():
    """check_finite=True cannot read lazy values: the NaN reaches the rows it touches (documented)."""
    rs = np.random.default_rng(0)
    q, k, v = (rs.standard_normal((1, 6, 3)) for _ in range(3))
    q[0, 2, 0] = np.nan
    out = refattn.softmax_attention(*(da.from_array(t, chunks=(1, 2, 3)) for t in (q, k, v)))
    got = out.compute()
    assert np.isnan(got[0, 2]).all() and np.isfinite(np.delete(got[0], 2, axis=0)).all()
    with pytest.raises(ValueError, match="finite"):
        refattn.softmax_attention(q, k, v)


def test_scale_benchmark_task_counts():
    """``python -m benchmarks scale --tasks``: counts grow linearly with the number of chunks."""
    from benchmarks.scale import task_counts

    small, large = task_counts([4096, 16384], 1024)
    for key in ("softmax_forward", "softmax_forward_backward", "causal_prefix"):
        assert 3 * small[key] <= large[key] <= 5 * small[key], key
