"""The claims ledger (installed as ``refattn.verification``): each claim of the seed papers, and of
the results they rest on, is a check returning a :class:`Verdict` (see ``_verdict.py``).

Claims are grouped in modules by the method they exercise (``MODULES``); each module registers its
checks with the :func:`claim` decorator when it is imported. :func:`load` imports the modules that
exist (a missing one is not an error), and :func:`run` runs the registered checks and returns one
verdict per claim: a claim of the static catalogue (``CATALOGUE``, the ids of ``CLAIMS.md``) whose
module has not landed is reported as ``not-checkable`` with the reason, never faked; a check that
raises is reported as ``not-checkable`` with the exception, and the run goes on.

The package can be imported both as ``refattn.verification`` (installed) and as ``verification``
(from a source checkout, e.g. under pytest); both names are bound to the same module objects so that
there is one registry whichever name a claim module uses.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.abc
import importlib.util
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import refattn

from . import _verdict
from ._verdict import KINDS, REGISTRY, STATUSES, ClaimInfo, Context, Figure, Meta, Verdict, budget, claim


def _other_name(name: str) -> str:
    """``refattn.verification.x`` <-> ``verification.x``."""
    if name.startswith("refattn.verification"):
        return name[len("refattn."):]
    return "refattn." + name


def _alias(module: Any) -> None:
    """Bind ``module`` under both package names (one set of module objects, one registry)."""
    other = _other_name(module.__name__)
    sys.modules.setdefault(other, module)
    if other == "refattn.verification":
        refattn.verification = module


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import ``verification.x`` as the module already loaded as ``refattn.verification.x`` (and the
    reverse) instead of executing the file twice: a claim module registers its claims once."""

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.startswith(("verification.", "refattn.verification.")):
            if _other_name(fullname) in sys.modules:
                return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: Any) -> Any:
        module = sys.modules[_other_name(spec.name)]
        self._specs[spec.name] = module.__spec__  # the import machinery overwrites it: restored below
        return module

    def exec_module(self, module: Any) -> None:
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)


if not any(type(f).__name__ == "_AliasFinder" for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())
_alias(sys.modules[__name__])
_alias(_verdict)

__all__ = ["MODULES", "CATALOGUE", "PAPERS", "PAPER_ALIASES", "Entry", "Verdict", "Figure", "Context",
           "claim", "REGISTRY", "STATUSES", "KINDS", "Meta", "budget", "load", "run", "resolve_paper",
           "claim_ids", "entries",
           "module_status"]

#: The claim modules, in the order the ledger lists them (tests/test_verify_ledger.py checks that every
#: verification/<module>.py is listed and that every catalogue claim is registered by its module).
MODULES: tuple[str, ...] = ("heat", "linformer", "random_features", "nystrom", "kernels", "hadamard",
                            "survey")

#: Paper keys and what they are; ``--paper`` accepts the key or one of its aliases.
PAPERS: dict[str, str] = {
    "000": "Catapang, Hadamard Estimated Attention Transformer (HEAT): Fast approximation of dot product "
           "self-attention for transformers using low-rank projection of Hadamard product",
    "001": "Brazhnyi, Korniienko, Ruda, Optimization of the Transformer's attention",
    "002": "Yorsh & Kovalenko, Linear Self-Attention Approximation via Trainable Feedforward Kernel",
    "003": "Verma, Revisiting Linformer with a modified self-attention with linear complexity",
    "004": "Aggarwal & Kumar, Rethinking Attention Output Projection: Structured Hadamard Transforms for "
           "Efficient Transformers",
    "classical": "results the seeds rest on (JL / Arriaga-Vempala, Rahimi-Recht, Performer, "
                 "Nystromformer / Razavi, Eckart-Young, Walsh-Hadamard)",
}
PAPER_ALIASES: dict[str, str] = {
    "0": "000", "heat": "000", "catapang": "000",
    "1": "001", "survey": "001", "brazhnyi": "001",
    "2": "002", "kernels": "002", "yorsh": "002", "kovalenko": "002",
    "3": "003", "verma": "003",
    "4": "004", "hadamard": "004", "wht": "004", "aggarwal": "004",
    "classic": "classical",
}


