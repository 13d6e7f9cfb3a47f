"""The ledger's outputs: the printed table, ``report.json`` (schema below), ``report.md`` and plots.

``report.json`` follows :data:`SCHEMA` (JSON Schema, draft 2020-12 subset). :func:`validate` checks
a document against it without third-party packages (it implements the keywords the schema uses:
``type``, ``properties``, ``required``, ``additionalProperties``, ``items``, ``enum``, ``minimum``,
``const``); the tests also run ``jsonschema`` when it is installed.

Plots need matplotlib (``pip install 'refattn[plots]'``); they are drawn generically from each
verdict's :class:`Figure` (log-log when the figure asks for it; up to 12 series in distinct colours
and markers; reference lines grey, each in its own dash pattern, all named in the legend), plus a
summary of the status counts per paper.
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._verdict import KINDS, STATUSES, Verdict

__all__ = ["SCHEMA", "SCHEMA_ID", "build", "validate", "SchemaError", "write_json", "write_markdown",
           "write_plots", "format_table", "plot_name", "PLOTS_HINT"]

SCHEMA_ID = "refattn-verify-report/2"
PLOTS_HINT = "plots need matplotlib: pip install 'refattn[plots]'"

_NUM_OR_NULL = {"type": ["number", "null"]}
_FIGURE = {
    "type": "object",
    "required": ["title", "xlabel", "ylabel", "x", "series", "lines", "loglog"],
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string"},
        "xlabel": {"type": "string"},
        "ylabel": {"type": "string"},
        "x": {"type": "array", "items": _NUM_OR_NULL},
        "series": {"type": "object", "additionalProperties": {"type": "array", "items": _NUM_OR_NULL}},
        "lines": {"type": "object", "additionalProperties": {"type": "array", "items": _NUM_OR_NULL}},
        "loglog": {"type": "boolean"},
        "logy": {"type": "boolean"},  # optional: a log y axis only
    },
}
_COUNTS = {
    "type": "object",
    "required": list(STATUSES),
    "additionalProperties": False,
    "properties": {s: {"type": "integer", "minimum": 0} for s in STATUSES},
}

#: JSON Schema of ``report.json``. Non-finite numbers in figures are written as ``null``.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "refattn verify report",
    "type": "object",
    "required": ["schema", "refattn_version", "created", "quick", "backend", "filters", "environment",
                 "seconds", "counts", "claims", "kinds", "papers", "modules", "verdicts"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "refattn_version": {"type": "string"},
        "created": {"type": "string"},  # ISO 8601, UTC
        "quick": {"type": "boolean"},
        "backend": {
            "type": "object",
            "required": ["name", "device", "version"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "device": {"type": "string"},
                           "version": {"type": "string"}},
        },
        "filters": {
            "type": "object",
            "required": ["paper", "claims"],
            "additionalProperties": False,
            "properties": {"paper": {"type": ["string", "null"]},
                           "claims": {"type": ["array", "null"], "items": {"type": "string"}}},
        },
        "environment": {
            "type": "object",
            "required": ["python", "platform"],
            "additionalProperties": {"type": "string"},
            "properties": {"python": {"type": "string"}, "platform": {"type": "string"}},
        },
        "seconds": {"type": "number", "minimum": 0},
        "counts": _COUNTS,
        "counts_by_paper": {"type": "object", "additionalProperties": _COUNTS},  # a row under each of its papers
        "claims": {"type": "integer", "minimum": 0},  # distinct claims (a claim has one row per reading)
        "kinds": {"type": "object", "required": list(KINDS), "additionalProperties": False,
                  "properties": {k: {"type": "integer", "minimum": 0} for k in KINDS}},
        "papers": {"type": "object", "additionalProperties": {"type": "string"}},  # key -> full title
        "modules": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["state", "detail"],
                "additionalProperties": False,
                "properties": {"state": {"enum": ["loaded", "missing", "error"]},
                               "detail": {"type": "string"}},
            },
        },
        "verdicts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["claim_id", "paper", "module", "source", "statement", "status", "evidence",
                             "figure", "seconds", "plot", "plot_file", "kind", "p_wrong", "condition", "papers",
                             "claim", "reading"],
                "additionalProperties": False,
                "properties": {
                    "claim_id": {"type": "string"},
                    "paper": {"type": "string"},
                    "module": {"type": "string"},
                    "source": {"type": "string"},
                    "statement": {"type": "string"},
                    "status": {"enum": list(STATUSES)},
                    "evidence": {"type": "string"},
                    "figure": {"type": "string"},
                    "seconds": {"type": "number", "minimum": 0},
                    "plot": {"oneOf": [{"type": "null"}, _FIGURE]},
                    "plot_file": {"type": ["string", "null"]},
                    "kind": {"enum": list(KINDS)},
                    "p_wrong": {"type": ["number", "null"], "minimum": 0},
                    "condition": {"type": "string"},
                    "papers": {"type": "array", "items": {"type": "string"}},
                    "claim": {"type": "string"},
                    "reading": {"type": "string"},
                },
            },
        },
    },
}


class SchemaError(ValueError):
    """A document does not follow the schema; the message gives the JSON path."""


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def _check(doc: Any, schema: dict[str, Any], path: str) -> None:
    if "oneOf" in schema:
        ok = []
        for sub in schema["oneOf"]:
            try:
                _check(doc, sub, path)
                ok.append(sub)
            except SchemaError:
                pass
        if len(ok) != 1:
            msg = f"{path}: matches {len(ok)} of the oneOf alternatives, expected exactly 1"
            raise SchemaError(msg)
        return
    if "const" in schema and doc != schema["const"]:
        msg = f"{path}: expected {schema['const']!r}, got {doc!r}"
        raise SchemaError(msg)
    if "enum" in schema and doc not in schema["enum"]:
        msg = f"{path}: {doc!r} is not one of {schema['enum']}"
        raise SchemaError(msg)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](doc) for t in types):
            msg = f"{path}: expected {' or '.join(types)}, got {type(doc).__name__} {doc!r:.60}"
            raise SchemaError(msg)
        if isinstance(doc, float) and not math.isfinite(doc):
            msg = f"{path}: non-finite number {doc!r} (JSON has none)"
            raise SchemaError(msg)
    if "minimum" in schema and _TYPES["number"](doc) and doc < schema["minimum"]:
        msg = f"{path}: {doc!r} < minimum {schema['minimum']}"
        raise SchemaError(msg)
    if isinstance(doc, dict):
        for key in schema.get("required", []):
            if key not in doc:
                msg = f"{path}: missing required key {key!r}"
                raise SchemaError(msg)
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in doc.items():
            if key in props:
                _check(value, props[key], f"{path}.{key}")
            elif extra is False:
                msg = f"{path}: unexpected key {key!r}"
                raise SchemaError(msg)
            elif isinstance(extra, dict):
                _check(value, extra, f"{path}.{key}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            _check(item, schema["items"], f"{path}[{i}]")


def validate(doc: Any, schema: dict[str, Any] | None = None) -> None:
    """Raise :class:`SchemaError` (with the JSON path) unless ``doc`` follows ``schema`` (default SCHEMA)."""
    _check(doc, SCHEMA if schema is None else schema, "$")


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # a NumPy scalar
        return _finite(x.item())
    return x


def plot_name(claim_id: str) -> str:
    """File name of a claim's plot (ids are made safe for every file system)."""
    return "plots/" + re.sub(r"[^A-Za-z0-9_.-]", "_", claim_id) + ".png"


