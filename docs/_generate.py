"""Writes the generated pages of the documentation site into ``docs/_gen/`` (run by ``conf.py``).

Nothing here keeps a list of methods, functions, modules or pages by hand:

- ``_gen/methods/``: one page per attention method of :func:`refattn._registry.methods` (its
  module's docstring with the formulas, the public function's docstring, the declaration: arrays,
  masks, dtypes, options and defaults; the closed-form cost with its docstring and a worked size;
  the rounding-error model; peer presets where the declaration carries any; the ledger's rows about
  it, with their plots);
- ``_gen/api/``: the API reference, one page per public module (no name component starting with
  ``_``), documenting the module's ``__all__``, plus the registry's table of every declared
  differentiable function (:func:`refattn._registry.functions`);
- ``_gen/ledger.rst``: the claims ledger from ``ledger/report.json`` (the committed output of
  ``refattn verify --quick``; ``python docs/_generate.py --refresh-ledger`` rewrites it, and
  ``REFATTN_DOCS_VERIFY=1`` makes the build run ``refattn verify --quick`` itself);
- ``_gen/performance.md``: ``benchmarks/RESULTS.md``, its figure paths pointed at the repository;
- ``_gen/toctree.inc`` (included by ``index.rst``): the table of contents: the hand-written pages in
  ``docs/`` (every ``*.md`` and ``*.rst`` there, whichever exist) and the generated ones.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

#: the order of the table of contents; pages not named here (present or added later) follow in
#: alphabetical order, and a page named here that does not exist is left out
ORDER = ("getting_started", "check_your_kernel", "_gen/methods/index", "exact_attention_variants",
         "peer_conventions", "_gen/ledger", "_gen/performance", "scale_out", "gpu", "_gen/api/index")
#: attribute names a declaration may carry its peers' conventions under
PEER_ATTRS = ("peers", "peer_presets", "presets", "conventions")
#: the worked size of each method page's cost table
COST_SIZES = {"batch": (1, 1), "n": 1024, "m": 1024, "d": 64, "dv": 64, "dtype_bytes": 8}


# ------------------------------------------------------------------------------------------------
# RST helpers
# ------------------------------------------------------------------------------------------------

def esc(text: Any) -> str:
    """``text`` as literal RST inline text (one line)."""
    s = " ".join(str(text).split())
    return re.sub(r"([\\`*_|\[\]<>])", r"\\\1", s) if s else "\\ "


def lit(text: Any) -> str:
    """``text`` as an RST inline literal."""
    s = " ".join(str(text).split())
    return f"``{s}``" if "``" not in s and s and not s.startswith(" ") else esc(s)


def title(text: str, char: str) -> str:
    return f"{text}\n{char * max(len(text), 3)}\n"


def list_table(header: list[str], rows: list[list[str]], widths: str | None = None) -> str:
    out = [".. list-table::", "   :header-rows: 1"]
    if widths:
        out.append(f"   :widths: {widths}")
    out.append("")
    for row in [header, *rows]:
        out.append(f"   * - {row[0]}")
        out.extend(f"     - {cell}" for cell in row[1:])
    return "\n".join(out) + "\n"


_ADORN = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")


def demote(doc: str, chars: str = "~^\"'") -> str:
    """A docstring's section titles remapped, in order of first use, to ``chars`` (so they nest
    under the page's own sections)."""
    lines = doc.splitlines()
    seen: list[str] = []
    for i, line in enumerate(lines):
        m = _ADORN.match(line)
        if m and i > 0 and lines[i - 1].strip() and not _ADORN.match(lines[i - 1]):
            c = m.group(1)
            if c not in seen:
                seen.append(c)
            new = chars[min(seen.index(c), len(chars) - 1)]
            lines[i] = new * max(len(line.rstrip()), len(lines[i - 1].rstrip()))
    return "\n".join(lines)


def doc_of(obj: Any) -> str:
    """``obj``'s docstring as reST: pipes escaped, or verbatim where it is not valid reST (:mod:`_rstguard`)."""
    import _rstguard

    lines = inspect.cleandoc(obj.__doc__ or "").splitlines()
    return "\n".join(_rstguard.guard(lines, f"module {getattr(obj, '__name__', obj)}"))