class Entry(NamedTuple):
    """A claim of the static catalogue: what it says and which module checks it."""

    claim_id: str
    paper: str
    source: str
    statement: str
    module: str
    papers: tuple[str, ...] = ()  # every paper that makes the claim (default: (paper,))
    claim: str = ""  # the claim the row belongs to (default: claim_id)

    def all_papers(self) -> tuple[str, ...]:
        return self.papers or (self.paper,)


#: Every claim id of CLAIMS.md (and the survey's further claims), so that a claim whose module has
#: not landed is still listed. A module may register further claims; they are listed after these.
CATALOGUE: tuple[Entry, ...] = tuple(Entry(*row) for row in (
    ("heat-eq10", "000", "000 (HEAT), eq. (10)",
     "A (x ⊙ y) = (A x) ⊙ (A y) for a low-rank A", "heat"),
    ("heat-eq5", "000", "000 (HEAT), eq. (4)-(5)",
     "truncated SVD solves min ||A - X||_F s.t. rank X = r", "heat"),
    ("heat-eq7", "000", "000 (HEAT), eq. (7)", "x ⊙ y = x · y^T", "heat"),
    ("heat-on", "000", "000 (HEAT), sec. III-B",
     "HEAT, Linformer and Nystromformer have O(n) complexity", "heat"),
    ("surv-table", "001", "001 (survey), Table 1, time column",
     "time per method: softmax O(d^2 n + d n^2), linear O(d^2 n), Linformer O(n), RFA O(n d), "
     "Nystrom O(n)", "survey"),
    ("surv-table-mem", "001", "001 (survey), Table 1, memory column",
     "memory per method: softmax O(n d^2), linear O(d n + d^2), Linformer O(n), RFA O(4D + 2Dd), "
     "Nystrom O(n)", "survey"),
    ("surv-fastest", "001", "001 (survey), sec. 3.1 and 4",
     "linear attention has the smallest computational complexity of the observed methods "
     "(batch 32, 4 heads, n in 128..2048, d in {32, 64})", "survey"),
    ("surv-lin-cost", "001", "001 (survey), sec. 2.2",
     "linear attention improves the computational complexity from O(d n^2) to O(d^2 n) and the memory "
     "from O(n^2) to O(dn + d^2)", "survey"),
    ("surv-lin-eq", "001", "001 (survey), sec. 2.2",
     "normalised linear attention Softmax_row(Q)(Softmax_col(K)^T V) is equivalent to softmax "
     "attention", "survey"),
    ("lin-thm1", "001", "001 and 003, Linformer Theorem 1",
     "rank k = 5 log n / (ε² - ε³) suffices for ε relative error w.p. 1 - o(1)", "linformer"),
    ("lin-thm2", "001", "001, Linformer Theorem 2",
     "k = min(Θ(9 d log d / ε²), 5Θ(log n / ε²)) with E = δR, F = e^{-δ}R", "linformer"),
    ("jl-av", "classical", "Arriaga & Vempala via Linformer",
     "Pr(| ||Rx||² - ||x||² | > ε||x||²) < 2 exp(-(ε² - ε³)k/4), R iid N(0, 1/k)", "linformer"),
    ("verma-cost", "003", "003 (Verma), sec. 3.2 and Table 1",
     "H(LX) costs O(n d²), independent of k", "linformer"),
    ("verma-k", "003", "003 (Verma), end of proof", "setting k = 5 log(n)(ε² - ε³)", "linformer"),
    ("verma-delta", "003", "003 (Verma), sec. 3.2", "E = δR, F = e^{-δ}R with δ = 1/2ⁿ", "linformer"),
    ("rff-unbiased", "classical", "Rahimi & Recht 2007 (via 001)",
     "E[z(x)^T z(y)] = k(x, y) for sin/cos features, Gaussian kernel", "random_features"),
    ("rff-var", "classical", "Rahimi & Recht 2007",
     "variance of one sin/cos pair = (1 - k²)²/2", "random_features"),
    ("favor-unbiased", "classical", "Performer (via 001)",
     "positive features give an unbiased estimate of exp(x^T y)", "random_features"),
    ("favor-mse", "classical", "Performer, Lemma 2",
     "MSE of positive vs trigonometric estimators (closed forms)", "random_features"),
    ("favor-orf", "classical", "Performer",
     "orthogonal features have lower MSE than iid ones", "random_features"),
    ("nys-exact", "classical", "Nystromformer",
     "with m = n landmarks the approximation is exact", "nystrom"),
    ("nys-pinv", "classical", "Nystromformer, Lemma (Razavi et al.)",
     "the iteration converges to A⁺ (order stated in the paper) given ||I - A Z₀|| < 1", "nystrom"),
    ("nys-on", "001", "001 (survey), Table 1",
     "Nystrom attention is O(n) in time and memory", "nystrom"),
    ("glu-param", "002", "002 (Yorsh & Kovalenko)",
     "AOGLU with r = n/4 reduces the layer parametrisation by 25%", "kernels"),
    ("ffn-pos", "002", "002 (Yorsh & Kovalenko)",
     "φ must be positive; Softplus-based φ is", "kernels"),
    ("wht-flops", "004", "004 (Aggarwal & Kumar), Fig. 3",
     "FWHT costs c log₂ c vs c² for a dense projection", "hadamard"),
    ("wht-params", "004", "004 (Aggarwal & Kumar), abstract",
     "WHT projection removes ≈ 25% of attention parameters per block", "hadamard"),
    ("wht-orth", "004", "004 (Aggarwal & Kumar)",
     "the transform is orthogonal and norm-preserving", "hadamard"),
    ("lin-jl-ip", "classical", "Linformer (via 001)",
     "the inner-product form of JL with the same tail constant", "linformer"),
    ("lin-shapes", "001", "001 (survey), sec. 2.3, Linformer", "E_i, F_i ∈ R^{n×k}", "linformer"),
    ("lin-k-vs-n", "001", "Linformer Theorem 1 (via 001)",
     "k = 5 log n / (ε² - ε³) is a reduction", "linformer"),
    ("surv-rff", "001", "001 (survey), Theorem 3 (random features)",
     "ω ~ N(0, σ²I) gives exp(-||x-y||/2σ²)", "random_features"),
    ("surv-rfa-norm", "001", "001 (survey), sec. 2.4",
     "the RFA approximation of exp(q^T k) as written", "random_features"),
    ("nys-eq16", "classical", "Nystromformer, eq. (16)", "the segment-means formula", "nystrom"),
    ("nys-6iter", "classical", "Nystromformer",
     "about 6 iterations of the pinv iteration suffice", "nystrom"),
    ("nys-order", "classical", "Nystromformer Lemma 1 vs Razavi et al.",
     "the order of convergence", "nystrom"),
    ("orf-qr", "classical", "implementations of FAVOR+",
     "QR of a Gaussian matrix gives a uniformly random orthogonal matrix", "random_features"),
))

