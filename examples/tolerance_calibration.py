"""How well refattn's default tolerances separate correct from buggy attention implementations.

    python examples/tolerance_calibration.py [--cases 200] [--bug-cases 100]

False alarms: correct implementations -- refattn itself, a naive implementation keeping every
intermediate in the tested dtype (``refattn.testing.naive_attention``), and torch SDPA -- in
float16, bfloat16, float32 and float64, over Hypothesis-generated cases (every mask kind, logit
standard deviations 0.25 to 2000, value scales 0.1 to 10, explicit and default scales), outputs
and gradients compared with the float64 oracle. Every case must pass.

Detection: the five injected bugs of ``refattn.testing.BUGS``, each over the cases in which it is
observable (``refattn.testing.bug_regime``); every case must fail.

Prints both tables, with the largest error/tolerance ratio seen by a correct implementation (the
headroom). Exit status 0 when there is no false alarm and every bug is caught in float16, float32
and float64 (bfloat16 detection is reported, not required).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import refattn
from refattn import testing as rt

ALL_MASKS = list(rt.MASK_KINDS)
LOGIT_SCALES = (1.0, 0.25, 4.0, 16.0, 64.0, 2000.0)


def sdpa(q, k, v, *, mask=None, causal=False, scale=None, key_lengths=None):
    import torch

    n, m = q.shape[-2], k.shape[-2]
    if key_lengths is not None:
        mask = torch.arange(m) < key_lengths[..., None, None]
    if causal == "bottom_right":
        mask, causal = torch.ones(n, m, dtype=torch.bool).tril(m - n), False
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bool(causal),
                                                            scale=scale)


def correct_implementations():
    """(label, fn, vjp, backend, dtype) of the correct implementations swept."""
    rows = [("refattn", refattn.softmax_attention, None, "numpy", dt) for dt in ("float16", "float32", "float64")]
    rows += [("naive", rt.naive_attention, rt.naive_attention_vjp, "numpy", dt)
             for dt in ("float16", "float32", "float64")]
    try:
        import torch  # noqa: F401
    except ImportError:
        return rows
    rows += [("refattn", refattn.softmax_attention, None, "torch", "bfloat16"),
             ("naive", rt.naive_attention, rt.naive_attention_vjp, "torch", "bfloat16")]
    rows += [("torch SDPA", sdpa, None, "torch", dt) for dt in ("float16", "bfloat16", "float32", "float64")]
    return rows


def false_alarms(cases: int, seed: int = 0) -> list[tuple[str, str, str, int, int, float]]:
    out = []
    for label, fn, vjp, backend, dtype in correct_implementations():
        r = rt.check_attention(fn, backend=backend, dtype=dtype, vjp=vjp, masks=ALL_MASKS, max_examples=cases,
                               shrink=False, seed=seed, scales=(None, 0.3), logit_scales=LOGIT_SCALES)
        out.append((label, backend, dtype, r.n_failed, r.n_cases, max(r.worst().values())))
    return out


def detections(cases: int, dtypes=("float16", "float32", "float64", "bfloat16"), seed: int = 0):
    out = []
    for bug in rt.BUGS:
        fn = functools.partial(rt.naive_attention, bug=bug)
        vjp = functools.partial(rt.naive_attention_vjp, bug=bug)
        for dtype in dtypes:
            backend = "torch" if dtype == "bfloat16" else "numpy"
            r = rt.check_attention(fn, backend=backend, dtype=dtype, vjp=vjp, max_examples=cases, shrink=False,
                                   seed=seed, **rt.bug_regime(bug))
            seen = [x for x in r.results if rt.bug_observable(bug, x.logits, dtype)]
            out.append((bug, dtype, sum(not x.ok for x in seen), len(seen)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=200, help="cases per correct implementation and dtype")
    ap.add_argument("--bug-cases", type=int, default=100, help="cases per bug and dtype")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    fa = false_alarms(args.cases, args.seed)
    print(f"False alarms (correct implementations, outputs and gradients; {args.cases} cases each)")
    print(f"  {'implementation':<15}{'backend':<8}{'dtype':<10}{'failed':>14}{'max err/tol':>13}")
    for label, backend, dtype, failed, n, worst in fa:
        print(f"  {label:<15}{backend:<8}{dtype:<10}{f'{failed} of {n}':>14}{worst:>13.3g}")
    total_f, total_n = sum(r[3] for r in fa), sum(r[4] for r in fa)
    print(f"  total: {total_f} false alarms in {total_n} cases ({4 * total_n} compared arrays)\n")
    det = detections(args.bug_cases, seed=args.seed)
    print(f"Detection of injected bugs (naive implementation, {args.bug_cases} cases each, observable cases)")
    print(f"  {'bug':<21}" + "".join(f"{dt:>14}" for dt in ("float16", "float32", "float64", "bfloat16")))
    for bug in rt.BUGS:
        cells = {dt: f"{c} of {n}" for b, dt, c, n in det if b == bug}
        print(f"  {bug:<21}" + "".join(f"{cells[dt]:>14}" for dt in ("float16", "float32", "float64", "bfloat16")))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    required = [(c, n) for b, dt, c, n in det if dt != "bfloat16"]
    return 0 if total_f == 0 and all(c == n and n > 0 for c, n in required) else 1


if __name__ == "__main__":
    sys.exit(main())