def public_name(fn: Any) -> str:
    """The shortest public dotted name of ``fn``: ``refattn.NAME`` where re-exported there."""
    import refattn

    if getattr(refattn, fn.__name__, None) is fn:
        return f"refattn.{fn.__name__}"
    return f"{fn.__module__}.{fn.__qualname__}"


def signature(fn: Any) -> str:
    try:
        sig = str(inspect.signature(fn))
    except (TypeError, ValueError):
        sig = "(...)"
    return re.sub(r": [^,=)]+(?=[,=)])", "", sig).replace(" -> Any", "")


# ------------------------------------------------------------------------------------------------
# The ledger report
# ------------------------------------------------------------------------------------------------

def ledger_dir(docs: Path) -> Path:
    """Where the report read by the build is: the committed snapshot, or a fresh ``--quick`` run."""
    if os.environ.get("REFATTN_DOCS_VERIFY") == "1":
        out = docs / "_gen" / "verify"
        run_verify(out, quick=True)
        return out
    return docs / "ledger"


def run_verify(out: Path, quick: bool = True) -> None:
    cmd = [sys.executable, "-m", "refattn.cli", "verify", "--out", str(out)] + (["--quick"] if quick else [])
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def load_report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def claims_about(method: Any, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The ledger rows about ``method``: the rows of the verification module named like the method's
    module, and every row whose statement, evidence or figure names the method's public function."""
    stem = method.function.__module__.rsplit(".", 1)[-1]
    fname = method.function.__name__
    out = []
    for row in report["verdicts"]:
        text = " ".join(str(row.get(k) or "") for k in ("statement", "evidence", "figure", "condition"))
        if row.get("module") == stem or re.search(rf"\b{re.escape(fname)}\b", text):
            out.append(row)
    return out


def claim_label(row: dict[str, Any]) -> str:
    return "claim-" + re.sub(r"[^a-z0-9]+", "-", row["claim_id"].lower())


def plot_path(row: dict[str, Any], folder: Path) -> Path | None:
    name = row.get("plot_file")
    if not name:
        return None
    p = folder / name if not Path(name).is_absolute() else Path(name)
    if not p.exists():
        p = folder / "plots" / Path(name).name
    return p if p.exists() else None


def rel(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target, page_dir)).as_posix()


def write_ledger(gen: Path, folder: Path, report: dict[str, Any]) -> None:
    src = "``refattn verify --quick``" if report.get("quick") else "``refattn verify``"
    where = ("a run made by this build (``REFATTN_DOCS_VERIFY=1``)" if folder.parent == gen
             else "the committed snapshot ``docs/ledger/report.json`` (rewritten by ``python docs/_generate.py "
                  "--refresh-ledger``)")
    b = report.get("backend", {})
    env = report.get("environment", {})
    out = [".. _ledger:", "", title("The claims ledger", "="),
           f"Every checkable claim of the five seed papers and of the classical results they rest on, checked "
           f"against refattn's own implementations. This page is generated from the report of {src}: "
           f"{where}. The run: refattn {esc(report.get('refattn_version'))}, backend {lit(b.get('name'))} "
           f"({esc(b.get('device'))}, version {esc(b.get('version'))}), {esc(report.get('created'))}, "
           f"{float(report.get('seconds', 0)):.1f} s; Python {esc(env.get('python'))}, {esc(env.get('platform'))}. "
           f"The quick run uses CI sizes and reaches the same verdicts as the full one; a full run is "
           f"``refattn verify``.", "",
           "Verdicts: **holds** (every check passes), **holds-conditionally** (only under the stated condition), "
           "**fails** (the evidence gives the counterexample or the measured figure), **not-checkable** (the "
           "evidence says why). Evidence is *measured* (a statistical test on random draws, with P(wrong), the "
           "probability of a wrong verdict from its sample sizes) or *derived* (shapes, exact counts, arithmetic, "
           "rounding-bounded identities, counterexamples). A row is counted under every paper that makes the "
           "claim.", ""]
    counts = report.get("counts", {})
    kinds = report.get("kinds", {})
    statuses = list(counts)
    out.append(list_table(statuses + ["rows", "claims", "measured", "derived"],
                          [[str(counts[s]) for s in statuses] + [str(len(report["verdicts"])),
                                                                 str(report.get("claims", "")),
                                                                 str(kinds.get("measured", "")),
                                                                 str(kinds.get("derived", ""))]]))
    out += [title("Papers", "-")]
    by_paper = report.get("counts_by_paper", {})
    rows = []
    for key, name in report.get("papers", {}).items():
        c = by_paper.get(key, {})
        rows.append([lit(key), esc(name)] + [str(c.get(s, 0)) for s in statuses])
    out.append(list_table(["paper", "full title"] + statuses, rows))
    counts_png = folder / "plots" / "counts.png"
    if counts_png.exists():
        out += [f".. figure:: {rel(counts_png, gen)}", "   :alt: verdicts per paper", "   :width: 90%", "",
                "   Verdicts per paper.", ""]
    out += [title("Summary", "-")]
    rows = []
    for row in report["verdicts"]:
        rows.append([f":ref:`{esc(row['claim_id'])} <{claim_label(row)}>`", esc(row.get("reading") or "-"),
                     esc(", ".join(row.get("papers") or [row.get("paper", "")])), f"**{esc(row['status'])}**",
                     esc(row.get("kind")), esc(row.get("figure") or "-")])
    out.append(list_table(["claim", "reading", "papers", "status", "evidence", "key figure"], rows,
                          "16 10 10 14 8 42"))
    out += [title("The claims", "-")]
    for row in report["verdicts"]:
        out += claim_block(row, folder, gen, "~")
    (gen / "ledger.rst").write_text("\n".join(out) + "\n", encoding="utf-8")