_CATALOGUE_BY_ID = {e.claim_id: e for e in CATALOGUE}
_PAPER_ORDER = {p: i for i, p in enumerate(PAPERS)}

# module name -> ("loaded" | "missing" | "error", detail)
_MODULE_STATUS: dict[str, tuple[str, str]] = {}


def _import_claim_module(name: str) -> tuple[str, str]:
    pkg = __name__
    full, other = f"{pkg}.{name}", _other_name(f"{pkg}.{name}")
    for key in (full, other):
        if key in sys.modules:  # imported already, under one of the two names
            _alias(sys.modules[key])
            return "loaded", ""
    if importlib.util.find_spec(full) is None:
        return "missing", f"verification/{name}.py is absent"
    try:
        module = importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("refattn."):
            return "missing", f"verification/{name}.py needs {exc.name}, which has not landed"
        return "error", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a broken claim module must not take the ledger down
        return "error", f"{type(exc).__name__}: {exc}"
    _alias(module)
    return "loaded", ""


def load(modules: Iterable[str] | None = None) -> dict[str, tuple[str, str]]:
    """Import every claim module that exists; returns ``{module: (state, detail)}``.

    ``state`` is ``"loaded"``, ``"missing"`` (the file, or the refattn method it exercises, has not
    landed: not an error) or ``"error"`` (the module raised on import; its claims are reported as
    not-checkable with the exception). Importing twice is harmless.
    """
    for name in MODULES if modules is None else modules:
        if _MODULE_STATUS.get(name, ("",))[0] != "loaded":
            _MODULE_STATUS[name] = _import_claim_module(name)
    return dict(_MODULE_STATUS)


