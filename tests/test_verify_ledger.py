"""The whole quick ledger, as `refattn verify --quick` runs it (one shared run: tests/_ledger.py).

- Every claim module is listed in ``verification.MODULES`` and loads; every claim id of the static
  catalogue (CLAIMS.md) is registered by a module (none is "not yet landed").
- Every registered claim has its expected quick-mode status asserted in a test_verify_<module>.py
  (the ``EXPECTED`` tables, each status derived there from the mathematics).
- The report built from the real run validates against the documented schema (and strict JSON).
- The figures the issue asks for are produced, with their data, and drawn when matplotlib is there.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

import verification
from refattn import backends
from tests._ledger import quick_ledger
from verification import report as rep

ROOT = Path(__file__).resolve().parents[1]
NOT_CLAIM_MODULES = {"__init__", "_verdict", "cli", "report"}


def test_modules_lists_every_claim_module_and_each_loads():
    files = {p.stem for p in (ROOT / "verification").glob("*.py")} - NOT_CLAIM_MODULES
    assert set(verification.MODULES) == files
    states = verification.load()
    assert all(states[m] == ("loaded", "") for m in verification.MODULES), states


def test_every_catalogue_claim_is_registered_by_its_module():
    verification.load()
    missing = [e.claim_id for e in verification.CATALOGUE if e.claim_id not in verification.REGISTRY]
    assert not missing
    for e in verification.CATALOGUE:
        assert verification.REGISTRY[e.claim_id].module == e.module, e.claim_id


def test_every_registered_claim_has_an_asserted_expected_status():
    verification.load()
    expected: dict[str, str] = {}
    for module in verification.MODULES:
        table = importlib.import_module(f"tests.test_verify_{module}").EXPECTED
        assert not set(table) & set(expected), "a claim is expected in two test files"
        expected.update(table)
    assert set(expected) == set(verification.REGISTRY)
    verdicts, _ = quick_ledger()
    wrong = {cid: (v.status, expected[cid]) for cid, v in verdicts.items() if v.status != expected[cid]}
    assert not wrong, wrong


def test_no_check_raised():
    """A check that raises is reported as not-checkable with "the check raised ..."; none does."""
    verdicts, _ = quick_ledger()
    raised = {cid: v.evidence for cid, v in verdicts.items() if v.evidence.startswith("the check raised")}
    assert not raised


def _doc():
    verdicts, seconds = quick_ledger()
    return rep.build(list(verdicts.values()), quick=True, backend=backends.get("numpy"), seconds=seconds,
                     modules=verification.module_status())


def test_real_report_validates_against_the_schema():
    doc = _doc()
    rep.validate(doc)
    rep.validate(json.loads(json.dumps(doc, allow_nan=False)))  # strict JSON: NaN written as null
    assert sum(doc["counts"].values()) == len(verification.REGISTRY) == len(doc["verdicts"])
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(doc, rep.SCHEMA)


#: The plots the issue lists: claim id -> what the figure must show
PLOTS = {
    "lin-thm1-proof-additive": "error vs k for Linformer (the proof's construction) with the JL bound",
    "favor-orf": "error vs D, iid vs orthogonal",
    "nys-exact": "Nystrom error vs m",
    "nys-pinv": "pseudoinverse residual per iteration",
    "surv-table": "counted FLOPs vs n for every method, log-log, fitted slopes",
    "surv-table-mem": "counted peak memory vs n for every method, log-log, fitted slopes",
    "wht-flops": "FWHT vs dense projection FLOPs",
}


def test_the_issue_figures_are_there():
    verdicts, _ = quick_ledger()
    figs = {cid: verdicts[cid].plot for cid in PLOTS}
    assert all(f is not None for f in figs.values()), [c for c, f in figs.items() if f is None]
    assert any("JL" in name or "Theorem 1" in name for name in figs["lin-thm1-proof-additive"].lines)
    assert {"positive, iid W", "positive, orthogonal W"} <= set(figs["favor-orf"].series)
    assert figs["nys-exact"].xlabel.startswith("m")
    assert any(name.startswith("residual") for name in figs["nys-pinv"].series)
    for cid in ("surv-table", "surv-table-mem"):
        f = figs[cid]
        assert f.loglog and all(": n^" in name for name in f.series)
        # every public attention method of refattn.methods is in the figure
        labels = " ".join(f.series)
        for name in ("softmax", "Linformer", "RFA", "Nystrom", "FAVOR+", "Verma", "HEAT", "GLU", "elu+1"):
            assert name in labels, (cid, name)
    assert set(figs["wht-flops"].lines) >= {"c^2", "c log2 c"}


def test_plots_are_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    doc = _doc()
    doc["verdicts"] = [v for v in doc["verdicts"] if v["claim_id"] in PLOTS]  # draw these only (time)
    files, summary = rep.write_plots(doc, tmp_path)
    for cid in PLOTS:
        assert (tmp_path / files[cid]).stat().st_size > 0
    assert summary is not None and (tmp_path / summary).is_file()


def test_readme_main_job_is_refattn_verify_and_ci_installs_what_it_needs():
    """README's first fresh-machine command ends in `refattn verify` (the main job, which draws plots),
    its test command is the one .ci/run runs, and .ci/run installs the plots extra."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    blocks = readme.split("## On a fresh machine", 1)[1].split("```bash\n")[1:3]
    install, tests = (b.split("```", 1)[0].strip() for b in blocks)
    assert install.endswith("refattn verify") and ".[test,plots]" in install
    assert tests == "python -m pytest -q -p no:cacheprovider"
    assert ci.strip().splitlines()[-1] == tests
    extras = re.search(r'-e "\.\[([a-z,]+)\]"', ci)
    assert extras and {"test", "plots"} <= set(extras.group(1).split(","))
    assert "docs/verify_counts.png" in readme and (ROOT / "docs" / "verify_counts.png").is_file()


