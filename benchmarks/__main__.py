"""refattn against peers on the CPU, in one process: ``python -m benchmarks`` (or ``refattn bench``).

    python -m benchmarks [--method NAME ...] [--quick] [--n 1024] [--heads 4] [--d 64] [--out ratios.json]
    python -m benchmarks scaling [--method NAME ...] [--quick] [--out scaling.json] [--plot scaling.png]
    python -m benchmarks scale [--n 262144] [--linear-n 4194304] [--ratio 16384 65536] [--tasks]  (Dask cluster)

For every case (a method under one setting; ``--list`` names them), dtype (float64, float32) and pass
(forward; forward + backward) it times refattn on the NumPy backend and each torch peer (the same
mathematics written directly in torch, differentiated by torch autograd; torch SDPA for exact softmax)
on the same inputs: warm-ups, then interleaved rounds (each round runs every function once, in a
rotated order), and reports the median over rounds of the per-round ratio refattn / peer with its
interquartile range. torch runs on as many threads as NumPy's BLAS (``--threads``, default the
machine's cores, OpenBLAS's default). Timings are not tests: the numbers depend on the machine and its load.
The run warns when the 1-minute load average leaves fewer free cores than it uses threads; single-threaded
runs (``OPENBLAS_NUM_THREADS=1``, ``--threads 1``, ``--clock thread``) are the stable ones there.
The C allocator keeps glibc's defaults here (``--allocator system``: what a user's process gets), while
``scaling`` keeps freed memory for reuse by default (see :func:`benchmarks._timing.set_allocator`: the
defaults fault large temporaries in afresh on every call, a step in cost that bends fitted exponents;
at n = 1024 it matters only for the peers and paths with arrays above 32 MiB).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

import refattn
from refattn._cli_text import plain

from . import hadamard, heat, kernels, linear, linformer, nystrom, random_features, softmax
from ._case import Case, Sizes
from ._timing import blas_threads, count, interleaved, load_warning, median, set_allocator, summary

CASES: list[Case] = [c for mod in (softmax, linear, linformer, random_features, nystrom, heat, kernels, hadamard)
                     for c in mod.CASES]
PASSES = ("fwd", "fwd+bwd")


def find(names: Sequence[str] | None) -> list[Case]:
    if not names:
        return list(CASES)
    known = {c.name: c for c in CASES}
    bad = [n for n in names if n not in known and not any(c.name.startswith(n) for c in CASES)]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; known: {', '.join(known)}")
    return [c for c in CASES if any(c.name == n or c.name.startswith(n) for n in names)]


def callables(case: Case, sizes: Sizes, dtype: str, seed: int = 0, backend: Any = None,
              peer_device: str = "cpu") -> dict[str, dict[str, Any]]:
    """``{"fwd": {"refattn": f, peer: f...}, "fwd+bwd": {...}}`` on the same inputs: refattn's on
    ``backend`` (NumPy by default), the torch peers' on ``peer_device``."""
    rs = np.random.default_rng(seed)
    host = [a.astype(dtype) for a in case.make(rs, sizes)]
    ref_in = host if backend is None else [backend.asarray(a) for a in host]
    out0 = case.fn(*ref_in, **case.kwargs)
    dout = rs.standard_normal(tuple(out0.shape)).astype(dtype)
    ref_dout = dout if backend is None else backend.asarray(dout)
    tens = [torch.from_numpy(a).to(peer_device) for a in host]
    leaves = [t.clone().requires_grad_() for t in tens]
    tdout = torch.from_numpy(dout).to(peer_device)
    host = ref_in

    def ref_fb():
        _, pullback = refattn.vjp(case.fn, *host, **case.kwargs)
        return pullback(ref_dout)

    out = {"fwd": {"refattn": lambda: case.fn(*host, **case.kwargs)}, "fwd+bwd": {"refattn": ref_fb}}
    for name, peer in case.peers.items():
        def fwd(peer=peer):
            with torch.no_grad():
                return peer(*tens)

        def fb(peer=peer):
            for t in leaves:
                t.grad = None
            peer(*leaves).backward(tdout)

        out["fwd"][name], out["fwd+bwd"][name] = fwd, fb
    return out


def run_ratios(cases: Sequence[Case], sizes: Sizes, dtypes: Sequence[str], passes: Sequence[str],
               repeat: int, warmup: int, clock=time.perf_counter, log=print, backend: Any = None,
               peer_device: str = "cpu") -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        if case.max_n is not None and sizes.n > case.max_n:
            s = Sizes(sizes.batch, sizes.heads, case.max_n, sizes.d, min(sizes.features, case.max_n))
        else:
            s = sizes
        for dtype in dtypes:
            fns = callables(case, s, dtype, backend=backend, peer_device=peer_device)
            for pas in passes:
                names = list(fns[pas])
                res = interleaved([fns[pas][k] for k in names], warmup=warmup, repeat=repeat, clock=clock,
                                  sync=_sync(backend, peer_device))
                t_ref = median(res["times"][0])
                for i, peer in enumerate(names[1:]):
                    row = {"method": case.name, "peer": peer, "dtype": dtype, "pass": pas, "n": s.n,
                           "t_refattn_ms": 1e3 * t_ref, "t_peer_ms": 1e3 * median(res["times"][i + 1]),
                           **summary(res["ratios"][i])}
                    rows.append(row)
                    log(fmt_row(row))
    return rows


def _sync(backend: Any, peer_device: str):
    """Wait for queued device work of both sides (a no-op on the CPU)."""
    if backend is None and peer_device == "cpu":
        return lambda: None

    def sync() -> None:
        if backend is not None:
            backend.synchronize()
        if peer_device != "cpu":
            torch.cuda.synchronize()

    return sync