def claim_block(row: dict[str, Any], folder: Path, page_dir: Path, char: str, label: bool = True) -> list[str]:
    head = row["claim_id"] + (f" ({row['reading']})" if row.get("reading") else "")
    out = [f".. _{claim_label(row)}:", ""] if label else []
    out += [title(esc(head), char)]
    fields = [("status", f"**{esc(row['status'])}** ({esc(row.get('kind'))})"),
              ("papers", esc(", ".join(row.get("papers") or [row.get("paper", "")]))),
              ("source", esc(row.get("source"))), ("statement", esc(row.get("statement"))),
              ("condition", esc(row.get("condition")) if row.get("condition") else ""),
              ("key figure", esc(row.get("figure")) if row.get("figure") else ""),
              ("P(wrong)", esc(row.get("p_wrong")) if row.get("p_wrong") is not None else ""),
              ("evidence", esc(row.get("evidence")))]
    out += [f":{k}: {v}" for k, v in fields if v] + [""]
    plot = plot_path(row, folder)
    if plot is not None:
        out += [f".. image:: {rel(plot, page_dir)}", f"   :alt: plot of {row['claim_id']}", "   :width: 80%", ""]
    return out


# ------------------------------------------------------------------------------------------------
# Method pages
# ------------------------------------------------------------------------------------------------

def cost_function(method: Any) -> Any:
    """The public closed-form cost function of the method's module (``NAME_cost`` or ``cost``)."""
    mod = importlib.import_module(method.function.__module__)
    names = getattr(mod, "__all__", dir(mod))
    for name in (f"{method.name}_cost", "cost"):
        if name in names and callable(getattr(mod, name, None)):
            return getattr(mod, name)
    return None


def fmt_count(x: int) -> str:
    return f"{x:,}" if x else "not modelled"


