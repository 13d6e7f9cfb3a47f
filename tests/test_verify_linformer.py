"""The Linformer / linear-attention claims ledger (verification/linformer.py) in quick mode.

Each expected status follows from the mathematics (RECIPES.md sec. 1 and 6), not from a run:
- jl-av holds: k ||Rx||^2/||x||^2 ~ chi^2_k and the chi^2 tail is below 2 e^{-(eps^2-eps^3)k/4}.
- lin-jl-ip holds in the additive reading (eps ||x|| ||y||); lin-jl-ip-relative fails for x ⟂ y (the event
  <Rx, Ry> = 0 has probability 0); verma-lemma2 (003 as printed, no - x y^T) fails for x = y
  (P(chi^2_k <= eps k) is tiny); verma-eq1 (no eps) fails for u ⟂ w.
- lin-thm1 (the theorem: some P~ exists) holds: P B B^T with B a basis of span(V) completed to rank k is
  exact; lin-thm1-proof (P R^T R, relative) fails (Q = 0, w = e1 - e2 gives P w = 0 but P~ w != 0 a.s.);
  lin-thm1-proof-additive holds (the union bound of JL).
- lin-thm2 (the theorem) holds for k >= n (E = F = I), where its own k = 9 d ln d/eps^2 lies at every tested
  n: conditionally; lin-thm2-construction fails (delta -> 0 makes softmax(w E^T) uniform: output
  independent of w; the Q = 0 counterexample meets the bound with probability ~1e-5).
- verma-cost-product (2(ndd + dkd) FLOPs) and verma-hlx (2 x 2ndk) hold exactly; verma-space holds only
  with k fixed (the FLOPs grow with k); verma-jl (8 ln q/eps^2) is proved by the union bound only for
  small eps or few points; verma-k-quotient holds (2 d n^(-5/4) < 1 from n = 49).
- verma-thm1-additive holds (union bound).
- lin-shapes fails (E in R^{n x k} makes E K undefined); lin-k-vs-n holds only for n >= n0(eps).
- verma-cost fails (forming E K, F V costs 2 k m (d + dv)); verma-k fails (product instead of
  quotient makes the union bound >= 1); verma-delta fails (2^-n makes exp(delta x) == 1 exactly).
- verma-thm1 fails as printed: Verma's P = H L has rank <= d < n, so P c = 0 for c in its null space
  while P R^T R c != 0 almost surely (the relative bound cannot be met).
- verma-scaling-eq holds (associativity); verma-lowrank holds (rank(P) <= d by construction);
  verma-norm-product fails (|a . b| < ||a|| ||b|| unless parallel).
- surv-linformer-on holds only at fixed k (the count is 8 n k d + O(n k)).
(surv-lin-eq and surv-lin-cost, the survey's sec. 2.2, are checked in verification/survey.py.)
"""

from __future__ import annotations

import pytest
import refattn.verification.linformer  # noqa: F401  (registers the claims)
from refattn.verification._verdict import REGISTRY, STATUSES, Context, Figure, Verdict

import refattn
from tests._ledger import quick_verdict

EXPECTED = {
    "jl-av": "holds",
    "lin-jl-ip": "holds",
    "lin-jl-ip-relative": "fails",
    "verma-lemma2": "fails",
    "verma-eq1": "fails",
    "lin-thm1": "holds",
    "lin-thm1-proof": "fails",
    "lin-thm1-proof-additive": "holds",
    "lin-thm2": "holds-conditionally",
    "lin-thm2-construction": "fails",
    "lin-shapes": "fails",
    "lin-k-vs-n": "holds-conditionally",
    "verma-cost": "fails",
    "verma-cost-product": "holds",
    "verma-hlx": "holds",
    "verma-space": "holds-conditionally",
    "verma-jl": "holds-conditionally",
    "verma-k": "fails",
    "verma-k-quotient": "holds",
    "verma-delta": "fails",
    "verma-thm1": "fails",
    "verma-thm1-additive": "holds",
    "verma-scaling-eq": "holds",
    "verma-lowrank": "holds",
    "verma-norm-product": "fails",
    "surv-linformer-on": "holds-conditionally",
}


@pytest.fixture(scope="module")
def ctx():
    return Context(quick=True, backend=refattn.backends.get("numpy"))


@pytest.mark.parametrize("claim_id", sorted(EXPECTED))
def test_claim_status_in_quick_mode(ctx, claim_id):
    info = REGISTRY[claim_id]
    verdict = quick_verdict(claim_id)  # the shared quick run (tests/_ledger.py)
    assert isinstance(verdict, Verdict) and verdict.status in STATUSES
    assert verdict.status == EXPECTED[claim_id], verdict.evidence
    assert verdict.evidence and verdict.figure and verdict.source and verdict.statement
    assert info.paper in ("001", "003", "classical")
    if verdict.plot is not None:
        assert isinstance(verdict.plot, Figure)
        assert all(len(ys) == len(verdict.plot.x) for ys in verdict.plot.series.values())


def test_owned_claims_are_registered():
    assert set(EXPECTED) <= set(REGISTRY)


def test_checks_are_deterministic(ctx):
    a = REGISTRY["jl-av"].check(ctx)
    b = REGISTRY["jl-av"].check(ctx)
    assert a.evidence == b.evidence
