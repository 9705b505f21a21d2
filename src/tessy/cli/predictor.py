"""``tessy predictor {sample,annotate,train,eval}``: thin commands over :mod:`tessy.predictor`."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import RoleConfig, load_config
from ..errors import ConfigError
from ..records import Source
from .common import add_source_arguments, kv_table, print_table, source_overrides

__all__ = ["register"]


def _role_from(spec: str, default_role: Source = "teacher") -> tuple[RoleConfig, Source]:
    """A model to use: ``role.yaml`` (one role section: backend, model, format...), or a run
    config with the section to take, ``run.yaml[:teacher|student]`` (default: the teacher)."""
    import yaml
    from pydantic import TypeAdapter, ValidationError

    path, sep, role = spec.rpartition(":")
    if not sep or role not in ("teacher", "student"):
        path, role = spec, default_role
    name: Source = "teacher" if role == "teacher" else "student"
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the model config {file}: {exc}") from exc
    if isinstance(data, dict) and "backend" in data:
        try:
            one = TypeAdapter(RoleConfig).validate_python(data, context={"base_dir": file.resolve().parent})
        except ValidationError as exc:
            raise ConfigError(f"{file} is not a valid role config:\n{exc}") from None
        return one, name
    return getattr(load_config(file), name), name


def _sample(args: argparse.Namespace) -> int:
    from ..predictor.sample import sample_traces

    # Prompts as tessy synth takes them: an option, else the config's data section.
    overrides = [*args.overrides, *source_overrides(args.input, args.dataset, args.split)]
    config = load_config(Path(args.config), overrides)
    source = config.data.source()
    if source is None:
        raise ConfigError("say where the prompts are: --input FILE, --dataset OWNER/NAME, or data.input in the config")
    role: Source = args.role
    summary = sample_traces(
        getattr(config, role),
        role,
        source,
        Path(args.output),
        max_tokens=args.max_tokens,
        concurrency=args.concurrency,
        limit=args.limit,
        prompt_field=config.data.prompt_field,
        id_field=config.data.id_field,
    )
    print_table(kv_table(f"tessy predictor sample ({role})", summary.to_dict()))
    return 0 if summary.written or summary.skipped else 1


def _annotate(args: argparse.Namespace) -> int:
    from ..predictor.annotate import aannotate
    from ..predictor.sample import build_sampling_role

    async def run() -> Any:
        kwargs = {
            "window_words": args.window_words,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "prefill": args.prefill,
            "limit": args.limit,
        }
        inputs = [Path(p) for p in args.input]
        if args.judge == "lexicon":
            return await aannotate(inputs, Path(args.output), judge="lexicon", **kwargs)
        config, name = _role_from(args.judge)
        role = build_sampling_role(name, config)
        try:
            return await aannotate(inputs, Path(args.output), judge=role, **kwargs)
        finally:
            await role.backend.aclose()

    summary = asyncio.run(run())
    print_table(kv_table("tessy predictor annotate", summary.to_dict()))
    return 0 if summary.accepted or summary.skipped else 1


def _train(args: argparse.Namespace) -> int:
    from ..predictor.train import TrainSettings, train_predictor

    settings = TrainSettings(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        train_layers=args.train_layers,
        max_steps=args.max_steps,
        style_weight=args.style_weight,
        device=args.device,
    )
    result = train_predictor([Path(p) for p in args.data], args.backbone, Path(args.output), settings)
    card = result.card
    rows = {
        "output": result.output,
        "windows (train/val/test)": "{train}/{val}/{test}".format(**card["windows"]),
        "steps": card["steps"],
        "best epoch": card["best_epoch"],
        "val F1": (card["val"] or {}).get("f1", "-"),
        "test F1": (card["test"] or {}).get("f1", "-"),
        "lexicon test F1": (card["lexicon_test"] or {}).get("f1", "-"),
        "wall time": f"{card['wall_s']} s",
    }
    print_table(kv_table("tessy predictor train", rows))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ..predictor.evaluate import evaluate

    metrics = evaluate(
        [Path(p) for p in args.data],
        args.predictor,
        tokenizer=args.tokenizer,
        threshold=args.threshold,
        window=args.window,
        device=args.device,
    )
    result = {"predictor": str(args.predictor), **metrics.to_dict()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_table(kv_table("tessy predictor eval", result))
    return 0


def register(sub: Any, **common: Any) -> None:
    """Add the ``predictor`` command group to the CLI's subparsers."""
    group = sub.add_parser("predictor", help="train boundary predictors for your teacher and student", **common)
    cmds = group.add_subparsers(dest="predictor_command", metavar="STEP", required=True)

    def bind(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int]) -> None:
        parser.set_defaults(func=func)

    p = cmds.add_parser("sample", help="sample reasoning traces from the teacher or the student", **common)
    p.add_argument("--config", required=True, help="run config whose teacher/student section gives the model")
    p.add_argument("--role", required=True, choices=["teacher", "student"], help="whose model samples")
    add_source_arguments(p)
    p.add_argument("--output", required=True, help="JSONL traces (resumes if it exists)")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens per trace")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    bind(p, _sample)

    p = cmds.add_parser("annotate", help="mark the style spans of trace windows with a judge model", **common)
    p.add_argument("--input", required=True, nargs="+", help="JSONL traces")
    p.add_argument("--output", required=True, help="JSONL annotated windows (resumes if it exists)")
    p.add_argument(
        "--judge",
        default="lexicon",
        help="'lexicon' (no model), a role config (judge.yaml: backend, model, format...), "
        "or a run config and the role whose model judges: run.yaml[:teacher|student]",
    )
    p.add_argument("--window-words", type=int, default=60, help="words per window")
    p.add_argument("--concurrency", type=int, default=8, help="judge requests in flight")
    p.add_argument("--max-tokens", type=int, default=96, help="tokens the judge may write")
    p.add_argument("--prefill", default='["', help="text that opens the judge's answer")
    p.add_argument("--limit", type=int, help="only the first N windows (counting those done before)")
    bind(p, _annotate)

    p = cmds.add_parser("train", help="train a token classifier on annotated windows", **common)
    p.add_argument("--data", required=True, nargs="+", help="JSONL annotated windows (one role's)")
    p.add_argument("--backbone", required=True, help="checkpoint folder, GGUF file or catalogued model name")
    p.add_argument("--output", required=True, help="checkpoint folder to write")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training windows")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate")
    p.add_argument("--batch-size", type=int, default=8, help="windows per training step")
    p.add_argument("--max-length", type=int, default=200, help="tokens per example: the inference window")
    p.add_argument("--val-fraction", type=float, default=0.1, help="windows (split by trace) that pick the best epoch")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out windows, written to heldout.jsonl")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    p.add_argument("--train-layers", type=int, help="train only the top N layers and the head")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (default: all epochs)")
    p.add_argument("--style-weight", type=float, default=1.0, help="loss weight of the style class")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    bind(p, _train)

    p = cmds.add_parser("eval", help="score a predictor on held-out annotated windows", **common)
    p.add_argument("--data", required=True, nargs="+", help="JSONL annotated windows")
    p.add_argument("--predictor", required=True, help="a checkpoint folder, or 'lexicon'")
    p.add_argument("--tokenizer", help="reference tokenizer (default: the classifier's own; needed for lexicon)")
    p.add_argument("--threshold", type=float, default=0.5, help="style probability at or above which a token is style")
    p.add_argument("--window", type=int, default=200, help="tokens of left context the classifier reads")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    bind(p, _eval)
