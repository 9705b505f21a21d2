"""``tessy predictor sample``: reasoning traces from one role's model, for annotation.

For each prompt the role's model writes its thinking, opened in the role's own chat format (as
the engine prompts it), up to ``max_tokens`` new tokens or the end of thinking. One JSONL record
a trace: ``{id, role, prompt, text, tokens, ended}`` (``ended``: the model closed its thinking
itself). Any tessy backend works; requests run ``concurrency`` at a time. A rerun skips the ids
already in the output.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import GenerateRequest, Prompt
from ..config import RoleConfig
from ..engine import Role
from ..errors import BackendError, ConfigError, DataError
from ..jsonl import JsonlWriter, read_jsonl
from ..prompts import BadLine, PromptSource, read_prompts
from ..records import Sample, Source
from ..retry import FailureBudget, call_with_retries
from ..workers import map_unordered

__all__ = ["SampleSummary", "asample_traces", "sample_traces"]

logger = logging.getLogger(__name__)


@dataclass
class SampleSummary:
    output: Path | None = None
    written: int = 0
    skipped: int = 0
    failed: int = 0
    bad_lines: int = 0
    tokens: int = 0
    ended: int = 0
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output) if self.output else None,
            "written": self.written,
            "skipped": self.skipped,
            "failed": self.failed,
            "bad_lines": self.bad_lines,
            "tokens": self.tokens,
            "ended_thinking": self.ended,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "wall_s": round(self.wall_s, 2),
        }


def build_sampling_role(name: Source, config: RoleConfig) -> Role:
    """The role as synthesis builds it, set up to run alone (see :func:`tessy.build.sampling_role_config`)."""
    from ..build import build_role, sampling_role_config  # the engine stack; keep this module light

    return build_role(name, sampling_role_config(config))


async def asample_traces(
    role: Role,
    prompts: PromptSource | Path,
    output: Path,
    *,
    max_tokens: int = 256,
    concurrency: int = 8,
    limit: int | None = None,
    prompt_field: str | None = None,
    id_field: str = "id",
    max_request_failures: int = 3,
    progress: Callable[[SampleSummary], None] | None = None,
) -> SampleSummary:
    """Sample one trace per prompt of ``prompts`` (a file or a :class:`PromptSource`) from ``role``
    into ``output``; the caller closes the role's backend."""
    if max_tokens < 1 or concurrency < 1:
        raise ConfigError("max_tokens and concurrency must be at least 1")
    source = PromptSource.of(prompts)
    _check_input(source)
    summary = SampleSummary(output=output)
    done = {str(r.get("id")) for r in read_jsonl(output, missing_ok=True) if r.get("role") == role.name}
    started = time.perf_counter()

    def samples() -> Iterator[Sample]:
        for seen, item in enumerate(read_prompts(source, prompt_field=prompt_field, id_field=id_field)):
            if limit is not None and seen >= limit:
                return
            if isinstance(item, BadLine):
                summary.bad_lines += 1
                logger.warning("skipped a malformed prompt: %s", item)
            elif item.id in done:
                summary.skipped += 1
            else:
                yield item

    async def trace(sample: Sample) -> tuple[Sample, dict[str, Any] | str]:
        return sample, await _trace(role, sample, max_tokens, max_request_failures)

    with JsonlWriter(output) as writer:
        async with aclosing(map_unordered(trace, samples(), concurrency=concurrency)) as traces:
            async for sample, record in traces:
                if isinstance(record, str):
                    summary.failed += 1
                    summary.failures.append(f"{sample.id}: {record}")
                    logger.warning("sample %s: no trace (%s)", sample.id, record)
                else:
                    writer.write(record)
                    summary.written += 1
                    summary.tokens += record["tokens"]
                    summary.ended += bool(record["ended"])
                summary.wall_s = time.perf_counter() - started
                if progress is not None:
                    progress(summary)
    summary.wall_s = time.perf_counter() - started
    logger.info("sampled %s traces: %s", role.name, summary.to_dict())
    return summary


def _check_input(source: PromptSource) -> None:
    try:
        source.check()
    except DataError as exc:
        raise ConfigError(str(exc)) from None


async def _trace(role: Role, sample: Sample, max_tokens: int, max_failures: int) -> dict[str, Any] | str:
    fmt = role.format
    request = GenerateRequest(
        prompt=Prompt.of(fmt.render_think(sample.messages)),
        max_tokens=max_tokens,
        stop=fmt.think_stop,
        sampling=role.sampling,
        sample_id=sample.id,
        role=role.name,
        phase="think",
    )
    try:
        async with role.session(sample.id):
            gen = await call_with_retries(
                lambda: role.backend.generate(request), FailureBudget(max_failures), what=f"sample {sample.id}"
            )
    except BackendError as exc:
        return f"request failed: {exc}"
    text = gen.text
    hit = fmt.find_think_end(text) if fmt.think_stop else None
    if hit is not None:
        text = text[: hit[0]]
    return {
        "id": sample.id,
        "role": role.name,
        "prompt": sample.messages[-1]["content"],
        "text": text,
        "tokens": len(gen.pieces),
        "ended": hit is not None or gen.finish_reason == "stop",
    }


def sample_traces(
    config: RoleConfig, name: Source, prompts: PromptSource | Path, output: Path, **kwargs: Any
) -> SampleSummary:
    """Build the role from its config, sample, and close its backend (the synchronous entry point)."""

    async def run() -> SampleSummary:
        role = build_sampling_role(name, config)
        try:
            return await asample_traces(role, prompts, output, **kwargs)
        finally:
            await role.backend.aclose()

    return asyncio.run(run())
