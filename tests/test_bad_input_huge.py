"""Huge finite inputs (issue 21): every public function of the catalogue, every array scaled by a
huge finite factor (all at once and each alone; float64 and float32), each probe in a child process
with a time limit (tests/_catalogue_huge.py). The rule: a ``ValueError``/``TypeError`` (or a
documented ``ArithmeticError`` of the method, e.g. ``PinvConvergenceError``) or a finite output;
never a hang, never NaN/inf from finite inputs without an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ._catalogue_huge import probes

ROOT = Path(__file__).resolve().parents[1]
IDS = [pid for pid, *_ in probes()]
#: the documented errors of the methods beyond ValueError/TypeError (their docstrings)
DOCUMENTED = {"PinvConvergenceError", "NonPositiveNormalizerError"}
#: building blocks without ``check_finite`` whose *exact* result exceeds the dtype's range when the
#: listed arrays are huge (products of two or three of them): IEEE inf/NaN is the documented answer
#: (refattn._xp, "Input contract", huge finite values). ``(function, scaled array)``
EXACT_OVERFLOW = {
    ("causal_dot", "all"),  # (a_i . b_j) c_j: three huge factors
    ("orthogonality_penalty", "all"), ("orthogonality_penalty", "w"),  # ||W^T W - I||_F^2: W four times
    ("wht_projection", "all"),  # scale * H x: two huge factors
    ("feature_map", "all"),  # (x W_f) * sigmoid(x W_g) with x, W huge
    ("multi_head_attention", "all"),  # (softmax(..) x W_v) W_o: three huge factors
}


def _run_all() -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    start = 0
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    while start < len(IDS):
        proc = subprocess.run([sys.executable, "-m", "tests._catalogue_huge", str(start)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        last_started = None
        for line in proc.stdout.splitlines():
            if line.startswith("START "):
                last_started = int(line.split()[1])
            elif line.startswith("{"):
                row = json.loads(line)
                results[row["id"]] = row
                last_started = None
        if last_started is None:  # finished (or crashed between probes: nothing to blame)
            if proc.returncode != 0 and len(results) < len(IDS):
                raise AssertionError(f"probe child failed outside a probe: {proc.stderr[-2000:]}")
            break
        results[IDS[last_started]] = {"outcome": "hang-or-crash", "stderr": proc.stderr[-1500:]}
        start = last_started + 1
    return results


@pytest.fixture(scope="module")
def huge_results() -> dict[str, dict[str, Any]]:
    return _run_all()


@pytest.mark.parametrize("pid", IDS)
def test_huge_finite_probe(pid: str, huge_results: dict[str, dict[str, Any]]) -> None:
    row = huge_results[pid]
    assert row["outcome"] != "hang-or-crash", f"{pid}: no answer within the time limit (hang?)\n{row.get('stderr')}"
    name, label = pid.split("-")[0], pid.split("-")[-1]
    if (name, label) not in EXACT_OVERFLOW:
        assert row["outcome"] != "nonfinite", f"{pid}: finite inputs gave NaN/inf without an error"
    if row["outcome"] == "raise":
        ok = {"ValueError", "TypeError"} & set(row["bases"]) or row["exc"] in DOCUMENTED
        assert ok, f"{pid}: {row['exc']}: {row['msg']}"


def test_huge_probe_count(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nhuge-finite probes: {len(IDS)} (in one child process, restarted after a hang)")
    assert len(IDS) >= 300
