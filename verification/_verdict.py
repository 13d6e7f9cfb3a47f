"""The ledger's record and registry: every claim is a function ``check(ctx) -> Verdict``.

A claim module decorates its checks with :func:`claim`; ``refattn verify`` imports every module
listed in ``verification.MODULES``, runs the registered checks and reports them.

Statuses: ``holds``; ``holds-conditionally`` (the evidence states the condition); ``fails`` (the
evidence gives the counterexample or measured figure); ``not-checkable`` (the evidence says why,
e.g. the method has not landed yet). Checks are deterministic (fixed seeds) and print the
statistical tolerance they use inside ``evidence``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["Verdict", "Context", "claim", "REGISTRY", "STATUSES", "KINDS", "Figure", "Meta", "budget"]

STATUSES = ("holds", "holds-conditionally", "fails", "not-checkable")

#: What a verdict rests on. ``measured``: a statistical test on random draws that would have failed had
#: the claim been false; the verdict carries ``p_wrong``, the probability (from its sample sizes and
#: thresholds, union bound over its assertions) that the verdict is wrong when the claim is true.
#: ``derived``: deterministic evidence (shapes, exact counts of FLOPs, parameters or bytes, arithmetic,
#: identities within a proved rounding bound, a counterexample); no sampling, so no p_wrong.
#: ``none``: nothing was checked (``not-checkable``).
KINDS = ("measured", "derived", "none")


def budget(n_assertions: int, alpha: float = 1e-6) -> float:
    """``p_wrong`` of a check whose verdict combines ``n_assertions`` tests each at false-alarm ``alpha``
    (union bound: a true claim is judged false with probability at most ``n_assertions * alpha``)."""
    return min(1.0, n_assertions * alpha)


@dataclass(frozen=True)
class Meta:
    """Extra fields a check may return after its figure: ``p_wrong`` (measured checks) and the
    ``condition`` a holds-conditionally verdict holds under (stated in the summary table)."""

    p_wrong: float | None = None
    condition: str = ""


@dataclass(frozen=True)
class Figure:
    """Plot data a claim returns; the runner draws it (matplotlib) and stores it in report.json.

    ``series`` maps a label to y values over ``x``; ``lines`` are reference curves (a bound, a
    predicted slope) drawn grey, each in its own dash pattern; ``loglog`` picks log axes on both
    sides, ``logy`` a log y axis only (iterations, errors).
    """

    title: str
    xlabel: str
    ylabel: str
    x: list[float]
    series: dict[str, list[float]]
    lines: dict[str, list[float]] = field(default_factory=dict)
    loglog: bool = False
    logy: bool = False


@dataclass(frozen=True)
class Verdict:
    claim_id: str
    source: str  # paper, section, equation: "001 (Brazhnyi et al.), sec. 2.3, Theorem 1"
    statement: str  # the claim as the paper gives it
    status: str
    evidence: str  # what was measured or proved, the tolerance and its origin
    figure: str = ""  # the key figure, short ("k=45 vs n=64", "slope 2.00")
    plot: Figure | None = None
    seconds: float = 0.0
    paper: str = ""  # "000" .. "004" or "classical" (filled by the registry and the runner)
    module: str = ""  # the verification module that owns the check (filled by the runner)
    kind: str = "none"  # one of KINDS
    p_wrong: float | None = None  # measured checks: probability of a wrong verdict (see KINDS)
    condition: str = ""  # holds-conditionally: the condition, stated in the summary table
    papers: tuple[str, ...] = ()  # every paper that makes the claim (counted under each)
    claim: str = ""  # the claim this row belongs to (rows of one claim: its readings); default claim_id
    reading: str = ""  # which reading of the claim this row checks ("" when the claim has one)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            msg = f"status must be one of {STATUSES}, got {self.status!r}"
            raise ValueError(msg)
        if self.kind not in KINDS:
            msg = f"kind must be one of {KINDS}, got {self.kind!r}"
            raise ValueError(msg)
        if not self.claim:
            object.__setattr__(self, "claim", self.claim_id)
        if not self.papers and self.paper:
            object.__setattr__(self, "papers", (self.paper,))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Context:
    """What a check is given: ``quick`` (small sizes, for CI), the backend (a refattn Backend)."""

    quick: bool
    backend: Any

    def to_host(self, a: Any) -> np.ndarray:
        """A backend array as a host NumPy array."""
        return self.backend.to_host(a)

    def asarray(self, a: Any) -> Any:
        """A host array (or nested sequence) on the backend, in float64."""
        return self.backend.asarray(np.asarray(a, dtype=np.float64))


@dataclass(frozen=True)
class ClaimInfo:
    claim_id: str
    paper: str  # "000" .. "004" or "classical"
    source: str
    statement: str
    check: Callable[[Context], Verdict]
    module: str = ""  # the verification module the check lives in ("linformer", "survey", ...)
    kind: str = "derived"
    papers: tuple[str, ...] = ()
    group: str = ""
    reading: str = ""


REGISTRY: dict[str, ClaimInfo] = {}


def claim(claim_id: str, *, paper: str, source: str, statement: str, kind: str = "derived",
          papers: tuple[str, ...] | None = None, group: str | None = None,
          reading: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(ctx) -> (status, evidence, figure[, plot][, Meta])`` as the check of ``claim_id``.

    The decorated function returns the pieces; the registry wraps them into a :class:`Verdict`
    carrying the id, source and statement, so a check never restates them. ``kind`` is the kind of
    evidence (:data:`KINDS`; a measured check returns ``Meta(p_wrong=...)``); ``papers`` every paper
    that makes the claim (default ``(paper,)``); ``group`` the claim the row belongs to when a claim is
    checked in several rows, one per reading (``reading`` names it).
    """
    if kind not in KINDS:
        msg = f"kind must be one of {KINDS}, got {kind!r}"
        raise ValueError(msg)
    all_papers = tuple(papers) if papers else (paper,)
    if paper not in all_papers:
        all_papers = (paper, *all_papers)

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        if claim_id in REGISTRY:
            msg = f"claim {claim_id!r} registered twice"
            raise ValueError(msg)

        def check(ctx: Context) -> Verdict:
            status, evidence, figure, *rest = fn(ctx)
            plot = next((r for r in rest if isinstance(r, Figure)), None)
            meta = next((r for r in rest if isinstance(r, Meta)), Meta())
            row_kind = "none" if status == "not-checkable" else kind
            return Verdict(claim_id, source, statement, status, evidence, figure, plot, paper=paper,
                           kind=row_kind, p_wrong=meta.p_wrong if row_kind == "measured" else None,
                           condition=meta.condition if status == "holds-conditionally" else "",
                           papers=all_papers, claim=group or claim_id, reading=reading)

        check.__name__ = fn.__name__
        check.__doc__ = fn.__doc__
        module = getattr(fn, "__module__", "") or ""
        REGISTRY[claim_id] = ClaimInfo(claim_id, paper, source, statement, check,
                                       module=module.rsplit(".", 1)[-1], kind=kind, papers=all_papers,
                                       group=group or claim_id, reading=reading)
        return fn

    return register
