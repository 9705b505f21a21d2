"""Every run of a report side by side, one row each: who wrote how much, how close to the
student writing alone, how the student scores it, how often it is right, how long, and what it
cost. ``tessy compare`` prints it, writes it as JSON and puts it at the top of the HTML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .model import Report

__all__ = ["COLUMNS", "ComparisonRow", "comparison", "comparison_cells", "comparison_json"]

_NAN = float("nan")


@dataclass(frozen=True)
class ComparisonRow:
    """One run in the comparison. Token counts are the engine's (each role in its own
    tokenizer); ``nan`` where a measure was not computed (no scorer, no student-only run, no
    verified record)."""

    name: str
    mode: str
    samples: int
    failed: int
    teacher_share: float
    #: Mean TF-IDF cosine similarity of the responses to those of the student-only run.
    similarity_to_student: float
    nll: float
    rank: float
    rsr: float
    outside_top_k: float
    #: Share of ranked tokens whose rank the scorer could only bound (see :mod:`.nll`).
    censored: float
    #: Passed among the judged records (``verification.passed`` true or false).
    pass_rate: float
    judged: int
    #: Mean response length in tokens.
    response_tokens: float
    #: Requests (of every sample, failed ones too) per token kept in the data.
    requests_per_kept: float
    #: Tokens generated (kept and discarded) per token kept in the data.
    generated_per_kept: float


def _ratio(a: float, b: float) -> float:
    return a / b if b else _NAN


def comparison(report: Report) -> list[ComparisonRow]:
    """The rows of ``report``'s runs, in its order."""
    sim = report.similarity
    student = next((i for i, f in enumerate(report.figures) if f.mode == "student-only"), None)
    scored = {n.name: n for n in report.nll or ()}
    rows = []
    for i, (run, fig) in enumerate(zip(report.runs, report.figures, strict=True)):
        stats = fig.stats
        digest = run.digest
        judged = digest.judged if digest else 0
        n = scored.get(run.name)
        similarity = _NAN
        if sim is not None and sim.common and student is not None:
            similarity = sim.matrix[i][student]
        kept = stats.total_tokens
        rows.append(
            ComparisonRow(
                name=run.name,
                mode=fig.mode,
                samples=stats.written,
                failed=stats.n_failed,
                teacher_share=stats.teacher_share if stats.written else _NAN,
                similarity_to_student=similarity,
                nll=n.nll if n else _NAN,
                rank=n.rank if n else _NAN,
                rsr=n.rsr if n else _NAN,
                outside_top_k=n.outside_top_k if n else _NAN,
                censored=n.censored if n and n.ranked_tokens else _NAN,
                pass_rate=_ratio(digest.passed, judged) if digest else _NAN,
                judged=judged,
                response_tokens=fig.response_tokens.mean if stats.written else _NAN,
                requests_per_kept=_ratio(stats.requests, kept),
                generated_per_kept=_ratio(kept + stats.discarded_tokens, kept),
            )
        )
    return rows


def _fmt(digits: int, pct: bool = False) -> Callable[[float], str]:
    def show(value: float) -> str:
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}%}" if pct else f"{value:,.{digits}f}"

    return show


#: The table's columns: header and how a row shows in it.
COLUMNS: tuple[tuple[str, Callable[[ComparisonRow], str]], ...] = (
    ("run", lambda r: r.name),
    ("mode", lambda r: r.mode),
    ("samples", lambda r: f"{r.samples:,}"),
    ("failed", lambda r: f"{r.failed:,}"),
    ("teacher share", lambda r: _fmt(1, True)(r.teacher_share)),
    ("sim. to student", lambda r: _fmt(3)(r.similarity_to_student)),
    ("NLL/token", lambda r: _fmt(3)(r.nll)),
    ("mean rank", lambda r: _fmt(2)(r.rank)),
    ("RSR", lambda r: _fmt(3)(r.rsr)),
    ("out of top-k", lambda r: _fmt(1, True)(r.outside_top_k)),
    ("pass rate", lambda r: f"{_fmt(1, True)(r.pass_rate)} of {r.judged}" if r.judged else "-"),
    ("tokens/resp.", lambda r: _fmt(1)(r.response_tokens)),
    ("requests/kept", lambda r: _fmt(3)(r.requests_per_kept)),
    ("generated/kept", lambda r: _fmt(2)(r.generated_per_kept)),
)


def comparison_cells(rows: Sequence[ComparisonRow]) -> tuple[list[str], list[list[str]]]:
    """The header and the cells of the table (text; escape them for HTML)."""
    return [h for h, _ in COLUMNS], [[show(r) for _, show in COLUMNS] for r in rows]


def _jsonable(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def comparison_json(report: Report) -> dict[str, Any]:
    """The comparison as plain JSON (``null`` for what was not computed), with what it was made with."""
    scored = report.nll or []
    return {
        "runs": [{k: _jsonable(v) for k, v in asdict(row).items()} for row in comparison(report)],
        "scores": [{k: _jsonable(v) for k, v in asdict(n).items()} for n in scored],
        "scorer": report.scorer_name or None,
        "scoring_note": report.nll_note or None,
        "top_k": scored[0].top_k if scored else None,
        "rank_clip": scored[0].rank_clip if scored else None,
        "tokenizer": report.tokenizer_name,
        "similarity_prompts": report.similarity.common if report.similarity else 0,
    }
