"""The command line's bad input (issue 21): every subcommand but ``refattn check`` (its exit codes are
tested with the oracle) answers bad arguments and files with exit code 2 and one line on stderr, never
a traceback; ``example-inputs --out f`` writes ``f``; ``verify`` refuses bad claims before creating
``--out``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from refattn.cli import main


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 1
    return rc, out.getvalue(), err.getvalue()


COST = ["cost", "softmax", "--n", "4", "--d", "2"]
BAD_CLI = {
    "cost-n-negative": ["cost", "softmax", "--n", "-1"],
    "cost-n-text": ["cost", "softmax", "--n", "x"],
    "cost-d-negative": [*COST[:4], "--d", "-2"],
    "cost-unknown-method": ["cost", "nonsense", "--n", "4"],
    "cost-unknown-backend": [*COST, "--backend", "nonsense"],
    "cost-option-impl": [*COST, "--option", "impl=fast"],
    "cost-option-unknown": [*COST, "--option", "bogus=1"],
    "cost-option-malformed": [*COST, "--option", "x"],
    "cost-causal": [*COST, "--causal", "sideways"],
    "cost-block-k-zero": [*COST, "--block-k", "0"],
    "cost-top-zero": [*COST, "--top", "0"],
    "cost-size-negative": ["cost", "linformer", "--n", "8", "--d", "2", "--size", "k=-3"],
    "cost-size-text": ["cost", "linformer", "--n", "8", "--d", "2", "--size", "k=abc"],
    "cost-heat-no-rank": ["cost", "heat", "--n", "4", "--d", "2"],
    "cost-dtype": [*COST, "--dtype", "complex128"],
    "info-unknown-flag": ["info", "--x"],
    "unknown-command": ["nonsense"],
    "example-inputs-scale-nan": ["example-inputs", "softmax", "--out", "{tmp}/a.npz", "--scale", "nan"],
    "example-inputs-scale-inf": ["example-inputs", "softmax", "--out", "{tmp}/a.npz", "--scale", "-inf"],
    "example-inputs-scale-complex": ["example-inputs", "softmax", "--out", "{tmp}/a.npz", "--scale", "1+2j"],
    "example-inputs-scale-text": ["example-inputs", "softmax", "--out", "{tmp}/a.npz", "--scale", "big"],
    "example-inputs-out-missing-dir": ["example-inputs", "softmax", "--out", "{tmp}/no/such/dir/a.npz"],
    "example-inputs-out-directory": ["example-inputs", "softmax", "--out", "{tmp}"],
    "example-inputs-shape": ["example-inputs", "softmax", "--out", "{tmp}/a.npz", "--shape", "2,x"],
    "example-inputs-shape-negative": ["example-inputs", "softmax", "--out", "{tmp}/a.npz", "--shape", "1,-4,4,2,2"],
    "example-inputs-method": ["example-inputs", "nonsense", "--out", "{tmp}/a.npz"],
    "example-inputs-mask": ["example-inputs", "softmax", "--out", "{tmp}/a.npz", "--mask", "sideways"],
    "verify-claim": ["verify", "--claim", "nonsense", "--out", "{tmp}/verify"],
    "verify-paper": ["verify", "--paper", "nonsense", "--out", "{tmp}/verify"],
    "verify-backend": ["verify", "--backend", "nonsense", "--out", "{tmp}/verify"],
    "verify-out-file": ["verify", "--claim", "jl-av", "--out", "{tmp}/file"],
    "bench-threads": ["bench", "--threads", "-1"],
    "bench-n-zero": ["bench", "--n", "0"],
    "bench-warmup": ["bench", "--warmup", "-1"],
    "bench-unknown-flag": ["bench", "--nonsense"],
    "bench-scaling-n-min": ["bench", "scaling", "--n-min", "-1"],
    "bench-scaling-budget": ["bench", "scaling", "--budget", "nan"],
}
#: benchmarks/ parses its own arguments (argparse's usage block before the error line)
MULTILINE_OK = {k for k in BAD_CLI if k.startswith("bench-")}


@pytest.mark.parametrize("case", list(BAD_CLI))
def test_bad_cli_input_exits_2_with_one_line(case: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in BAD_CLI[case]]
    rc, out, err = _run(argv)
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert lines and "Traceback" not in err, err
    if case not in MULTILINE_OK:
        assert len(lines) == 1, err
    assert "error" in lines[-1], err
    if case.startswith("verify-") and case != "verify-out-file":
        assert not (tmp_path / "verify").exists(), "--out was created before the bad input was refused"


def test_example_inputs_writes_the_named_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    rc, out, err = _run(["example-inputs", "softmax", "--out", str(target), "--shape", "1,4,4,2,2"])
    assert rc == 0, err
    assert target.is_file() and not (tmp_path / "f.npz").exists()
    assert out.startswith(f"wrote {target}")
    import numpy as np

    with np.load(target) as z:
        assert set(z.files) >= {"q", "k", "v", "dout"}
