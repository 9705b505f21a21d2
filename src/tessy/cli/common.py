"""What every command shares: the console, logging, tables, the progress bar, help that shows
defaults, and the options that say where prompts come from."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..synth import RunSummary

__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILURES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "HelpFormatter",
    "ProgressLog",
    "add_source_arguments",
    "console",
    "kv_table",
    "print_table",
    "progress_bar",
    "setup_logging",
    "source_overrides",
    "verbose_parent",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: ``tessy synth`` ran to its end, but more of its inputs failed than ``max_failure_rate`` allows.
EXIT_FAILURES = 3

#: Messages, logs and progress go to stderr; stdout carries only results (paths, tables).
console = Console(stderr=True)


class HelpFormatter(argparse.HelpFormatter):
    """Help that states each option's default, where it has one worth stating."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or default == []
            or action.option_strings == []
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._CountAction))
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def verbose_parent() -> argparse.ArgumentParser:
    """``-v`` as a parent of every subcommand, so that it may come after the command's name too
    (``tessy synth ... -v``). Left out, it does not reset a ``-v`` given before the command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging (-vv for debug)"
    )
    return parent


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=verbose > 1)],
    )
    # One line per HTTP request is noise unless debugging.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def kv_table(title: str, rows: Mapping[str, Any]) -> Table:
    """A two-column table of names and values."""
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


def print_table(table: Table) -> None:
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # a pipe or a log: do not squeeze rows into 80 columns
    out.print(table)


class ProgressLog:
    """Progress as a line every ``interval_s`` seconds, for a stderr that is no terminal (a log
    file, a batch job): samples done / total, samples/s, tokens/s, ETA, failures by reason.

    Called with the summary as samples end; :meth:`heartbeat` also writes a line when none has
    ended for a whole interval (a stalled run says so instead of going quiet). Where the servers
    report prefix-cache hits (``cached_tokens``), the share of prompt tokens they served.
    """

    def __init__(self, label: str, interval_s: float, write: Callable[[str], None]) -> None:
        self.label = label
        self.interval_s = interval_s
        self.write = write
        self.started = time.monotonic()
        self.last_line = self.started
        self.summary: RunSummary | None = None

    def __call__(self, summary: RunSummary) -> None:
        self.summary = summary
        if time.monotonic() - self.last_line >= self.interval_s:
            self.emit()

    def line(self) -> str:
        s, elapsed = self.summary, max(time.monotonic() - self.started, 1e-9)
        if s is None:
            return f"{self.label}: starting, no sample has ended yet ({elapsed:.0f} s)"
        ran = s.written + s.n_failed
        rate = ran / elapsed
        total = f"/{s.total}" if s.total is not None else ""
        parts = [
            f"{self.label}: {s.processed}{total} inputs",
            f"{s.written} written",
            f"{rate:.2f} samples/s",
            f"{s.total_tokens / elapsed:.0f} tokens/s",
        ]
        if s.total is not None:
            left = max(s.total - s.processed, 0)
            parts.append(f"ETA {_duration(left / rate)}" if rate > 0 else "ETA unknown")
        hit_rate = s.cache_hit_rate
        if hit_rate is not None:
            parts.append(f"prefix cache {hit_rate:.0%}")
        failures = dict(s.failed)
        if s.bad_lines:
            failures["bad input lines"] = s.bad_lines
        parts.append(
            "failed " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())) if failures else "no failures"
        )
        return " | ".join(parts)

    def emit(self) -> None:
        self.last_line = time.monotonic()
        self.write(self.line())

    async def heartbeat(self) -> None:
        """Write a line whenever a whole interval passes without one; runs until cancelled."""
        while True:
            await asyncio.sleep(max(self.interval_s - (time.monotonic() - self.last_line), 0.01))
            if time.monotonic() - self.last_line >= self.interval_s:
                self.emit()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[RunSummary], None]]:
    """A progress bar on a terminal (samples done, teacher share, failures); nothing elsewhere."""
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("teacher {task.fields[share]}"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(label, total=None, share="-", failed=0)

        def on_progress(s: RunSummary) -> None:
            bar.update(task, total=s.total, completed=s.processed, share=f"{s.teacher_share:.0%}", failed=s.n_failed)

        yield on_progress


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--input`` / ``--dataset`` (one of them) and ``--split``: where a command's prompts come
    from; :func:`source_overrides` turns them into config overrides."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--input", help="prompts: a JSONL or Parquet file or a dataset folder (overrides data.input)")
    source.add_argument("--dataset", help="prompts from a Hugging Face Hub dataset, e.g. openai/gsm8k")
    parser.add_argument("--split", help="the dataset's split (overrides data.split, whose default is train)")


def source_overrides(input: str | None = None, dataset: str | None = None, split: str | None = None) -> list[str]:
    """Overrides for prompts given as command-line options (``--input``, ``--dataset``,
    ``--split``): a file or folder relative to the current directory, and either replaces the
    config's source of the other kind."""
    out: list[str] = []
    if input:
        out += [f"data.input={json.dumps(str(Path(input).resolve()))}", "data.dataset=null"]
    if dataset:
        out += [f"data.dataset={json.dumps(dataset)}", "data.input=null"]
    if split:
        out.append(f"data.split={json.dumps(split)}")
    return out
