"""``tessy demo``: the whole method on small real models, on a laptop CPU.

Two local llama.cpp servers (Qwen2.5-Coder-0.5B-Instruct as teacher, SmolLM2-135M-Instruct as
student, both from PyPI packages), thinking pre-filled for these ChatML models, lexicon
predictors, a handful of shipped prompts. It writes the data, an HTML view of every sample
with teacher and student spans coloured, and a summary; the servers stop when it ends.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .backends.llamacpp import LlamaCppBackend
from .build import build_engine
from .config import SynthConfig, validate_config
from .models import CATALOGUE, resolve
from .records import Record, RunStats, read_records
from .synth import RunSummary, asynthesize
from .view import render_view

__all__ = ["DEMO_SYSTEM_PROMPT", "DemoResult", "arun_demo", "demo_config"]

#: Small instruct models write a thinking block more readily when asked to.
DEMO_SYSTEM_PROMPT = (
    "You are a careful assistant. Think the problem through step by step inside <think> and </think>, "
    "then give the final answer."
)


@dataclass
class DemoResult:
    output_dir: Path
    data: Path
    view: Path
    summary: dict[str, Any]


def demo_config(
    output_dir: Path,
    *,
    teacher: str = "qwen2.5-coder-0.5b",
    student: str = "smollm2-135m",
    streaming: bool = False,
    limit: int | None = None,
) -> SynthConfig:
    """The embedded demo run (every value can be read in ``output_dir/data.config.json``)."""

    def role(model: str) -> dict[str, Any]:
        return {
            "backend": "llamacpp",
            "model": model,
            "format": CATALOGUE[model].format if model in CATALOGUE else "chatml",
            "system_prompt": DEMO_SYSTEM_PROMPT,
            "chunk_tokens": 20,
            "predictor": "lexicon",
            "n_ctx": 8192,
            "n_parallel": 4,
        }

    return validate_config(
        {
            "mode": "tessy",
            "streaming": streaming,
            "teacher": role(teacher),
            "student": role(student),
            "guards": {"max_total_tokens": 768, "max_thinking_tokens": 384},
            "data": {"input": str(output_dir / "prompts.jsonl"), "output": str(output_dir / "data.jsonl")},
            "max_in_flight": 8,
            "limit": limit,
        },
        source="the demo config",
    )


def _summarize(records: list[Record], run: RunSummary, servers_s: float) -> dict[str, Any]:
    """The demo's numbers: the data's (every record in the output, earlier runs' too) and this run's."""
    data = RunStats()
    for r in records:
        data.add(r)
    return {
        "samples": data.written,
        "with both sources": sum(1 for r in records if {s.source for s in r.spans} == {"teacher", "student"}),
        "teacher token share": round(data.teacher_share, 3),
        "switches per sample": round(data.switches_per_sample, 2),
        "failed (this run)": run.n_failed,
        "tokens/s (this run)": round(run.tokens_per_s, 1),
        "server start (s)": round(servers_s, 1),
        "wall time (s, this run)": round(run.wall_s, 1),
    }


async def arun_demo(
    output_dir: Path,
    *,
    teacher: str = "qwen2.5-coder-0.5b",
    student: str = "smollm2-135m",
    streaming: bool = False,
    limit: int | None = None,
    fresh: bool = False,
    progress: Callable[[RunSummary], None] | None = None,
) -> DemoResult:
    """Run the demo into ``output_dir`` (resuming an earlier demo there unless ``fresh``)."""
    await asyncio.to_thread(_prepare, output_dir, (teacher, student), fresh)
    config = demo_config(output_dir, teacher=teacher, student=student, streaming=streaming, limit=limit)
    engine = build_engine(config)
    try:
        started = time.perf_counter()
        await asyncio.gather(
            *(r.backend.start() for r in engine.roles.values() if isinstance(r.backend, LlamaCppBackend))
        )
        servers_s = time.perf_counter() - started
        run = await asynthesize(config, engine=engine, progress=progress)
    finally:
        await engine.aclose()
    return await asyncio.to_thread(_finish, output_dir, run, servers_s)


def _prepare(output_dir: Path, models: tuple[str, ...], fresh: bool) -> None:
    for name in models:
        resolve(name)  # a missing model package fails here, with its install command
    output_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for stale in output_dir.glob("data*"):
            stale.unlink()
    shipped = resources.files("tessy").joinpath("demo_data/prompts.jsonl")
    with resources.as_file(shipped) as src:
        shutil.copyfile(src, output_dir / "prompts.jsonl")


def _finish(output_dir: Path, run: RunSummary, servers_s: float) -> DemoResult:
    data = output_dir / "data.jsonl"
    records = list(read_records(data, missing_ok=True))
    summary = _summarize(records, run, servers_s)
    view = output_dir / "view.html"
    view.write_text(render_view(records, title="tessy demo", summary=summary), encoding="utf-8")
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return DemoResult(output_dir, data, view, summary)