def _counts(verdicts: Iterable[Verdict]) -> dict[str, int]:
    c = dict.fromkeys(STATUSES, 0)
    for v in verdicts:
        c[v.status] += 1
    return c


def build(verdicts: Sequence[Verdict], *, quick: bool, backend: Any, seconds: float,
          paper: str | None = None, claims: Sequence[str] | None = None,
          modules: dict[str, tuple[str, str]] | None = None,
          plot_files: dict[str, str] | None = None) -> dict[str, Any]:
    """The report document (a dict following :data:`SCHEMA`)."""
    import refattn

    plot_files = plot_files or {}
    from . import PAPERS

    by_paper: dict[str, list[Verdict]] = {}
    for v in verdicts:
        for p in v.papers or (v.paper,):
            by_paper.setdefault(p, []).append(v)
    by_paper = dict(sorted(by_paper.items(), key=lambda kv: list(PAPERS).index(kv[0]) if kv[0] in PAPERS
                           else len(PAPERS)))
    rows = []
    for v in verdicts:
        d = asdict(v)
        d["plot"] = _finite(d["plot"]) if v.plot is not None else None
        d["seconds"] = max(0.0, float(v.seconds))
        d["plot_file"] = plot_files.get(v.claim_id)
        d["papers"] = list(v.papers or (v.paper,))
        rows.append(d)
    doc = {
        "schema": SCHEMA_ID,
        "refattn_version": str(getattr(refattn, "__version__", "?")),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": bool(quick),
        "backend": {"name": str(getattr(backend, "name", backend)),
                    "device": str(getattr(backend, "device", "")),
                    "version": str(getattr(backend, "version", ""))},
        "filters": {"paper": paper, "claims": list(claims) if claims else None},
        "environment": {"python": sys.version.split()[0], "platform": platform.platform()},
        "seconds": max(0.0, float(seconds)),
        "counts": _counts(verdicts),
        "counts_by_paper": {p: _counts(vs) for p, vs in by_paper.items()},
        "claims": len(dict.fromkeys(v.claim or v.claim_id for v in verdicts)),
        "kinds": {k: sum(v.kind == k for v in verdicts) for k in KINDS},
        "papers": {p: PAPERS[p] for p in by_paper if p in PAPERS},
        "modules": {name: {"state": state, "detail": detail}
                    for name, (state, detail) in (modules or {}).items()},
        "verdicts": rows,
    }
    return _finite(doc)


