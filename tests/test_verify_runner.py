"""The ledger runner (verification/__init__.py), its reports (report.py) and ``refattn verify`` (cli.py).

Test claims are registered in fixtures and removed afterwards; the catalogue's real claims are used
only where the test does not depend on which method modules have landed.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import verification
import verification.cli
from refattn import backends
from refattn.cli import main as refattn_main
from verification import REGISTRY, Entry, Figure, claim
from verification import report as rep

ROOT = Path(__file__).resolve().parents[1]
TEST_PAPER = "test-paper"


@pytest.fixture
def fake_claims():
    """Four registered test claims: holds (with a plot), fails, raises, returns a bad status."""
    ids = ["t-holds", "t-fails", "t-raises", "t-bad-status"]
    seen = {}

    @claim("t-holds", paper=TEST_PAPER, source="test, eq. (1)", statement="1 + 1 = 2")
    def _holds(ctx):
        seen["ctx"] = ctx
        fig = Figure("a power law", "n", "cost", [1.0, 2.0, 4.0], {"cost": [1.0, 4.0, math.nan]},
                     {"∝ n": [1.0, 2.0, 4.0], "bad": [0.0, -1.0, 1.0]}, loglog=True)
        return "holds", "exact arithmetic", "2 == 2", fig

    @claim("t-fails", paper=TEST_PAPER, source="test, eq. (2)", statement="1 + 1 = 3")
    def _fails(ctx):
        return "fails", "counterexample: 1 + 1 = 2 | piped", "2 != 3"

    @claim("t-raises", paper=TEST_PAPER, source="test, eq. (3)", statement="raises")
    def _raises(ctx):
        msg = "boom in the check"
        raise RuntimeError(msg)

    @claim("t-bad-status", paper=TEST_PAPER, source="test, eq. (4)", statement="bad status")
    def _bad(ctx):
        return "probably", "?", ""

    yield seen
    for cid in ids:
        REGISTRY.pop(cid, None)


def test_registry_wraps_pieces_into_verdicts(fake_claims):
    verdicts = verification.run(quick=True, claim=["t-holds", "t-fails"])
    assert [v.claim_id for v in verdicts] == ["t-holds", "t-fails"]
    h, f = verdicts
    assert (h.status, h.figure, h.paper, h.statement, h.source) == ("holds", "2 == 2", TEST_PAPER, "1 + 1 = 2",
                                                                    "test, eq. (1)")
    assert h.module == "test_verify_runner" and h.plot is not None and h.seconds >= 0
    assert f.status == "fails" and f.plot is None
    ctx = fake_claims["ctx"]
    assert ctx.quick is True and ctx.backend.name == "numpy"


def test_a_check_that_raises_is_not_checkable_and_the_run_goes_on(fake_claims):
    calls = []
    verdicts = verification.run(claim=["t-raises", "t-bad-status", "t-holds"],
                                progress=lambda *a: calls.append(a))
    h, r, b = verdicts  # ledger order (registration order within a paper), not the order asked
    assert r.claim_id == "t-raises" and r.status == "not-checkable"
    assert "RuntimeError: boom in the check" in r.evidence
    assert b.status == "not-checkable" and "status must be one of" in b.evidence
    assert h.status == "holds"
    # progress: a start and an end call per claim, ends carry the verdict
    assert [(c[0], c[1], c[2], c[3] is None) for c in calls] == [
        (0, 3, "t-holds", True), (1, 3, "t-holds", False), (1, 3, "t-raises", True),
        (2, 3, "t-raises", False), (2, 3, "t-bad-status", True), (3, 3, "t-bad-status", False)]


def test_paper_filter_and_aliases(fake_claims):
    got = verification.run(paper=TEST_PAPER)
    assert {v.claim_id for v in got} == {"t-holds", "t-fails", "t-raises", "t-bad-status"}
    assert verification.resolve_paper("Survey") == "001"
    assert verification.resolve_paper("hadamard") == "004"
    assert verification.resolve_paper("classical") == "classical"
    survey = verification.run(paper="survey", claim="surv-lin-eq")
    assert [v.claim_id for v in survey] == ["surv-lin-eq"] and survey[0].paper == "001"


def test_every_catalogue_claim_is_reported(fake_claims):
    """Every CLAIMS.md id appears exactly once, whatever has landed; registered ones come too."""
    ids = verification.claim_ids()
    assert len(ids) == len(set(ids))
    assert {e.claim_id for e in verification.CATALOGUE} <= set(ids)
    assert {"t-holds", "surv-table", "heat-eq10", "orf-qr", "wht-params"} <= set(ids)
    for e in verification.CATALOGUE:
        assert e.module in verification.MODULES and e.paper in verification.PAPERS


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"paper": "017"}, "unknown paper '017'"),
    ({"claim": "heat-eq11"}, "unknown claim id 'heat-eq11'; did you mean heat-eq10"),
    ({"claim": "surv-table", "paper": "000"}, "belongs to paper 001"),
    ({"backend": "no-such-backend"}, "unknown backend"),
])
def test_bad_selection_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        verification.run(**kwargs)


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """Extra claim modules in a temporary directory on the package's path."""
    pkg = sys.modules[verification.__name__]
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    (tmp_path / "t_good.py").write_text(
        "from ._verdict import claim\n"
        "@claim('t-from-module', paper='test-paper', source='s', statement='st')\n"
        "def check(ctx):\n    return 'holds', 'ok', 'fig'\n")
    (tmp_path / "t_broken.py").write_text("raise RuntimeError('broken at import')\n")
    (tmp_path / "t_needs_method.py").write_text("import refattn.methods.t_not_landed_xyz\n")
    entries = (Entry("t-c-good", "test-paper", "s", "st", "t_good"),
               Entry("t-c-broken", "test-paper", "s", "st", "t_broken"),
               Entry("t-c-needs", "test-paper", "s", "st", "t_needs_method"),
               Entry("t-c-absent", "test-paper", "s", "st", "t_absent"))
    monkeypatch.setattr(verification, "CATALOGUE", (*verification.CATALOGUE, *entries))
    monkeypatch.setattr(verification, "MODULES", (*verification.MODULES, "t_good", "t_broken",
                                                  "t_needs_method", "t_absent"))
    yield
    REGISTRY.pop("t-from-module", None)
    for name in ("t_good", "t_broken", "t_needs_method", "t_absent"):
        verification._MODULE_STATUS.pop(name, None)
        for full in (f"verification.{name}", f"refattn.verification.{name}"):
            sys.modules.pop(full, None)


