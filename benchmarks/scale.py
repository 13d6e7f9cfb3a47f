"""Exact attention beyond one machine's memory: ``python -m benchmarks scale``.

    python -m benchmarks scale [--n 262144] [--d 64] [--chunk 4096] [--workers 2] [--memory 2GiB]
                               [--linear-n 4194304] [--ratio 16384 65536] [--tasks] [--out scale.json]

On a ``dask.distributed`` LocalCluster (``--workers`` processes of one thread and ``--memory`` each):

- exact softmax attention (no mask), float32, forward then backward, through refattn's Dask graph
  (``impl="blockwise"``: one task per query chunk, keys merged by log-sum-exp inside it, dK/dV
  tree-summed): wall time per pass, the error of sampled rows of ``out`` and ``dq`` against a float64
  evaluation of those rows (relative to the largest entry), peak resident memory per worker (sampled
  every 0.5 s), bytes sent between workers and bytes spilled. The forward is computed once: its
  residuals (``out``, the row log-sum-exp) are persisted and the backward reads them;
- causal linear attention (elu+1) at ``--linear-n`` through the chunked prefix-sum graph, with the
  error of sampled rows against float64 prefix sums (``--linear-n 0`` skips it);
- ``--tasks``: graph task counts vs n (softmax forward, forward + backward, causal prefix sums);
- ``--ratio N ...``: the same softmax forward and forward + backward on the cluster and on NumPy in
  this process (blockwise, float32), their time ratio (dask / NumPy).

Not a test: the figures depend on the machine and its load (see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

import refattn
from refattn.methods import softmax as _softmax


def _rows(n: int, count: int, seed: int = 0) -> np.ndarray:
    return np.unique(np.concatenate([[0, n - 1], np.random.default_rng(seed).integers(0, n, count)]))


class _Peak:
    """Samples every worker's resident memory in the background."""

    def __init__(self, client: Any, every: float = 0.5) -> None:
        self.client, self.every, self.peak, self._stop = client, every, {}, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                for w, rss in self.client.run(lambda: psutil.Process().memory_info().rss).items():
                    self.peak[w] = max(self.peak.get(w, 0), rss)
            except Exception:  # noqa: BLE001 - the cluster may be shutting down
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> _Peak:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


def _worker_counters(client: Any) -> dict[str, dict[str, int]]:
    def read(dask_worker: Any) -> dict[str, int]:
        out = {}
        for name in ("transfer_outgoing_bytes_total", "transfer_incoming_bytes_total"):
            val = getattr(dask_worker, name, None)
            if val is None:
                val = getattr(getattr(dask_worker, "transfer", None), name.replace("transfer_", ""), None)
            out[name] = int(val or 0)
        spilled = getattr(getattr(dask_worker, "data", None), "spilled_total", None)
        out["spilled_bytes"] = int(getattr(spilled, "disk", 0) or 0) if spilled is not None else 0
        return out

    return client.run(read)


def _delta(after: dict, before: dict) -> dict[str, int]:
    keys = ("transfer_outgoing_bytes_total", "spilled_bytes")
    return {k: sum(after[w][k] - before.get(w, {}).get(k, 0) for w in after) for k in keys}


def _inputs(n: int, d: int, chunk: int, dtype: str = "float32", seed: int = 0):
    import dask.array as da

    rs = da.random.RandomState(seed)
    shape, chunks = (1, 1, n, d), (1, 1, chunk, d)
    return tuple(rs.standard_normal(shape, chunks=chunks).astype(dtype) for _ in range(4))  # q, k, v, dout


def _softmax_rows64(q, k, v, dout, rows, scale):
    """Float64 ``out`` and ``dq`` of the given query rows (full keys): exact reference rows."""
    q, k, v, dout = (np.asarray(x, dtype=np.float64) for x in (q, k, v, dout))
    s = (q * scale) @ k.T
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    out = p @ v
    dp = dout @ v.T
    delta = np.sum(out * dout, axis=-1, keepdims=True)
    dq = (p * (dp - delta)) @ k * scale
    return out, dq