def test_every_row_states_its_evidence_kind_condition_and_a_numeric_key_figure():
    """Measured rows carry P(wrong) in [0, 1); derived ones none; a conditional verdict states its
    condition; every key figure has a number; every row lists its papers (its own first)."""
    verdicts, _ = quick_ledger()
    for cid, v in verdicts.items():
        assert v.kind in ("measured", "derived") if v.status != "not-checkable" else v.kind == "none", cid
        if v.kind == "measured":
            assert v.p_wrong is not None and 0 <= v.p_wrong < 1, cid
        else:
            assert v.p_wrong is None, cid
        assert bool(v.condition) == (v.status == "holds-conditionally"), cid
        assert any(ch.isdigit() for ch in v.figure), (cid, v.figure)
        assert v.papers and v.papers[0] == v.paper and v.claim, cid


def test_rows_of_one_claim_name_their_readings():
    verdicts, _ = quick_ledger()
    by_claim: dict[str, list] = {}
    for v in verdicts.values():
        by_claim.setdefault(v.claim, []).append(v)
    split = {c: vs for c, vs in by_claim.items() if len(vs) > 1}
    assert {"lin-thm1", "lin-thm2", "heat-eq8", "verma-k", "lin-jl-ip", "verma-cost"} <= set(split)
    for c, vs in split.items():
        assert c in {v.claim_id for v in vs}, c  # the claim's own row is one of them
        readings = [v.reading for v in vs]
        assert all(readings) and len(set(readings)) == len(readings), (c, readings)


def test_counts_by_paper_count_a_row_under_every_paper_that_makes_it():
    doc = _doc()
    v = next(v for v in doc["verdicts"] if v["claim_id"] == "lin-thm1")
    assert set(v["papers"]) == {"001", "003"}
    for p in v["papers"]:
        assert doc["counts_by_paper"][p][v["status"]] >= 1
    assert sum(sum(c.values()) for c in doc["counts_by_paper"].values()) == sum(
        len(v["papers"]) for v in doc["verdicts"])
    assert doc["claims"] == len({v["claim"] for v in doc["verdicts"]}) < len(doc["verdicts"])
    assert doc["papers"]["003"].startswith("Verma, Revisiting Linformer")
    table = rep.format_table([verification.Verdict(**{**{k: v[k] for k in (
        "claim_id", "source", "statement", "status", "evidence", "figure")}, "paper": v["paper"],
        "papers": tuple(v["papers"])})])
    assert "Revisiting Linformer with a modified self-attention with linear complexity" in table
