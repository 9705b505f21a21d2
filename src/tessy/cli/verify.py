"""``tessy verify``: judge the answers of a finished run (math, code or your own verifier)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from rich.table import Table

from ..verify import PassTally
from .common import EXIT_OK, kv_table, print_table

__all__ = ["register", "verification_rows"]


def verification_rows(tally: PassTally) -> dict[str, Any]:
    """The rows a summary table shows for a run's verdicts."""
    rows: dict[str, Any] = {
        f"verified ({tally.kind or 'none'}): passed / failed / not judged": f"{tally.passed} / {tally.failed} / {tally.unjudged}",
        "pass rate (judged samples)": f"{tally.pass_rate:.1%}",
        "pass@1": f"{tally.pass_at_1:.1%}",
    }
    if tally.n > 1:
        rows[f"pass@{tally.n}"] = f"{tally.pass_at_n:.1%}"
    if tally.kept:
        rows["kept samples"] = tally.kept
    return rows


def _overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: {pair!r} is no key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _verify(args: argparse.Namespace) -> int:
    from ..verify_run import averify_run

    summary = asyncio.run(
        averify_run(
            Path(args.run),
            kind=args.kind,
            output=Path(args.output) if args.output else None,
            overrides=_overrides(list(args.overrides)),
        )
    )
    rows: dict[str, Any] = {
        "records verified": summary.verified,
        "skipped (already in the output)": summary.skipped_done,
        **verification_rows(summary.tally),
        "wall time": f"{summary.wall_s:.1f} s",
        "output": summary.output,
    }
    if summary.damaged_lines:
        rows["lines that are no record"] = summary.damaged_lines
    table: Table = kv_table("tessy verify", rows)
    print_table(table)
    return EXIT_OK


def register(sub: Any, **common: Any) -> None:
    verify = sub.add_parser("verify", help="verify a run's answers (math, code in a sandbox, or your own)", **common)
    verify.add_argument("run", metavar="RUN.jsonl", help="a run's JSONL output")
    verify.add_argument("--kind", help="math, code or module:function (default: the run's verify.kind)")
    verify.add_argument(
        "--output", help="where verified records go (default: RUN.verified.jsonl); resumes if it exists"
    )
    verify.add_argument(
        "overrides", nargs="*", metavar="key=value", help="verify settings, e.g. answer_field=solution timeout_s=5"
    )
    verify.set_defaults(func=_verify)
