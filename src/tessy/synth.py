"""A whole synthesis run: prompts in, records out, resumable, with a summary at the end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .build import build_engine
from .config import SynthConfig
from .data import OutputStore
from .engine import Engine
from .errors import ConfigError, DataError
from .prompts import BadLine, PromptSource, read_prompts
from .records import RunStats, Sample

__all__ = ["RunSummary", "asynthesize", "count_prompts", "synthesize"]

logger = logging.getLogger(__name__)


@dataclass
class RunSummary(RunStats):
    """The counters of a run (:class:`RunStats`, added to as each sample ends) and its
    bookkeeping: where it writes, what it skipped, how long it took. Progress callbacks
    receive it."""

    config_hash: str = ""
    output: Path | None = None
    failed_path: Path | None = None
    total: int | None = None
    skipped_done: int = 0
    skipped_failed: int = 0
    bad_lines: int = 0
    wall_s: float = 0.0

    @property
    def processed(self) -> int:
        """Inputs dealt with so far: written, failed, skipped or malformed."""
        return self.written + self.n_failed + self.skipped_done + self.skipped_failed + self.bad_lines

    @property
    def tokens_per_s(self) -> float:
        return self.total_tokens / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_hash": self.config_hash,
            "output": str(self.output) if self.output else None,
            "written": self.written,
            "failed": dict(self.failed),
            "skipped_done": self.skipped_done,
            "skipped_failed": self.skipped_failed,
            "bad_lines": self.bad_lines,
            "teacher_tokens": self.teacher_tokens,
            "student_tokens": self.student_tokens,
            "teacher_share": round(self.teacher_share, 4),
            "switches_per_sample": round(self.switches_per_sample, 3),
            "requests": self.requests,
            "discarded_tokens": self.discarded_tokens,
            "prefix_misses": self.prefix_misses,
            "guards": dict(self.guards),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "wall_s": round(self.wall_s, 3),
        }


def count_prompts(source: PromptSource | Path, limit: int | None = None) -> int | None:
    """How many prompts a source has (for progress totals), capped at ``limit``; None for a stream."""
    return PromptSource.of(source).count(limit)


async def asynthesize(
    config: SynthConfig,
    *,
    engine: Engine | None = None,
    progress: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """Run a synthesis as the config says; resumes into an existing output.

    ``engine`` replaces the one built from the config (to run with hand-made backends); the
    caller keeps it and closes it.
    ``progress`` is called with the running summary after every sample.
    """
    data = config.data
    source, output_path = data.source(), data.output
    if source is None or output_path is None:
        raise ConfigError(
            "say where prompts come from and where records go: set data.input (or data.dataset) and data.output"
        )
    try:
        source.check()
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if output_path.is_dir():
        raise ConfigError(f"the output {output_path} is a folder; give a file name such as out.jsonl")
    config_hash = config.config_hash()
    mode = config.mode.value
    summary = RunSummary(config_hash=config_hash, output=output_path)
    started = time.perf_counter()
    store = OutputStore.open(
        output_path,
        config=config.dump(),
        config_hash=config_hash,
        allow_config_change=data.allow_config_change,
        fsync=data.fsync,
    )
    summary.failed_path = store.failed_path
    if progress is not None:
        summary.total = count_prompts(source, config.limit)
    owned = engine is None
    engine = engine or build_engine(config)

    def samples() -> Iterator[Sample]:
        seen = 0
        prompts = read_prompts(source, prompt_field=data.prompt_field, id_field=data.id_field, strict=data.strict)
        for item in prompts:
            if config.limit is not None and seen >= config.limit:
                return
            seen += 1
            if isinstance(item, BadLine):
                summary.bad_lines += 1
                if item.key not in store.failed_ids:
                    store.write_bad_line(item)
            elif item.id in store.done_ids:
                summary.skipped_done += 1
            elif item.id in store.failed_ids and not data.retry_failed:
                summary.skipped_failed += 1
            else:
                yield item
                continue
            if progress is not None:
                progress(summary)

    try:
        async for result in engine.run(samples(), max_in_flight=config.max_in_flight):
            store.write(result, mode)
            summary.add(result)
            summary.wall_s = time.perf_counter() - started
            if progress is not None:
                progress(summary)
    finally:
        store.close()
        if owned:
            await engine.aclose()
        summary.wall_s = time.perf_counter() - started
    logger.info("run finished: %s", summary.to_dict())
    return summary


def synthesize(config: SynthConfig, **kwargs: Any) -> RunSummary:
    """The synchronous wrapper of :func:`asynthesize`, for scripts."""
    return asyncio.run(asynthesize(config, **kwargs))