def module_status() -> dict[str, tuple[str, str]]:
    """The state of each module after the last :func:`load`."""
    return dict(_MODULE_STATUS)


def resolve_paper(paper: str) -> str:
    """The paper key (``"000"`` .. ``"004"``, ``"classical"``) for a key or alias; ValueError if unknown."""
    key = str(paper).strip().lower()
    key = PAPER_ALIASES.get(key, key)
    known = set(PAPERS) | {info.paper for info in REGISTRY.values()}
    if key not in known:
        names = ", ".join(f"{k} ({v.split(',')[0]})" for k, v in PAPERS.items())
        msg = f"unknown paper {paper!r}; known papers: {names}; aliases: {', '.join(sorted(PAPER_ALIASES))}"
        raise ValueError(msg)
    return key


def entries() -> list[Entry]:
    """Every claim: the catalogue (registered details preferred) then further registered claims,
    ordered by paper, then catalogue order, then registration order."""
    rows: dict[str, tuple[tuple[int, int], Entry]] = {}
    for i, e in enumerate(CATALOGUE):
        info = REGISTRY.get(e.claim_id)
        if info is not None:
            e = Entry(e.claim_id, info.paper, info.source, info.statement, info.module or e.module,
                      info.papers, info.group)
        rows[e.claim_id] = ((_PAPER_ORDER.get(e.paper, len(_PAPER_ORDER)), i), e)
    for j, (cid, info) in enumerate(REGISTRY.items()):
        if cid not in rows:
            e = Entry(cid, info.paper, info.source, info.statement, info.module, info.papers, info.group)
            rows[cid] = ((_PAPER_ORDER.get(e.paper, len(_PAPER_ORDER)), len(CATALOGUE) + j), e)
    return [e for _, e in sorted(rows.values(), key=lambda r: r[0])]


def claim_ids() -> list[str]:
    """Every claim id known (catalogue and registry), in ledger order."""
    return [e.claim_id for e in entries()]