def write_json(doc: dict[str, Any], path: Path) -> None:
    validate(doc)
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")


def _cell(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _p_wrong(v: Any) -> str:
    kind = v["kind"] if isinstance(v, dict) else v.kind
    p = v["p_wrong"] if isinstance(v, dict) else v.p_wrong
    if kind != "measured":
        return kind
    return f"measured, P(wrong) <= {p:.0e}" if p else "measured"


def format_table(verdicts: Sequence[Verdict], *, width: int = 120) -> str:
    """The ledger as a plain-text table (claim row, papers, status, evidence kind, key figure and the
    condition of a conditional verdict), then the papers' full titles."""
    from . import PAPERS

    cw = max([5, *(len(v.claim_id) for v in verdicts)])
    pw = max([6, *(len(",".join(v.papers or (v.paper,))) for v in verdicts)])
    tw, kw = 19, 8
    fw = max(20, width - cw - pw - tw - kw - 8)
    lines = [f"{'claim':<{cw}}  {'papers':<{pw}}  {'status':<{tw}}  {'evidence':<{kw}}  key figure [condition]",
             f"{'-' * cw}  {'-' * pw}  {'-' * tw}  {'-' * kw}  {'-' * min(fw, 40)}"]
    for v in verdicts:
        fig = v.figure or "-"
        if v.condition:
            fig += f" [if {v.condition}]"
        lines.append(f"{v.claim_id:<{cw}}  {','.join(v.papers or (v.paper,)):<{pw}}  {v.status:<{tw}}  "
                     f"{v.kind:<{kw}}  {_cell(fig, fw)}")
    used = list(dict.fromkeys(p for v in verdicts for p in (v.papers or (v.paper,))))
    if any(p in PAPERS for p in used):
        lines += ["", "papers:"] + [f"  {p}: {PAPERS[p]}" for p in PAPERS if p in used]
    return "\n".join(lines)


def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def write_markdown(doc: dict[str, Any], path: Path, *, summary_plot: str | None = None) -> None:
    """``report.md``: the run, the counts, the ledger table, then each claim's evidence and plot."""
    c = doc["counts"]
    be = doc["backend"]
    out = [
        "# refattn verify: the claims ledger",
        "",
        f"refattn {doc['refattn_version']}, {'quick' if doc['quick'] else 'full'} run on backend "
        f"`{be['name']}` ({be['device']}), {doc['created']}, {doc['seconds']:.1f} s; "
        f"Python {doc['environment']['python']}, {doc['environment']['platform']}.",
        "",
        "| holds | holds-conditionally | fails | not-checkable | rows | claims | measured | derived |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {c['holds']} | {c['holds-conditionally']} | {c['fails']} | {c['not-checkable']} "
        f"| {sum(c.values())} | {doc['claims']} | {doc['kinds']['measured']} | {doc['kinds']['derived']} |",
        "",
        "A claim with two readings (a theorem and its proof's construction; an equation as printed and a "
        "reinterpretation) has one row per reading, each with its own verdict. *measured*: a statistical "
        "test on random draws, with P(wrong), the probability of a wrong verdict from its sample sizes "
        "(union bound over its assertions); *derived*: deterministic evidence (shapes, exact counts, "
        "arithmetic, rounding-bounded identities, counterexamples). A row is counted under every paper "
        "that makes the claim.",
        "",
        "Papers:",
        "",
    ]
    out += [f"- **{p}**: {title}" for p, title in doc.get("papers", {}).items()]
    out.append("")
    slow = sorted(doc["verdicts"], key=lambda v: v["seconds"], reverse=True)[:5]
    if slow:
        out += ["Slowest checks: " + ", ".join(f"`{v['claim_id']}` {v['seconds']:.1f} s" for v in slow) + ".",
                ""]
    if summary_plot:
        out += [f"![status counts per paper]({summary_plot})", ""]
    out += ["| claim | reading | papers | source | status | evidence | condition | key figure |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for v in doc["verdicts"]:
        out.append(f"| [{v['claim_id']}](#{v['claim_id']}) | {_md(v['reading']) or '-'} | "
                   f"{', '.join(v['papers'])} | {_md(v['source'])} | **{v['status']}** | {_p_wrong(v)} | "
                   f"{_md(v['condition']) or '-'} | {_md(v['figure']) or '-'} |")
    out += ["", "## Claims", ""]
    for v in doc["verdicts"]:
        out += [f"### {v['claim_id']}", "",
                f"*{_md(v['source'])}* (papers {', '.join(v['papers'])}, module `{v['module']}`, "
                f"{v['seconds']:.2f} s; claim `{v['claim']}`" + (f", reading: {v['reading']}" if v['reading'] else "")
                + f"; evidence: {_p_wrong(v)})",
                "", f"> {_md(v['statement'])}", "", f"**{v['status']}**: {v['figure'] or ''}"
                + (f" (condition: {v['condition']})" if v['condition'] else ""), ""]
        out += [line for line in str(v["evidence"]).splitlines()] + [""]
        if v.get("plot_file"):
            out += [f"![{v['claim_id']}]({v['plot_file']})", ""]
    mods = doc.get("modules") or {}
    if mods:
        out += ["## Claim modules", "", "| module | state | detail |", "| --- | --- | --- |"]
        out += [f"| {name} | {m['state']} | {_md(m['detail']) or '-'} |" for name, m in mods.items()]
        out.append("")
    path.write_text("\n".join(out), encoding="utf-8")


_COLOURS = {"holds": "#2e7d32", "holds-conditionally": "#9e9d24", "fails": "#c62828",
            "not-checkable": "#9e9e9e"}

#: colours of a figure's series: the qualitative tab10 cycle without its grey (kept for the
#: reference lines), then three more, so up to 12 series get distinct colours; each series also has
#: its own marker (12), so colour-blind readers and greyscale prints can tell them apart too
_SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                   "#17becf", "#393b79", "#e7ba52", "#000000")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", "*", "h", ">", "p")
#: reference lines (bounds, predicted slopes): grey, no markers, each in its own dash pattern
_REFERENCE_STYLES = tuple({"color": c, "linestyle": ls, "linewidth": 1.3}
                          for c, ls in (("0.25", "--"), ("0.45", ":"), ("0.25", "-."),
                                        ("0.45", (0, (6, 2, 1, 2, 1, 2))), ("0.25", (0, (1, 3)))))
#: a legend with more entries than this is drawn beside the axes
_LEGEND_INSIDE = 7


def _series_style(i: int) -> dict[str, Any]:
    """Colour and marker of series ``i``: distinct for the first 12; beyond, the marker shifts so the
    (colour, marker) pair stays distinct."""
    n = len(_SERIES_COLOURS)
    return {"color": _SERIES_COLOURS[i % n], "marker": _MARKERS[(i + i // n) % len(_MARKERS)],
            "linestyle": "-" if i < n else (0, (3, 1))}


def _positive(values: Sequence[Any], loglog: bool) -> list[float]:
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not loglog)
        out.append(float(v) if ok else math.nan)
    return out


def write_plots(doc: dict[str, Any], out_dir: Path) -> tuple[dict[str, str], str | None]:
    """Draw every verdict's figure and the summary; returns ``({claim_id: file}, summary_file)``.

    Raises ImportError when matplotlib is missing (the caller prints :data:`PLOTS_HINT`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for v in doc["verdicts"]:
        fig_data = v.get("plot")
        if not fig_data:
            continue
        loglog = bool(fig_data["loglog"])
        logy = loglog or bool(fig_data.get("logy", False))
        x = _positive(fig_data["x"], loglog)
        entries = len(fig_data["series"]) + len(fig_data["lines"])
        outside = entries > _LEGEND_INSIDE  # a long legend goes right of the axes, not over the data
        fig, ax = plt.subplots(figsize=(8.6 if outside else 6.0, 4.2), dpi=100)
        for i, (label, ys) in enumerate(fig_data["series"].items()):
            ax.plot(x, _positive(ys, logy), label=label, linewidth=1.4, markersize=4, **_series_style(i))
        for i, (label, ys) in enumerate(fig_data["lines"].items()):
            ax.plot(x, _positive(ys, logy), label=label, **_REFERENCE_STYLES[i % len(_REFERENCE_STYLES)])
        if loglog:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_title(textwrap.fill(fig_data["title"], 72 if outside else 64), fontsize=10)
        ax.set_xlabel(fig_data["xlabel"])
        ax.set_ylabel(fig_data["ylabel"])
        ax.grid(True, which="both", alpha=0.3)
        if outside:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        elif entries:
            ax.legend(fontsize=7)
        fig.text(0.99, 0.01, f"{v['claim_id']}: {v['status']}", ha="right", va="bottom", fontsize=7,
                 color=_COLOURS[v["status"]])
        fig.tight_layout()
        name = plot_name(v["claim_id"])
        fig.savefig(out_dir / name, bbox_inches="tight" if outside else None)
        plt.close(fig)
        files[v["claim_id"]] = name
    summary = "plots/counts.png"
    draw_counts(doc, out_dir / summary)
    return files, summary


def draw_counts(doc: dict[str, Any], path: Path, *, dpi: int = 100) -> None:
    """Stacked bars: number of claims per status, one bar per paper (and the total in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_paper = doc.get("counts_by_paper") or {}
    papers = list(by_paper)
    fig, ax = plt.subplots(figsize=(6.0, 3.2), dpi=dpi)
    bottom = [0] * len(papers)
    for status in STATUSES:
        vals = [by_paper[p][status] for p in papers]
        ax.bar(papers, vals, bottom=bottom, color=_COLOURS[status], label=status)
        bottom = [b + v for b, v in zip(bottom, vals)]
    c = doc["counts"]
    ax.set_title(f"refattn verify ({'quick' if doc['quick'] else 'full'}, {sum(c.values())} rows, "
                 f"{doc.get('claims', sum(c.values()))} claims): {c['holds']} hold, "
                 f"{c['holds-conditionally']} conditional, {c['fails']} fail, "
                 f"{c['not-checkable']} not checkable", fontsize=9)
    ax.set_xlabel("paper")
    ax.set_ylabel("rows (each under every paper making it)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