def test_missing_broken_and_landed_modules(module_dir):
    states = verification.load()
    assert states["t_good"] == ("loaded", "")
    assert states["t_absent"][0] == "missing" and "t_absent.py is absent" in states["t_absent"][1]
    assert states["t_needs_method"][0] == "missing" and "t_not_landed_xyz" in states["t_needs_method"][1]
    assert states["t_broken"][0] == "error" and "broken at import" in states["t_broken"][1]
    got = {v.claim_id: v for v in verification.run(paper="test-paper")}
    assert got["t-from-module"].status == "holds" and got["t-from-module"].module == "t_good"
    for cid, text in [("t-c-absent", "method/module not yet landed"), ("t-c-needs", "not yet landed"),
                      ("t-c-broken", "failed to import: RuntimeError: broken at import"),
                      ("t-c-good", "landed but registers no check")]:
        assert got[cid].status == "not-checkable" and text in got[cid].evidence, cid
    # importing a module under the other package name gives the same module (one registry)
    other = "refattn.verification.t_good" if verification.__name__ == "verification" else "verification.t_good"
    assert sys.modules[other] is sys.modules[f"{verification.__name__}.t_good"]


def test_both_package_names_share_one_registry():
    import refattn.verification as a
    import refattn.verification._verdict as av

    import verification._verdict as bv

    assert a is verification and av is bv and av.REGISTRY is REGISTRY


# ---------------------------------------------------------------------------------------------
# report.json: schema and validator
# ---------------------------------------------------------------------------------------------


def _doc(fake_claims) -> dict:
    verdicts = verification.run(paper=TEST_PAPER)
    return rep.build(verdicts, quick=True, backend=backends.get("numpy"), seconds=1.5, paper=TEST_PAPER,
                     modules=verification.module_status())


def test_report_validates_against_its_schema(fake_claims):
    doc = _doc(fake_claims)
    rep.validate(doc)
    text = json.dumps(doc, allow_nan=False)  # NaN in a figure became null: strict JSON
    rep.validate(json.loads(text))
    holds = next(v for v in doc["verdicts"] if v["claim_id"] == "t-holds")
    assert holds["plot"]["series"]["cost"] == [1.0, 4.0, None]
    assert doc["counts"] == {"holds": 1, "holds-conditionally": 0, "fails": 1, "not-checkable": 2}
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(doc, rep.SCHEMA)


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda d: d.pop("counts"), "missing required key 'counts'"),
    (lambda d: d["verdicts"][0].update(status="maybe"), r"\$.verdicts\[0\].status: 'maybe' is not one of"),
    (lambda d: d["verdicts"][0].update(extra=1), "unexpected key 'extra'"),
    (lambda d: d.update(seconds=-1.0), "minimum"),
    (lambda d: d.update(seconds=math.nan), "non-finite"),
    (lambda d: d["counts"].update(holds=1.5), "expected integer"),
    (lambda d: d.update(schema="other/1"), "expected 'refattn-verify-report/2'"),
    (lambda d: d["verdicts"][0].update(plot={"title": "t"}), "oneOf"),
])
def test_validator_rejects_bad_documents(fake_claims, mutate, match):
    doc = _doc(fake_claims)
    mutate(doc)
    with pytest.raises(rep.SchemaError, match=match):
        rep.validate(doc)


