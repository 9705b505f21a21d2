"""A self-contained HTML view of synthesised records: who wrote what, span by span.

All model text is escaped; the page needs no network (no scripts, no external styles).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

from .records import Record, Span

__all__ = ["SPAN_CSS", "render_spans", "render_view"]

#: Styles for spans (shared by every page that shows them).
SPAN_CSS = """
.span { white-space: pre-wrap; border-radius: 3px; }
.teacher { background: #dbeafe; color: #1e3a8a; }
.student { background: #fde68a; color: #78350f; }
.answer { outline: 1px dashed #6b7280; }
.legend span { padding: 0 .4em; margin-right: .6em; }
"""

_PAGE_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #111827; }
.sample { border: 1px solid #e5e7eb; border-radius: 6px; padding: 1em; margin: 1.2em 0; }
.prompt { white-space: pre-wrap; background: #f3f4f6; padding: .5em; border-radius: 4px; }
.text { font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.6; }
.stats, .meta { color: #4b5563; font-size: 13px; }
table.summary td { padding: .1em .8em .1em 0; }
"""


def render_spans(spans: Iterable[Span]) -> str:
    """Spans as coloured, escaped HTML: teacher and student text, the answer outlined."""
    out = []
    for span in spans:
        classes = f"span {span.source}" + (" answer" if span.phase == "answer" else "")
        title = f"{span.source}, {span.phase}, {span.tokens} tokens"
        out.append(f'<span class="{classes}" title="{html.escape(title)}">{html.escape(span.text)}</span>')
    return "".join(out)


def _prompt_text(record: Record) -> str:
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in record.prompt)


def render_view(
    records: Iterable[Record], *, title: str = "tessy data", summary: Mapping[str, Any] | None = None
) -> str:
    """One HTML page showing each record's prompt, its spans and its statistics."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_PAGE_CSS}{SPAN_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='legend'><span class='span teacher'>teacher</span><span class='span student'>student</span>"
        "<span class='span student answer'>answer</span></p>",
    ]
    if summary:
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items()
        )
        parts.append(f"<table class='summary'>{rows}</table>")
    for record in records:
        stats = record.stats
        stat_text = (
            f"teacher_tokens {stats.teacher_tokens}, student_tokens {stats.student_tokens}, "
            f"switches {stats.switches}, requests {stats.requests}, "
            f"discarded_tokens {stats.discarded_tokens}, guards {stats.guards}"
        )
        parts.append(
            "<div class='sample'>"
            f"<div class='meta'>id {html.escape(record.id)} · mode {html.escape(record.mode)}</div>"
            f"<div class='prompt'>{html.escape(_prompt_text(record))}</div>"
            f"<p class='text'>{render_spans(record.spans)}</p>"
            f"<div class='stats'>{html.escape(stat_text)}</div></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