def _select(paper: str | None, claims: str | Sequence[str] | None) -> list[Entry]:
    rows = entries()
    if paper is not None:
        key = resolve_paper(paper)
        rows = [e for e in rows if key in e.all_papers()]
    if claims is not None:
        wanted = [claims] if isinstance(claims, str) else list(claims)
        known = {e.claim_id: e for e in entries()}
        for cid in wanted:
            if cid not in known:
                close = difflib.get_close_matches(cid, list(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                msg = f"unknown claim id {cid!r}{hint} (`refattn verify --list` shows every id)"
                raise ValueError(msg)
            if paper is not None and resolve_paper(paper) not in known[cid].all_papers():
                msg = (f"claim {cid!r} belongs to paper {known[cid].paper}, not to the selected "
                       f"paper {resolve_paper(paper)}")
                raise ValueError(msg)
        rows = [e for e in rows if e.claim_id in set(wanted)]
    return rows


def _not_landed(e: Entry) -> Verdict:
    state, detail = _MODULE_STATUS.get(e.module, ("missing", f"verification/{e.module}.py was not loaded"))
    if state == "error":
        why, key = f"verification/{e.module}.py failed to import: {detail}", f"{e.module}.py import error"
    elif state == "loaded":
        why = f"verification/{e.module}.py landed but registers no check for this claim"
        key = f"no check in {e.module}.py"
    else:
        why, key = f"method/module not yet landed ({detail})", f"{e.module} not yet landed"
    return Verdict(e.claim_id, e.source, e.statement, "not-checkable", why, key, None,
                   paper=e.paper, module=e.module, papers=e.all_papers(), claim=e.claim or e.claim_id)


def _run_one(e: Entry, info: ClaimInfo, ctx: Context) -> Verdict:
    t0 = time.perf_counter()
    try:
        verdict = info.check(ctx)
        if not isinstance(verdict, Verdict):
            msg = f"the check returned {type(verdict).__name__}, not a Verdict"
            raise TypeError(msg)
    except Exception as exc:  # reported, never fatal: the ledger goes on
        verdict = Verdict(e.claim_id, e.source, e.statement, "not-checkable",
                          f"the check raised {type(exc).__name__}: {exc}", f"check raised {type(exc).__name__}",
                          None, paper=e.paper, papers=info.papers, claim=info.group, reading=info.reading)
    seconds = time.perf_counter() - t0
    return dataclasses.replace(verdict, seconds=seconds, paper=e.paper, module=e.module)


def _backend(backend: Any) -> Any:
    from refattn import backends

    if backend is None:
        return backends.get("numpy")
    if isinstance(backend, str):
        return backends.get(backend)  # ValueError (unknown) / BackendUnavailable (not installed)
    return backend


def run(quick: bool = True, backend: Any = "numpy", paper: str | None = None,
        claim: str | Sequence[str] | None = None,
        progress: Callable[[int, int, str, Verdict | None], None] | None = None) -> list[Verdict]:
    """Run the ledger; one :class:`Verdict` per selected claim, in ledger order.

    Parameters
    ----------
    quick : bool
        Small sizes (CI); every check has a quick mode of a few seconds.
    backend : str or refattn Backend
        Where the checks run their refattn computations (default numpy).
    paper : str, optional
        Only the claims of this paper (``"000"`` .. ``"004"``, ``"classical"`` or an alias).
    claim : str or sequence of str, optional
        Only these claim ids.
    progress : callable, optional
        ``progress(done, total, claim_id, verdict)``: called with ``verdict=None`` before a check
        starts and with its verdict when it ends.

    Raises
    ------
    ValueError
        An unknown paper or claim id, or an unknown backend name.
    refattn.backends.BackendUnavailable
        A backend whose package or device is missing.
    """
    be = _backend(backend)
    load()
    rows = _select(paper, claim)
    ctx = Context(quick=bool(quick), backend=be)
    out: list[Verdict] = []
    for i, e in enumerate(rows):
        if progress is not None:
            progress(i, len(rows), e.claim_id, None)
        info = REGISTRY.get(e.claim_id)
        verdict = _not_landed(e) if info is None else _run_one(e, info, ctx)
        out.append(verdict)
        if progress is not None:
            progress(i + 1, len(rows), e.claim_id, verdict)
    return out


def claims_of(verdicts: Iterable[Verdict]) -> list[str]:
    """The distinct claims of some rows, in order (a claim checked in several readings has several rows)."""
    return list(dict.fromkeys(v.claim or v.claim_id for v in verdicts))


def counts(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """``{status: number of verdicts}`` for every status (zeros included)."""
    c = dict.fromkeys(STATUSES, 0)
    for v in verdicts:
        c[v.status] += 1
    return c


__all__ += ["counts", "claims_of"]