def test_table_markdown_and_plots(fake_claims, tmp_path):
    verdicts = verification.run(paper=TEST_PAPER)
    table = rep.format_table(verdicts)
    lines = table.splitlines()
    assert lines[0].split() == ["claim", "papers", "status", "evidence", "key", "figure", "[condition]"]
    assert any(ln.startswith("t-fails") and "fails" in ln and "2 != 3" in ln for ln in lines)
    doc = rep.build(verdicts, quick=True, backend=backends.get("numpy"), seconds=0.1)
    files, summary = {}, None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        files, summary = rep.write_plots(doc, tmp_path)
        assert set(files) == {"t-holds"} and (tmp_path / files["t-holds"]).stat().st_size > 0
        assert (tmp_path / summary).stat().st_size > 0
    rep.write_markdown(doc, tmp_path / "report.md", summary_plot=summary)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| [t-fails](#t-fails) | - | test-paper | test, eq. (2) | **fails** | derived | - | 2 != 3 |" in md
    assert "counterexample: 1 + 1 = 2 | piped" in md  # evidence text is kept verbatim in the body


def test_progress_bar_lines():
    out = io.StringIO()
    bar = verification.cli.Progress(out, width=10)

    class V:
        status, seconds = "holds", 0.25

    bar(0, 2, "a", None)
    bar(1, 2, "a", V)
    bar(2, 2, "b", V)
    lines = out.getvalue().splitlines()  # not a terminal: one line per finished claim
    assert lines[0].startswith("[#####.....] 1/2 a") and "holds" in lines[0] and "0.25 s" in lines[0]
    assert lines[1].startswith("[##########] 2/2 b")


# ---------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------


def _cupy_missing() -> bool:
    try:
        backends.get("cupy")
    except backends.BackendUnavailable:
        return True
    return False


@pytest.mark.parametrize(("argv", "match"), [
    (["--paper", "nope"], "unknown paper 'nope'"),
    (["--claim", "surv-tabel"], "unknown claim id 'surv-tabel'; did you mean surv-table"),
    (["--backend", "tensorflow"], "unknown backend 'tensorflow'"),
    pytest.param(["--backend", "cupy"], "install it with pip install 'refattn\\[gpu\\]'",
                 marks=pytest.mark.skipif(not _cupy_missing(), reason="CuPy is available here")),
    (["--out", "FILE/sub"], "cannot create --out directory"),
    (["--out", "FILE"], "is not a directory"),
])
def test_bad_input_exits_2(argv, match, tmp_path, capsys):
    (tmp_path / "FILE").write_text("a file, not a directory")
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    out_args = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    assert refattn_main(["verify", "--quick", *argv, *out_args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refattn verify: error: ")
    import re

    assert re.search(match, err), err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_exits_2(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert refattn_main(["verify", "--quick", "--claim", "surv-lin-eq", "--out", str(ro)]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_list(capsys):
    assert refattn_main(["verify", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(e.claim_id in out for e in verification.CATALOGUE)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}
    return subprocess.run([sys.executable, "-m", "refattn.cli", "verify", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def test_cli_end_to_end(tmp_path):
    proc = _cli("--quick", "--claim", "surv-lin-eq", "--out", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    assert "claim" in proc.stdout and "surv-lin-eq" in proc.stdout and "1/1 surv-lin-eq" in proc.stderr
    doc = json.loads((tmp_path / "rep" / "report.json").read_text(encoding="utf-8"))
    rep.validate(doc)
    assert [v["claim_id"] for v in doc["verdicts"]] == ["surv-lin-eq"]
    assert doc["quick"] is True and doc["filters"]["claims"] == ["surv-lin-eq"]
    assert (tmp_path / "rep" / "report.md").read_text(encoding="utf-8").startswith("# refattn verify")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install 'refattn[plots]'" in proc.stdout
    else:
        assert (tmp_path / "rep" / "plots" / "counts.png").is_file()


def test_cli_bad_claim_exit_code_in_a_subprocess(tmp_path):
    proc = _cli("--quick", "--claim", "no-such-claim", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown claim id 'no-such-claim'" in proc.stderr


def test_plot_styles_distinct():
    """Up to 12 series get distinct colours and markers; reference lines distinct (colour, dash) pairs,
    none solid, none sharing a series colour."""
    from verification import report

    styles = [report._series_style(i) for i in range(12)]
    assert len({s["color"] for s in styles}) == 12 and len({s["marker"] for s in styles}) == 12
    assert len({(s["color"], s["marker"]) for s in map(report._series_style, range(40))}) == 40
    refs = report._REFERENCE_STYLES
    assert len({(r["color"], str(r["linestyle"])) for r in refs}) == len(refs)
    assert all(r["linestyle"] != "-" and r["color"] not in report._SERIES_COLOURS for r in refs)
