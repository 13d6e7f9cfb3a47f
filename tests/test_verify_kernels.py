"""The ledger of paper 002 (trainable feedforward kernels) in quick mode: each claim's status.

- glu-param holds: AOGLU at r = n/4 has n^2 + n^2/2 weights against GLU's 2 n^2, exactly 25% fewer (n
  divisible by 4). glu-double holds (2 n^2 vs n^2). aoglu-rhalf holds (fewer iff r < n/2).
- ffn-pos holds conditionally: Softplus, sigmoid > 0 on R, but float64 underflow below ~ -745.
- kern-factor holds: with kappa = phi.phi the factorisation is an identity (associativity).
- kern-on holds: FLOPs linear in n at fixed d. oglu-init holds (penalty at rounding level).
- glu-stack10 is not checkable: the model's parameter budget is not given.
"""

from __future__ import annotations

import pytest
from refattn.verification import kernels  # noqa: F401  (registers the claims)
from refattn.verification._verdict import REGISTRY, Context

import refattn
from tests._ledger import quick_verdict

EXPECTED = {
    "glu-param": "holds",
    "ffn-pos": "holds-conditionally",
    "glu-double": "holds",
    "aoglu-rhalf": "holds",
    "kern-factor": "holds",
    "kern-on": "holds",
    "oglu-init": "holds",
    "glu-stack10": "not-checkable",
    "aoglu-cost": "holds-conditionally",  # 4.5 n^2 per token: above every 1- and 2-unit kernel, below 3xGLU's 6 n^2
}


def test_every_claim_of_paper_002_is_registered():
    assert {c for c, info in REGISTRY.items() if info.paper == "002"} == set(EXPECTED)


@pytest.mark.parametrize("claim_id", sorted(EXPECTED))
def test_quick_status(claim_id):
    verdict = quick_verdict(claim_id)  # the shared quick run (tests/_ledger.py)
    assert verdict.status == EXPECTED[claim_id], verdict.evidence
    assert verdict.evidence and verdict.figure


def test_quick_status_under_array_api_strict():
    be = refattn.backends.get("array_api_strict")
    for claim_id in ("ffn-pos", "kern-factor", "oglu-init"):
        assert REGISTRY[claim_id].check(Context(quick=True, backend=be)).status == EXPECTED[claim_id]