def write_method(gen: Path, method: Any, report: dict[str, Any], folder: Path, pages: set[str]) -> None:
    from refattn._registry import MASK_KINDS

    fn = method.function
    pub = public_name(fn)
    mod = importlib.import_module(fn.__module__)
    page_dir = gen / "methods"
    out = [f".. _method-{method.name}:", "", title(f"{method.name}: {method.summary}", "=")]
    out += [f"``{pub}{signature(fn)}``", "",
            f"Declared in :mod:`{fn.__module__}`; ``refattn check {method.name}`` runs the oracle on it and "
            f"``refattn cost {method.name} --n N`` prints its counted and closed-form cost.", ""]

    out += [title("Definition", "-"), demote(doc_of(mod)), ""]

    out += [title("Call", "-"), f".. autofunction:: {pub}", "   :no-index:", ""]

    out += [title("Declaration", "-")]
    rows = [[lit(a.name), lit(a.shape), "yes" if a.differentiable else "no"] for a in method.arrays]
    out.append(list_table(["array", "shape", "gradient"], rows))
    if method.sizes:
        out += [f"Size symbols beyond ``n m d dv``: {', '.join(lit(s) for s in method.sizes)} (each with a default "
                f"computed from the others).", ""]
    oracle_masks = method.oracle_masks if method.oracle_masks is not None else method.masks
    rows = [[lit(kind), "yes" if kind in method.masks else "no (``ValueError``)",
             "yes" if kind in oracle_masks else "no"] for kind in MASK_KINDS]
    out += ["Masks (``none``: no mask; ``causal``: ``causal=True``, top-left; ``bottom_right``: "
            "``causal=\"bottom_right\"``; ``bool`` / ``additive``: a ``mask`` array; ``key_lengths``: key "
            "padding):", ""]
    out.append(list_table(["mask kind", "honoured", "covered by the error model"], rows))
    scale = "``scale`` multiplies the logits" if method.has_scale else "``scale`` takes only ``None``"
    out += [f"Dtypes: {esc(method.dtypes)}.", "", f"Logit scale: {scale}.", ""]
    defaults = method.defaults()
    rows = [[lit(name), lit(repr(defaults.get(name)))] for name in method.options]
    out += ["Options (keyword-only; defaults from the signature):", "", list_table(["option", "default"], rows)]

    out += [title("Cost", "-")]
    cfn = cost_function(method)
    if method.cost is not None:
        opts = {**defaults, **method.oracle_options}
        sizes = ", ".join(f"{k} = {v}" for k, v in COST_SIZES.items())
        rows = []
        for backward in (False, True):
            try:
                c = method.closed_cost(COST_SIZES, opts, backward=backward)
            except Exception as exc:  # a closed form that needs more options: say so, do not fail the build
                rows.append(["forward + backward" if backward else "forward", esc(f"{type(exc).__name__}: {exc}"),
                             "", ""])
                continue
            if c is None:
                rows.append(["forward + backward" if backward else "forward", "no closed form", "", ""])
                continue
            rows.append(["forward + backward" if backward else "forward", fmt_count(c.flops),
                         fmt_count(c.transcendentals), fmt_count(c.peak_bytes)])
        out += [f"The closed form at {esc(sizes)} (float64) with the default options"
                + (f" and {lit(dict(method.oracle_options))}" if method.oracle_options else "") + ":", "",
                list_table(["pass", "flops", "transcendentals", "peak bytes (bound)"], rows)]
    else:
        out += ["No closed form is declared; ``refattn cost`` gives the counted cost.", ""]
    if cfn is not None:
        out += [f".. autofunction:: {cfn.__module__}.{cfn.__name__}", "   :no-index:", ""]

    out += [title("Error model", "-")]
    bound = method.error_bound()
    if bound is None:
        out += ["No rounding-error model is declared: the oracle compares this method only with tolerances "
                "given by the caller.", ""]
    else:
        out += [f"``{method.error_model}`` bounds the elementwise error of the output"
                + (" and of the gradients" if method.grad_error_model else " (not the gradients)")
                + (f", derived for the options {lit(dict(method.oracle_options))}" if method.oracle_options else "")
                + f"; it covers the masks {', '.join(lit(k) for k in oracle_masks)}.", "",
                f".. autofunction:: {bound.__module__}.{bound.__name__}", "   :no-index:", ""]

    out += [title("Peer conventions", "-")]
    presets = next((getattr(method, a) for a in PEER_ATTRS if getattr(method, a, None)), None)
    if presets:
        items = presets.items() if hasattr(presets, "items") else ((None, p) for p in presets)
        for key, val in items:
            out.append(f"- {lit(key) + ': ' if key is not None else ''}{esc(val)}")
        out.append("")
    else:
        out += ["This method's declaration carries no peer presets yet.", ""]
    if "peer_conventions" in pages:
        out += [":doc:`/peer_conventions` compares the peers' conventions (scale, masks, layouts) and the "
                "options that reproduce them.", ""]

    out += [title("In the ledger", "-")]
    rows = claims_about(method, report)
    if rows:
        out += [f"The ledger's rows about this method (:ref:`ledger`): those of the verification module named "
                f"like its module, and those naming ``{fn.__name__}``:", ""]
        out.append(list_table(["claim", "status", "papers", "key figure"],
                              [[f":ref:`{esc(r['claim_id'])} <{claim_label(r)}>`", f"**{esc(r['status'])}**",
                                esc(", ".join(r.get("papers") or [])), esc(r.get("figure") or "-")] for r in rows],
                              "20 16 12 52"))
        for r in rows:
            plot = plot_path(r, folder)
            if plot is not None:
                out += [f".. figure:: {rel(plot, page_dir)}", f"   :alt: plot of {r['claim_id']}", "   :width: 70%",
                        "", f"   {esc(r['claim_id'])}: {esc(r['status'])}.", ""]
    else:
        out += ["No row of the ledger is about this method.", ""]
    (page_dir / f"{method.name}.rst").write_text("\n".join(out) + "\n", encoding="utf-8")