HEADER = (f"{'method':<20}{'peer':<10}{'dtype':<9}{'pass':<9}{'n':>6}{'refattn ms':>12}{'peer ms':>10}"
          f"{'ratio':>8}  {'IQR':<13}")


def fmt_row(r: dict[str, Any]) -> str:
    flag = " *" if r["ratio"] > 1.5 else ""
    return (f"{r['method']:<20}{r['peer']:<10}{r['dtype']:<9}{r['pass']:<9}{r['n']:>6}{r['t_refattn_ms']:>12.2f}"
            f"{r['t_peer_ms']:>10.2f}{r['ratio']:>8.2f}  [{r['q1']:.2f}, {r['q3']:.2f}]{flag}")


def table(rows: Sequence[dict[str, Any]]) -> str:
    return "\n".join([HEADER, *(fmt_row(r) for r in rows)])


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": model, "cores": os.cpu_count(), "loadavg": load, "python": sys.version.split()[0],
            "numpy": np.__version__, "torch": torch.__version__, "refattn": refattn.__version__,
            "torch_threads": torch.get_num_threads()}


def warn_if_busy(info: dict[str, Any], threads: int, clock: str) -> None:
    """Print :func:`benchmarks._timing.load_warning` for this run (to stderr) and keep it in ``info``."""
    used = max(threads, blas_threads(info["cores"]))
    info["load_warning"] = msg = load_warning(info["loadavg"], info["cores"], used, clock)
    if msg:
        print(msg, file=sys.stderr, flush=True)


def _common(p: argparse.ArgumentParser, allocator: str) -> None:
    p.add_argument("--method", nargs="+", default=None, help="case names or prefixes (default: all; see --list)")
    p.add_argument("--quick", action="store_true", help="small sizes, few rounds: a smoke run of seconds")
    p.add_argument("--dtype", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    p.add_argument("--threads", type=count(1), default=os.cpu_count(),
                   help="torch.set_num_threads (default: the cores, as OpenBLAS uses)")
    p.add_argument("--out", default=None, help="write the rows and the machine to this JSON file")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--allocator", choices=["reuse", "system"], default=allocator,
                   help="system: glibc's defaults; reuse: large freed blocks stay in the heap (glibc "
                        f"mallopt), so no size pays page faults per call (default {allocator}; see "
                        "benchmarks._timing.set_allocator)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["scale"]:
        from .scale import main as scale_main

        return scale_main(argv[1:])
    if argv[:1] == ["scaling"]:
        from .scaling import main as scaling_main

        return scaling_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, allocator="system")
    p.add_argument("--n", type=count(1), default=1024, help="sequence length n = m (default 1024)")
    p.add_argument("--heads", type=count(1), default=4)
    p.add_argument("--batch", type=count(1), default=1)
    p.add_argument("--d", type=count(1), default=64, help="head dimension d = dv (default 64)")
    p.add_argument("--features", type=count(1), default=256, help="random features D / Linformer k (default 256)")
    p.add_argument("--pass", dest="passes", nargs="+", default=list(PASSES), choices=PASSES)
    p.add_argument("--repeat", type=count(1), default=None, help="interleaved rounds (default 9; --quick 3)")
    p.add_argument("--warmup", type=count(0), default=None, help="warm-up rounds (default 2; --quick 1)")
    p.add_argument("--backend", default="numpy",
                   help="refattn's backend (default numpy; e.g. cupy for a GPU run, with --peer-device cuda)")
    p.add_argument("--peer-device", default="cpu", help="torch device of the peers (default cpu)")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="wall time (default), or this thread's CPU time: immune to other processes' load, "
                        "meaningful only single-threaded (OPENBLAS_NUM_THREADS=1 and --threads 1)")
    a = p.parse_args(argv)
    if a.list:
        print("\n".join(f"{c.name:<20} peers: {', '.join(c.peers)}" for c in CASES))
        return 0
    torch.set_num_threads(a.threads)
    sizes = (Sizes(1, 2, 128, 16, 32) if a.quick else Sizes(a.batch, a.heads, a.n, a.d, a.features))
    repeat = a.repeat or (3 if a.quick else 9)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    info = machine()
    info["allocator"] = set_allocator(a.allocator)
    print(f"refattn ({a.backend}) / torch peer ({a.peer_device}), B={sizes.batch} H={sizes.heads} n={sizes.n} "
          f"d={sizes.d} "
          f"D=k={sizes.features}; {repeat} interleaved rounds after {warmup} warm-up(s); torch "
          f"{info['torch']} on {info['torch_threads']} threads, NumPy {info['numpy']}; load {info['loadavg']}; "
          f"{info['allocator']}")
    warn_if_busy(info, a.threads, a.clock)
    print(HEADER)
    if a.clock == "thread" and a.threads != 1:
        raise SystemExit("--clock thread needs --threads 1 (and OPENBLAS_NUM_THREADS=1 in the environment)")
    clock = time.thread_time if a.clock == "thread" else time.perf_counter
    backend = None
    if a.backend != "numpy":
        from refattn import backends

        backend = backends.get(a.backend)
    rows = run_ratios(find(a.method), sizes, a.dtype, a.passes, repeat, warmup, clock,
                      backend=backend, peer_device=a.peer_device)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"machine": info, "sizes": vars(sizes), "repeat": repeat, "warmup": warmup,
                       "clock": a.clock, "backend": a.backend, "peer_device": a.peer_device, "rows": rows},
                      fh, indent=1)
    worst = max(rows, key=lambda r: r["ratio"]) if rows else None
    if worst:
        print(f"worst: {worst['method']} vs {worst['peer']} {worst['dtype']} {worst['pass']}: {worst['ratio']:.2f}x"
              " (* marks ratios above 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
