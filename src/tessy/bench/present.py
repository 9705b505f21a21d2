"""A benchmark's results for people and programs: the table, the line on what was run, the
``ratio_<setup>_<concurrency>`` lines and JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .harness import BenchResult

__all__ = ["client_lines", "client_table", "describe", "ratio_lines", "table", "to_dict"]

_SETUP_NAMES = {
    "lower": "lower bound (teacher only)",
    "chunked": "TESSY chunked (k={k})",
    "streaming": "TESSY streaming",
}
_COLUMNS = [
    "setup",
    "concurrent",
    "samples",
    "wall s",
    "ratio",
    "tokens/sample",
    "requests/sample",
    "discarded/sample",
    "re-prefill/sample",
    "cache hit",
    "client CPU",
]


def to_dict(result: BenchResult) -> dict[str, Any]:
    return {"transport": result.transport, "config": asdict(result.config), "rows": [asdict(r) for r in result.rows]}


def describe(result: BenchResult) -> str:
    """One line on what was run."""
    c, w, p = result.config, result.config.workload, result.config.params
    clock = "virtual clock, no client cost in wall times" if result.transport == "in-process" else "real time"
    lookahead = "" if c.lookahead is None else f", predictor lookahead {c.lookahead}"
    return (
        f"transport {result.transport} ({clock}); thinking {w.think_tokens[0]}-{w.think_tokens[1]} and answer "
        f"{w.answer_tokens[0]}-{w.answer_tokens[1]} tokens per sample; k = {c.chunk_tokens}{lookahead}; "
        f"decode step {p.decode_step_s * 1e3:g} ms + {p.decode_s_per_seq * 1e3:g} ms/request, prefill "
        f"{p.prefill_s_per_token * 1e6:g} us/token, request overhead {p.request_overhead_s * 1e3:g} ms"
    )


def table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted rows."""
    rows = [
        [
            _SETUP_NAMES[r.setup].format(k=result.config.chunk_tokens) + (f" ({r.failed} failed)" if r.failed else ""),
            str(r.concurrency),
            str(r.samples),
            f"{r.wall_s:.1f}",
            f"{r.ratio:.3f}",
            f"{r.tokens_per_sample:.0f}",
            f"{r.requests_per_sample:.1f}",
            f"{r.discarded_per_sample:.1f}",
            f"{r.reprefill_per_sample:.0f}",
            f"{r.cache_hit:.1%}",
            f"{r.client_cpu:.1%}",
        ]
        for r in result.rows
    ]
    return list(_COLUMNS), rows


def ratio_lines(result: BenchResult) -> list[str]:
    """``ratio_<setup>_<concurrency> <value>`` lines, streaming at the highest concurrency last."""
    levels = result.config.concurrency
    top = max(levels)
    keys = [(s, c) for c in levels for s in ("chunked", "streaming") if (s, c) != ("streaming", top)]
    keys.append(("streaming", top))
    return [f"ratio_{s}_{c} {result.ratio(s, c):.3f}" for s, c in keys]


_CLIENT_COLUMNS = [
    "setup",
    "concurrent",
    "kept tokens",
    "kept tokens/s",
    "client CPU s",
    "requests",
    "client us/kept token",
    "client us/request",
    "server generated / kept",
]
#: The short names of the setups in ``name value`` lines.
_SHORT = {"lower": "lower", "chunked": "chunked", "streaming": "streaming"}


def client_table(result: BenchResult) -> tuple[list[str], list[list[str]]]:
    """The client's cost per setup: kept tokens per second, client CPU per kept token and per
    request, and what the servers generated per kept token."""
    rows = [
        [
            _SETUP_NAMES[r.setup].format(k=result.config.chunk_tokens),
            str(r.concurrency),
            str(r.kept_tokens),
            f"{r.kept_per_s:.0f}",
            f"{r.client_cpu_s:.2f}",
            str(r.requests),
            f"{r.client_us_per_kept:.1f}",
            f"{r.client_us_per_request:.0f}",
            f"{r.generated_per_kept:.3f}",
        ]
        for r in result.rows
    ]
    return list(_CLIENT_COLUMNS), rows


def client_lines(result: BenchResult) -> list[str]:
    """``<setup>_<figure>_<concurrency> <value>`` lines of :func:`client_table`'s figures."""
    lines = []
    for r in result.rows:
        tag = f"{_SHORT[r.setup]}_{{}}_{r.concurrency}"
        lines += [
            f"{tag.format('kept_tokens_per_s')} {r.kept_per_s:.0f}",
            f"{tag.format('client_us_per_kept_token')} {r.client_us_per_kept:.2f}",
            f"{tag.format('client_us_per_request')} {r.client_us_per_request:.0f}",
            f"{tag.format('generated_per_kept')} {r.generated_per_kept:.3f}",
        ]
    return lines
