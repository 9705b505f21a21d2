"""``tessy synth`` and ``tessy demo``: the commands that make data."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from ..config import load_config
from ..errors import ConfigError
from ..scale import synthesize_sharded
from ..synth import RunSummary, asynthesize
from .common import (
    EXIT_FAILURES,
    EXIT_OK,
    ProgressLog,
    add_source_arguments,
    console,
    kv_table,
    print_table,
    progress_bar,
    source_overrides,
)

__all__ = ["register", "summary_table"]


def summary_table(summary: RunSummary, title: str = "tessy run") -> Table:
    rows = {
        "samples written": summary.written,
        "failed": f"{summary.n_failed} {dict(summary.failed) if summary.failed else ''}".strip(),
        "skipped (already done / failed before)": f"{summary.skipped_done} / {summary.skipped_failed}",
        "malformed input lines": summary.bad_lines,
        "teacher token share": f"{summary.teacher_share:.1%}",
        "switches per sample": f"{summary.switches_per_sample:.1f}",
        "requests (tried again after a fault)": f"{summary.requests} ({summary.retried_requests})",
        "discarded tokens": summary.discarded_tokens,
        "cost per kept token (requests / tokens generated)": (
            f"{summary.requests_per_kept_token:.3f} / {summary.generated_per_kept_token:.2f}"
        ),
        "prompts not extending the last (prefix misses)": summary.prefix_misses,
        "guards fired": dict(summary.guards) if summary.guards else "none",
        "tokens/s": f"{summary.tokens_per_s:.1f}",
        "wall time": f"{summary.wall_s:.1f} s",
        "output": summary.output,
    }
    if summary.verification is not None:
        from .verify import verification_rows

        rows.update(verification_rows(summary.verification))
    if summary.n_failed or summary.bad_lines:
        rows["failures file"] = summary.failed_path
    verdict = "TOO MANY: the run fails" if summary.too_many_failures else "within the limit"
    rows["inputs without a record"] = (
        f"{summary.failure_rate:.1%} (limit {summary.max_failure_rate:.0%}, max_failure_rate): {verdict}"
    )
    return kv_table(title, rows)


def _synth(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    # Paths given as options are relative to the current directory, not to the config file,
    # and are taken verbatim (JSON-quoted: '#' or ': ' in a file name is no YAML syntax).
    overrides += source_overrides(args.input, args.dataset, args.split)
    if args.output:
        overrides.append(f"data.output={json.dumps(str(Path(args.output).resolve()))}")
    if args.limit is not None:
        overrides.append(f"limit={args.limit}")
    config = load_config(Path(args.config), overrides)
    if args.workers is not None or args.ray is not None:
        summary = _sharded(config, args.workers, args.ray)
    elif console.is_terminal or not config.progress_interval_s:
        with progress_bar("synth") as on_progress:
            summary = asyncio.run(asynthesize(config, progress=on_progress))
    else:
        summary = asyncio.run(_logged(config))
    print_table(summary_table(summary))
    if summary.too_many_failures:
        console.print(
            f"[bold red]error:[/] {summary.failure_rate:.1%} of the inputs have no record, over "
            f"max_failure_rate={summary.max_failure_rate:g}; see {summary.failed_path}"
        )
        return EXIT_FAILURES
    return EXIT_OK


async def _logged(config: Any) -> RunSummary:
    """The run with a progress line every ``progress_interval_s`` on stderr (no terminal there)."""
    log = ProgressLog(
        "synth", config.progress_interval_s, lambda line: console.print(line, markup=False, highlight=False)
    )
    beat = asyncio.create_task(log.heartbeat())
    try:
        return await asynthesize(config, progress=log)
    finally:
        beat.cancel()


def _sharded(config: Any, workers: int | None, ray: str | None) -> RunSummary:
    """The run as ``workers`` client processes (or Ray actors), with the same progress display."""
    if ray is not None and "=" in ray:
        raise ConfigError(f"--ray takes a cluster address, not {ray!r}: put key=value overrides before --ray")
    ray_address: bool | str | None = None if ray is None else (True if ray == "" else ray)
    if console.is_terminal or not config.progress_interval_s:
        with progress_bar("synth") as on_progress:
            return synthesize_sharded(config, workers=workers, ray=ray_address, progress=on_progress)
    log = ProgressLog(
        "synth", config.progress_interval_s, lambda line: console.print(line, markup=False, highlight=False)
    )
    return synthesize_sharded(config, workers=workers, ray=ray_address, progress=log)


def _demo(args: argparse.Namespace) -> int:
    from ..demo import arun_demo

    with progress_bar("demo") as on_progress:
        result = asyncio.run(
            arun_demo(
                Path(args.output),
                teacher=args.teacher,
                student=args.student,
                streaming=args.streaming,
                limit=args.limit,
                fresh=args.fresh,
                progress=on_progress,
            )
        )
    rows: dict[str, Any] = {**result.summary, "data": result.data, "view": result.view}
    print_table(kv_table("tessy demo", rows))
    return EXIT_OK


def register(sub: Any, **common: Any) -> None:
    synth = sub.add_parser("synth", help="synthesise responses for a file or dataset of prompts", **common)
    synth.add_argument("--config", required=True, help="YAML run config (see 'tessy config schema')")
    add_source_arguments(synth)
    synth.add_argument("--output", help="JSONL output (overrides data.output); resumes if it exists")
    synth.add_argument("--limit", type=int, help="use only the first N prompts")
    synth.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run as N client processes (shards by id; the servers' limits are split among them); "
        "with --ray, N actors (default: one per node)",
    )
    synth.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the shards as actors on a Ray cluster (ADDRESS e.g. auto or ray://head:10001; "
        "without it RAY_ADDRESS or a local cluster); needs tessy[ray]",
    )
    synth.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. teacher.chunk_tokens=32"
    )
    synth.set_defaults(func=_synth)

    demo = sub.add_parser("demo", help="the whole method on two small real models, on this CPU", **common)
    demo.add_argument("--output", default="tessy-demo", help="folder for the data, view and summary")
    demo.add_argument("--teacher", default="qwen2.5-coder-0.5b", help="teacher model (qwen2.5-coder-1.5b is stronger)")
    demo.add_argument("--student", default="smollm2-135m", help="student model")
    demo.add_argument("--limit", type=int, help="use only the first N shipped prompts")
    demo.add_argument("--streaming", action="store_true", help="stream tokens and stop each request at its boundary")
    demo.add_argument("--fresh", action="store_true", help="start over instead of resuming an earlier demo there")
    demo.set_defaults(func=_demo)