def _rel(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def softmax_run(client: Any, n: int, d: int, chunk: int, samples: int = 8) -> dict[str, Any]:
    from distributed import wait

    q, k, v, dout = client.persist(list(_inputs(n, d, chunk)))
    wait([q, k, v, dout])
    rows = _rows(n, samples)
    before = _worker_counters(client)
    with _Peak(client) as peak:
        t0 = time.perf_counter()
        out, res = _softmax.forward(q, k, v, impl="blockwise", check_finite=False)
        res_out, res_lse = client.persist([res.out, res.lse])
        wait([res_out, res_lse])
        t1 = time.perf_counter()
        res = res._replace(out=res_out, lse=res_lse)
        grads = client.persist(list(_softmax.backward(res, dout)))
        wait(grads)
        t2 = time.perf_counter()
    after = _worker_counters(client)
    tasks_f = len(dict(_softmax.forward(q, k, v, impl="blockwise", check_finite=False)[0].__dask_graph__()))
    host = {name: a[0, 0].compute() for name, a in (("k", k), ("v", v))}
    qr, dor, outr, dqr = (a[0, 0][rows].compute() for a in (q, dout, res_out, grads[0]))
    ref_out, ref_dq = _softmax_rows64(qr, host["k"], host["v"], dor, rows, 1.0 / math.sqrt(d))
    dk_norm = float(np.abs(grads[1][0, 0][:64].compute()).max())
    return {"n": n, "d": d, "chunk": chunk, "dtype": "float32", "forward_s": t1 - t0, "backward_s": t2 - t1,
            "rows_checked": len(rows), "out_rel_err": _rel(outr, ref_out), "dq_rel_err": _rel(dqr, ref_dq),
            "peak_rss_per_worker_bytes": sorted(peak.peak.values()), "forward_tasks": tasks_f,
            "dense_logits_bytes": n * n * 4, "dk_finite": bool(np.isfinite(dk_norm)), **_delta(after, before)}


def linear_run(client: Any, n: int, d: int, chunk: int, samples: int = 4) -> dict[str, Any]:
    import dask.array as da
    from distributed import wait

    q, k, v, _ = _inputs(n, d, chunk)  # generated inside the graph (3 x 1 GiB at n = 4M would spill)
    before = _worker_counters(client)
    with _Peak(client) as peak:
        t0 = time.perf_counter()
        out = client.persist(refattn.linear_attention(q, k, v, causal=True, check_finite=False))
        wait(out)  # the output stays on the workers (1 GiB at n = 4M)
        t1 = time.perf_counter()
    after = _worker_counters(client)
    rows = _rows(n, samples, seed=1)
    phi = lambda x: da.where(x > 0, x + 1.0, da.exp(da.minimum(x, 0.0)))  # noqa: E731  elu + 1
    fk, v64 = phi(k[0, 0].astype("float64")), v[0, 0].astype("float64")
    errs = []
    got = out[0, 0][rows].compute()
    fq = phi(q[0, 0][rows].astype("float64")).compute()
    for r, i in enumerate(rows):
        s, z = da.compute(fk[:i + 1].T @ v64[:i + 1], fk[:i + 1].sum(axis=0))
        want = fq[r] @ s / (fq[r] @ z + 1e-6)
        errs.append(float(np.abs(got[r] - want).max() / np.abs(want).max()))
    return {"n": n, "d": d, "chunk": chunk, "forward_s": t1 - t0, "rows_checked": len(rows),
            "out_rel_err": max(errs), "peak_rss_per_worker_bytes": sorted(peak.peak.values()),
            "tasks": len(dict(out.__dask_graph__())) if hasattr(out, "__dask_graph__") else None,
            **_delta(after, before)}


def task_counts(ns: Sequence[int], chunk: int) -> list[dict[str, int]]:
    import dask.array as da

    from refattn.methods._prefix import causal_dot

    rows = []
    for n in ns:
        q = da.zeros((1, 1, n, 64), chunks=(1, 1, chunk, 64), dtype="float32")
        out, pull = refattn.vjp(refattn.softmax_attention, q, q, q, impl="blockwise", check_finite=False)
        g = pull(out)
        graph = dict(out.__dask_graph__())
        for x in g:
            graph.update(dict(x.__dask_graph__()))
        a = da.zeros((1, 1, n, 64), chunks=(1, 1, chunk, 64))
        rows.append({"n": n, "chunks": math.ceil(n / chunk), "softmax_forward": len(dict(out.__dask_graph__())),
                     "softmax_forward_backward": len(graph),
                     "causal_prefix": len(dict(causal_dot(a, a, a, chunk=64).__dask_graph__()))})
    return rows


def ratio_run(client: Any, n: int, d: int, chunk: int) -> dict[str, Any]:
    from distributed import wait

    q, k, v, dout = client.persist(list(_inputs(n, d, chunk)))
    wait([q, k, v, dout])
    t0 = time.perf_counter()
    out, res = _softmax.forward(q, k, v, impl="blockwise", check_finite=False)
    res = res._replace(**dict(zip(("out", "lse"), client.persist([res.out, res.lse]))))
    wait([res.out, res.lse])
    t1 = time.perf_counter()
    g = client.persist(list(_softmax.backward(res, dout)))
    wait(g)
    t2 = time.perf_counter()
    hq, hk, hv, hdo = (x.compute() for x in (q, k, v, dout))
    t3 = time.perf_counter()
    o, r = _softmax.forward(hq, hk, hv, impl="blockwise", check_finite=False)
    t4 = time.perf_counter()
    _softmax.backward(r, hdo)
    t5 = time.perf_counter()
    return {"n": n, "dask_forward_s": t1 - t0, "dask_backward_s": t2 - t1, "numpy_forward_s": t4 - t3,
            "numpy_backward_s": t5 - t4, "ratio_forward": (t1 - t0) / (t4 - t3),
            "ratio_forward_backward": (t2 - t0) / (t5 - t3)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks scale", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="*", default=[262144], help="softmax sequence lengths (0: skip)")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--chunk", type=int, default=4096, help="query chunk (Dask block) along the sequence")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory", default="2GiB", help="memory limit per worker")
    p.add_argument("--linear-n", type=int, default=4194304)
    p.add_argument("--linear-chunk", type=int, default=65536)
    p.add_argument("--ratio", type=int, nargs="*", default=[])
    p.add_argument("--tasks", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from distributed import Client, LocalCluster

    report: dict[str, Any] = {"workers": a.workers, "memory_limit": a.memory}
    if a.tasks:
        report["task_counts"] = task_counts([4096, 16384, 65536, 262144], 1024)
        print(json.dumps(report["task_counts"], indent=1), flush=True)
    with LocalCluster(n_workers=a.workers, threads_per_worker=1, memory_limit=a.memory, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        for n in a.ratio:
            report.setdefault("ratio", []).append(ratio_run(client, n, a.d, min(a.chunk, n)))
            print(json.dumps(report["ratio"][-1]), flush=True)
        for n in [x for x in a.n if x]:
            report.setdefault("softmax", []).append(softmax_run(client, n, a.d, min(a.chunk, n)))
            print(json.dumps(report["softmax"][-1]), flush=True)
        if a.linear_n:
            report["linear_causal"] = linear_run(client, a.linear_n, a.d, a.linear_chunk)
            print(json.dumps(report["linear_causal"]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0
