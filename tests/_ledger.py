"""The quick ledger, run once per test session and shared by the tests/test_verify_*.py files.

Each claim module's test asserts the expected quick-mode status of its claims on these verdicts,
so every check runs once (through the runner, as ``refattn verify --quick`` runs it), not once per
test file; ``test_verify_ledger.py`` validates the report built from the same run.
"""

from __future__ import annotations

import functools
import time

import verification
from verification import Verdict


@functools.cache
def quick_ledger() -> tuple[dict[str, Verdict], float]:
    """``({claim_id: verdict}, seconds)`` of ``verification.run(quick=True)`` on numpy (cached)."""
    t0 = time.perf_counter()
    verdicts = verification.run(quick=True, backend="numpy")
    return {v.claim_id: v for v in verdicts}, time.perf_counter() - t0


def quick_verdict(claim_id: str) -> Verdict:
    """The quick-mode verdict of one claim, from the shared run."""
    return quick_ledger()[0][claim_id]
