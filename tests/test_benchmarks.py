"""Smoke test of the benchmarks module (not a timing test): ``--quick`` runs on tiny sizes, writes its
JSON, and every case's torch peer computes the same output as refattn (so the ratios compare the same
mathematics)."""

import json

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
    assert bench.main(["scaling", "--quick", "--method", "linear", "--dtype", "float32", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert [r["method"] for r in res] == ["linear", "linear-causal"]
    assert all(len(r["points"]) == 4 and r["time_exponent"] is not None for r in res)