def write_methods(gen: Path, report: dict[str, Any], folder: Path, pages: set[str]) -> None:
    from refattn._registry import methods

    (gen / "methods").mkdir(parents=True, exist_ok=True)
    table = methods()
    for method in table.values():
        write_method(gen, method, report, folder, pages)
    rows = [[f":doc:`{m.name}`", f"``{public_name(m.function)}``", esc(m.summary),
             ", ".join(lit(k) for k in m.masks)] for m in table.values()]
    out = [title("Methods", "="),
           "Every attention method of the registry (:func:`refattn._registry.methods`), one page each: its formula, "
           "options, masks, cost, error model, peer conventions and what the ledger found. Every method takes "
           "``q (..., n, d)``, ``k (..., m, d)``, ``v (..., m, dv)`` (leading dimensions broadcast), has a "
           "hand-written backward (:func:`refattn.vjp`) and runs on any array-API namespace.", "",
           list_table(["method", "function", "summary", "masks"], rows, "12 24 44 20"),
           ".. toctree::", "   :hidden:", ""] + [f"   {name}" for name in table] + [""]
    (gen / "methods" / "index.rst").write_text("\n".join(out) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# API reference
# ------------------------------------------------------------------------------------------------

def public_modules() -> list[str]:
    import refattn

    names = {"refattn"}
    pkgs = [refattn, importlib.import_module("refattn.backends"), importlib.import_module("refattn.verification")]
    for pkg in pkgs:
        names.add(pkg.__name__)
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.add(info.name)
    return sorted(names, key=lambda n: (n != "refattn", n))


def members(mod: Any) -> list[tuple[str, Any]]:
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, v in vars(mod).items() if not n.startswith("_")
                 and getattr(v, "__module__", None) == mod.__name__ and (inspect.isfunction(v) or inspect.isclass(v))]
    out = []
    for name in names:
        try:
            obj = getattr(mod, name)
        except AttributeError:
            continue
        if inspect.ismodule(obj):
            continue
        out.append((name, obj))
    return out


def attr_docs(mod: Any) -> set[tuple[str, str]]:
    """``(namespace, name)`` of the module-level names documented by ``#:`` comments."""
    from sphinx.pycode import ModuleAnalyzer

    try:
        analyzer = ModuleAnalyzer.for_module(mod.__name__)
    except Exception:
        return set()
    return {(mod.__name__ if ns == "" else ns, name) for ns, name in analyzer.find_attr_docs()}


