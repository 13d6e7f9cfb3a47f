"""Smoke test of the benchmarks module (not a timing test): ``--quick`` runs on tiny sizes, writes its
JSON, and every case's torch peer computes the same output as refattn (so the ratios compare the same
mathematics)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import __main__ as bench  # noqa: E402
from benchmarks._case import Sizes  # noqa: E402
from refattn.cli import main as refattn_main  # noqa: E402


@pytest.mark.parametrize("case", bench.CASES, ids=lambda c: c.name)
def test_peer_computes_what_refattn_computes(case):
    """float64 outputs agree to 1e-10 relative to the largest entry (the same maths in another
    order: rounding ~ n u with n <= 64 here; HEAT's SVDs and Nystrom's iterations add a few orders)."""
    s = Sizes(1, 2, 64, 8, 16)
    host = case.make(np.random.default_rng(0), s)
    want = case.fn(*host, **case.kwargs)
    for name, peer in case.peers.items():
        with torch.no_grad():
            got = peer(*(torch.from_numpy(a) for a in host)).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max(), err_msg=name)


def test_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert refattn_main(["bench", "--quick", "--method", "linear", "fwht", "--dtype", "float32",
                         "--repeat", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["method"], r["pass"]) for r in rows} == {(m, p) for m in ("linear", "linear-causal", "fwht")
                                                        for p in ("fwd", "fwd+bwd")}
    assert all(r["ratio"] > 0 and r["q1"] <= r["ratio"] <= r["q3"] for r in rows)
    assert "ratio" in capsys.readouterr().out


def test_scaling_quick(tmp_path):
    out = tmp_path / "s.json"
    # --allocator system: "reuse" would change the allocator of the whole test process
    assert bench.main(["scaling", "--quick", "--method", "linear", "--dtype", "float32", "--allocator", "system",
                       "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    res = doc["results"]
    assert [r["method"] for r in res] == ["linear", "linear-causal"]
    assert all(len(r["points"]) == 4 and r["time_exponent"] is not None for r in res)
    assert doc["machine"]["allocator"] == "system allocator defaults"


def test_set_allocator_reuse_in_a_fresh_process():
    """``reuse`` sets glibc's mallopt (or says it could not); bad modes are named."""
    from benchmarks._timing import set_allocator

    code = "from benchmarks._timing import set_allocator; print(set_allocator('reuse'))"
    root = Path(__file__).resolve().parents[1]
    said = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=root).stdout
    assert said.startswith(("glibc heap reuse (mallopt M_MMAP_MAX=0", "system allocator defaults ("))
    with pytest.raises(ValueError, match="allocator mode must be 'reuse' or 'system', got 'fast'"):
        set_allocator("fast")


def test_load_warning():
    """A busy machine (fewer free cores than the run's threads) is warned about; a quiet one, or a
    single-threaded run on the thread clock, is not."""
    from benchmarks._timing import load_warning

    assert load_warning((4.6, 5.2, 5.0), 2, 2) is not None and "Single-threaded runs" in load_warning((4.6,), 2, 2)
    assert load_warning((0.1, 0.1, 0.1), 2, 2) is None
    assert load_warning((1.2,), 16, 8) is None and load_warning((9.0,), 16, 8) is not None
    assert load_warning((4.6,), 2, 1, clock="thread") is None
    assert load_warning(None, 2, 2) is None


def test_busy_machine_warns(monkeypatch, capsys):
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    assert refattn_main(["bench", "--quick", "--method", "fwht", "--dtype", "float32", "--pass", "fwd",
                         "--repeat", "1"]) == 0
    assert "warning: load average 64.00" in capsys.readouterr().err
