"""The ledger of paper 000 (HEAT) in quick mode: each claim's status, derived from the mathematics.

- heat-eq10 fails: A(x ⊙ y) = (Ax) ⊙ (Ay) for all x, y iff every row of A has at most one non-zero, equal
  to 1 (refattn.methods.heat.eq10_holds); a general low-rank A is not of that form.
- heat-eq5 holds conditionally: Eckart-Young, with the constraint rank(X) <= r (not = r) and uniqueness
  only for sigma_r > sigma_{r+1}.
- heat-eq7, heat-eq2 fail on shapes (vector vs matrix / scalar); heat-eq3 fails (the attention matrix
  depends on the input); heat-eq6 fails for lambda > 0 (soft-thresholding shrinks the kept singular
  values); heat-nys-construct fails (n^2 entries).
- heat-on fails: every reading forms n x m logits, FLOPs ~ n^2.
- heat-eq8 as printed fails on shapes (it inherits eq. (7)); heat-eq8-lowrank (refattn's SVD readings) holds
  only when the logit spectrum decays (Eckart-Young: the error is the tail), exact at r = d.
- heat-exact-hadamard fails under eq. (7) (the logits are Q K^T: the vanilla transformer); the channel-wise
  reading (heat-exact-hadamard-channel) is a distinct function for d > 1.
- heat-faster fails: every reading forms the n x m logits and adds an SVD/QR (counted FLOPs >= softmax's).
- heat-nys-error holds only for structured (clustered) inputs: iid tokens have no low-rank attention.
- heat-on-softmax holds: dense softmax attention has n^2 counted FLOPs.
"""

from __future__ import annotations

import pytest
from refattn.verification import heat  # noqa: F401  (registers the claims)
from refattn.verification._verdict import REGISTRY, Context

import refattn
from tests._ledger import quick_verdict

EXPECTED = {
    "heat-eq10": "fails",
    "heat-eq5": "holds-conditionally",
    "heat-eq7": "fails",
    "heat-on": "fails",
    "heat-eq2": "fails",
    "heat-eq3": "fails",
    "heat-eq6": "fails",
    "heat-eq8": "fails",
    "heat-eq8-lowrank": "holds-conditionally",
    "heat-faster": "fails",
    "heat-nys-error": "holds-conditionally",
    "heat-exact-hadamard": "fails",
    "heat-exact-hadamard-channel": "holds",
    "heat-nys-construct": "fails",
    "heat-on-softmax": "holds",
}


def test_every_claim_of_paper_000_is_registered():
    assert {c for c, info in REGISTRY.items() if info.paper == "000"} == set(EXPECTED)


@pytest.mark.parametrize("claim_id", sorted(EXPECTED))
def test_quick_status(claim_id):
    verdict = quick_verdict(claim_id)  # the shared quick run (tests/_ledger.py)
    assert verdict.status == EXPECTED[claim_id], verdict.evidence
    assert verdict.evidence and verdict.figure


def test_heat_on_has_a_figure_and_exponents_near_two():
    verdict = REGISTRY["heat-on"].check(Context(quick=True, backend=refattn.backends.get("numpy")))
    assert verdict.plot is not None and verdict.plot.loglog
    exps = [float(x) for x in verdict.figure.removeprefix("FLOPs exponents in n ").split(" (")[0].split(", ")]
    assert all(1.8 < e < 2.05 for e in exps)


def test_quick_status_under_array_api_strict():
    be = refattn.backends.get("array_api_strict")
    for claim_id in ("heat-eq10", "heat-eq5", "heat-eq8-lowrank"):
        assert REGISTRY[claim_id].check(Context(quick=True, backend=be)).status == EXPECTED[claim_id]