def write_api(gen: Path) -> None:
    from refattn._registry import Method, functions, lookup

    api = gen / "api"
    api.mkdir(parents=True, exist_ok=True)
    documented: dict[int, str] = {}
    mods = public_modules()
    for name in mods:
        mod = importlib.import_module(name)
        out = [title(f"``{name}``", "="), f".. module:: {name}", "", demote(doc_of(mod)), ""]
        entries = members(mod)
        if entries:
            out += [title("Contents", "-")]
        for attr, obj in entries:
            where = documented.get(id(obj))
            if where is not None and (inspect.isfunction(obj) or inspect.isclass(obj)):
                out += [f".. rubric:: {attr}", "", f"Documented as :py:obj:`{where}`.", ""]
                continue
            full = f"{name}.{attr}"
            if inspect.isclass(obj):
                out += [f".. autoclass:: {full}", "   :members:", ""]
            elif callable(obj):
                out += [f".. autofunction:: {full}", ""]
            elif (name, attr) in attr_docs(mod):  # a ``#:`` comment documents it
                out += [f".. autodata:: {full}", "   :no-value:", ""]
            else:  # no documentation of its own (autodoc would show its type's docstring)
                out += [f".. py:data:: {full}", f"   :type: {type(obj).__name__}", ""]
            if inspect.isfunction(obj) or inspect.isclass(obj):
                documented[id(obj)] = full
        (api / f"{name}.rst").write_text("\n".join(out) + "\n", encoding="utf-8")
    rows = []
    for fn in functions():
        spec = lookup(fn)
        kind = "attention method" if isinstance(spec, Method) else "function"
        link = (f":doc:`{spec.name} <../methods/{spec.name}>`" if isinstance(spec, Method) else lit(spec.name))
        rows.append([f":py:obj:`{documented.get(id(fn), public_name(fn))}`", kind, link])
    out = [title("API reference", "="),
           "Generated from the modules' ``__all__`` and docstrings: every public module (no name component "
           "starting with ``_``), each object documented once, where it is first exported. The private modules "
           "(``refattn._registry``, ``refattn._oracle``, ...) appear where the method pages cite them.", "",
           title("The registry", "-"),
           "Every differentiable public function declared with :func:`refattn._registry.declare` (the one "
           "declaration that :func:`refattn.vjp`, the oracle, ``refattn cost`` and these pages read):", "",
           list_table(["function", "kind", "registry name"], rows),
           title("Modules", "-"), ".. toctree::", "   :maxdepth: 1", ""] + [f"   {m}" for m in mods] + [""]
    (api / "index.rst").write_text("\n".join(out) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Performance, table of contents
# ------------------------------------------------------------------------------------------------

def write_performance(gen: Path) -> None:
    src = ROOT / "benchmarks" / "RESULTS.md"
    if not src.exists():
        (gen / "performance.md").write_text("# Performance\n\nNo benchmark results are in the repository.\n")
        return
    text = src.read_text(encoding="utf-8")

    def fix(m: re.Match[str]) -> str:
        alt, target = m.group(1), m.group(2)
        path = (src.parent / target).resolve()
        if path.exists():
            return f"![{alt}]({rel(path, gen)})"
        return f"*(figure `{target}` is not in the repository)*"

    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", fix, text)
    text = re.sub(r"^# .*$", "# Performance", text, count=1, flags=re.M)
    note = ("Generated from `benchmarks/RESULTS.md` (`python -m benchmarks`, `refattn bench`); the raw JSON "
            "files are in `benchmarks/results/`.\n\n")
    text = text.replace("# Performance\n", "# Performance\n\n" + note, 1)
    (gen / "performance.md").write_text(text, encoding="utf-8")


def hand_pages(docs: Path) -> set[str]:
    """The hand-written pages: ``docs/*.md`` and ``*.rst`` but ``index`` and the files ``conf.py``
    leaves out of the site (``_*``, ``.*``, ``README*``: notes about the site, not pages)."""
    return {p.stem for p in docs.iterdir() if p.suffix in (".md", ".rst") and p.stem != "index"
            and not p.name.startswith(("_", ".", "README"))}


def write_toctree(gen: Path, pages: set[str]) -> None:
    present = pages | {"_gen/methods/index", "_gen/ledger", "_gen/performance", "_gen/api/index"}
    order = [p for p in ORDER if p in present] + sorted(p for p in present if p not in ORDER)
    out = [".. toctree::", "   :maxdepth: 1", ""] + [f"   /{p}" for p in order] + [""]
    (gen / "toctree.inc").write_text("\n".join(out), encoding="utf-8")


def generate(docs: Path = DOCS) -> None:
    gen = docs / "_gen"
    keep = gen / "verify"
    if gen.exists():
        for child in gen.iterdir():
            if child != keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    gen.mkdir(exist_ok=True)
    pages = hand_pages(docs)
    folder = ledger_dir(docs)
    report = load_report(folder)
    write_ledger(gen, folder, report)
    write_methods(gen, report, folder, pages)
    write_api(gen)
    write_performance(gen)
    write_toctree(gen, pages)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").splitlines()[0])
    p.add_argument("--refresh-ledger", action="store_true",
                   help="rewrite docs/ledger/ from `refattn verify --quick` (with --full: `refattn verify`)")
    p.add_argument("--full", action="store_true")
    args = p.parse_args(argv)
    if args.refresh_ledger:
        out = DOCS / "ledger"
        if out.exists():
            shutil.rmtree(out)
        run_verify(out, quick=not args.full)
        (out / "report.md").unlink(missing_ok=True)
    generate(DOCS)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
