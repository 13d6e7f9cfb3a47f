"""Check torch's scaled_dot_product_attention (float32, float16) and a deliberately buggy attention
against refattn's float64 oracle, and (with a GPU) a CuPy attention.

    python examples/check_torch_sdpa.py [--max-examples 40]

What it shows:

1. ``refattn.testing.check_attention`` drives torch SDPA over generated cases (sizes, masks, logit
   and value magnitudes; Hypothesis) and compares outputs and gradients (torch autograd) with the
   oracle, with tolerances from the rounding-error model of the tested dtype: it PASSES.
2. The same check on an attention whose causal mask is off by one (each query also sees the next
   key) FAILS, and the report shows the minimal failing case Hypothesis shrank it to.
3. ``refattn.testing.assert_attention_close`` on one float16 result, with the inputs, prints the
   statistics and the tolerance used.
4. A CuPy attention checked on the GPU, or a clean skip without one.

Exit status 0 when SDPA passed and the buggy attention was caught.
"""

from __future__ import annotations

import argparse
import sys

import refattn
from refattn import backends
from refattn.testing import assert_attention_close, check_attention

MASKS = ["none", "causal", "bool", "additive", "key_lengths"]


def sdpa(q, k, v, *, mask=None, causal=False, scale=None, key_lengths=None):
    """torch SDPA in refattn's calling convention (mask True = keep, as in SDPA)."""
    import torch

    if key_lengths is not None:  # key padding -> a boolean keep-mask
        mask = torch.arange(k.shape[-2], device=k.device) < key_lengths[..., None, None]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bool(causal),
                                                            scale=scale)


def off_by_one_causal(q, k, v, *, mask=None, causal=False, scale=None, key_lengths=None):
    """A plausible bug: the causal mask built with ``tril(..., diagonal=1)`` (sees one future key)."""
    import torch

    n, m = q.shape[-2], k.shape[-2]
    if causal:
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(diagonal=1)
    s = (q @ k.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def cupy_attention(q, k, v, *, causal=False):
    """A small CuPy attention (forward only), computing in the inputs' dtype."""
    import cupy as cp

    s = (q @ cp.swapaxes(k, -1, -2)) * (q.shape[-1] ** -0.5)
    if causal:
        n, m = s.shape[-2:]
        s = cp.where(cp.tril(cp.ones((n, m), dtype=bool)), s, -cp.inf)
    s = s - s.max(axis=-1, keepdims=True)
    p = cp.exp(s)
    return (p / p.sum(axis=-1, keepdims=True)) @ v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-examples", type=int, default=40)
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch is not installed: pip install 'refattn[peers]'")
        return 0
    ok = True
    for dtype in ("float32", "float16"):
        report = check_attention(sdpa, "softmax", backend="torch", dtype=dtype, masks=MASKS,
                                 max_examples=args.max_examples)
        print(report, end="\n\n")
        ok &= report.ok

    report = check_attention(off_by_one_causal, "softmax", backend="torch", dtype="float32", masks=["causal"],
                             max_examples=args.max_examples)
    print(report, end="\n\n")
    caught = not report.ok
    print(f"deliberately buggy attention {'caught' if caught else 'NOT caught'}\n")

    # one float16 result, checked by hand
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32, generator=g, dtype=torch.float16) for _ in range(3))
    out = sdpa(q, k, v, causal=True)
    ref = refattn.softmax_attention(*(x.double() for x in (q, k, v)), causal=True)
    cmp = assert_attention_close(out, ref, inputs={"q": q, "k": k, "v": v, "causal": True})
    print("assert_attention_close, torch SDPA float16, causal, (2, 4, 64, 32):")
    print(" ", str(cmp).replace("\n", "\n  "), end="\n\n")

    try:
        backends.get("cupy")
    except backends.BackendUnavailable as exc:
        print(f"CuPy check skipped: {exc}")
    else:
        for dtype in ("float32", "float16"):
            report = check_attention(cupy_attention, "softmax", backend="cupy", dtype=dtype,
                                     masks=["none", "causal"], grads=False, max_examples=args.max_examples)
            print(report, end="\n\n")
            ok &= report.ok
    return 0 if ok and caught else 1


if __name__ == "__main__":
    sys.exit(main())
