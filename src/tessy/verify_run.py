"""``tessy verify``: verify the records of a finished run, afterwards, into a new file.

Reads ``RUN.jsonl``, judges every record's answer with the verifier a ``verify:`` section
describes (the run's own, from ``RUN.config.json``, with ``kind`` and other settings
overridden), and writes each record with its ``verification`` to ``RUN.verified.jsonl`` (or
the output given). Resumable as a synthesis is: records already in the output are skipped, and
one run at a time writes to an output. ``kept`` markers of a rejection-sampled run are copied
as they are (they record what the run kept); the verdicts, pass@1 and pass@n are new.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .build import build_verifier
from .config import VerifyConfig
from .data import OutputStore, sidecar_paths
from .errors import ConfigError, DataError
from .records import Record, read_records
from .verify import PassTally
from .workers import map_unordered

__all__ = ["VerifySummary", "averify_run", "verified_path"]

logger = logging.getLogger(__name__)


@dataclass
class VerifySummary:
    """What a ``tessy verify`` run did."""

    source: Path
    output: Path
    config: VerifyConfig
    verified: int = 0
    skipped_done: int = 0
    damaged_lines: int = 0
    wall_s: float = 0.0
    tally: PassTally = field(default_factory=PassTally)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "output": str(self.output),
            "verify": self.config.model_dump(mode="json"),
            "verified": self.verified,
            "skipped_done": self.skipped_done,
            "damaged_lines": self.damaged_lines,
            "wall_s": round(self.wall_s, 3),
            "verification": self.tally.to_dict(),
        }


def verified_path(run: Path) -> Path:
    """The default output of ``tessy verify RUN.jsonl``: ``RUN.verified.jsonl``."""
    stem = run.name[: -len(run.suffix)] if run.suffix else run.name
    return run.with_name(f"{stem}.verified.jsonl")


def _saved(run: Path) -> dict[str, Any]:
    """``RUN.config.json``: the run's resolved config and its hash (empty when absent)."""
    try:
        saved = json.loads(sidecar_paths(run)[1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _run_config(run: Path) -> dict[str, Any]:
    config = _saved(run).get("config")
    return config if isinstance(config, dict) else {}


def _run_hash(run: Path) -> str:
    return str(_saved(run).get("config_hash") or "")


def resolve_verify_config(
    run: Path, kind: str | None, overrides: dict[str, Any] | None
) -> tuple[VerifyConfig, int, bool]:
    """The verify section to use (the run's, then ``kind``, then ``overrides``), the samples
    drawn per prompt and whether drawing stopped at a pass (from the run's config)."""
    saved = _run_config(run)
    base: dict[str, Any] = saved["verify"] if isinstance(saved.get("verify"), dict) else {}
    settings = {**base, **({"kind": kind} if kind else {}), **(overrides or {})}
    try:
        config = VerifyConfig.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(f"the verify settings are not valid: {exc}") from None
    if config.kind == "none":
        raise ConfigError(f"say what to verify: --kind math, code or module:function ({run} has no verify section)")
    attempts = saved.get("max_attempts") or saved.get("samples_per_prompt") or 1
    return config, int(attempts), saved.get("keep") == "first-passing"


async def averify_run(
    run: Path,
    *,
    kind: str | None = None,
    output: Path | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[VerifySummary], None] | None = None,
) -> VerifySummary:
    """Verify every record of ``run`` into ``output`` (default ``RUN.verified.jsonl``); resumable."""
    if not run.is_file():  # noqa: ASYNC240  (once, before any work)
        raise DataError(f"{run} is not a file; give a run's JSONL output")
    config, attempts, adaptive = resolve_verify_config(run, kind, overrides)
    output = output or verified_path(run)
    if output.resolve() == run.resolve():  # noqa: ASYNC240
        raise DataError("the output must be another file than the run (outputs are append-only)")
    summary = VerifySummary(run, output, config, tally=PassTally(n=attempts, adaptive=adaptive))
    started = time.perf_counter()
    verifier = build_verifier(config)
    # The output's config is the run's (so that check, report and export read it as they read the
    # run), with the verify section used; its hash stays the run's, which its records carry.
    saved = _run_config(run)
    store = OutputStore.open(
        output,
        config={**saved, "verify": config.model_dump(mode="json")},
        config_hash=_run_hash(run),
        allow_config_change=True,
    )
    damaged: list[int] = []
    try:
        for done in read_records(output, missing_ok=True):
            summary.tally.add(done)

        def todo() -> Any:
            for record in read_records(run, damaged=damaged):
                if record.id in store.done_ids:
                    summary.skipped_done += 1
                    continue
                yield record

        async def judge(record: Record) -> Record:
            return replace(record, verification=await verifier.verify(record))

        concurrency = (config.concurrency or os.cpu_count() or 1) * 2  # a sandbox bounds its own programs
        async with aclosing(map_unordered(judge, todo(), concurrency=concurrency)) as judged:
            async for record in judged:
                store.write_record(record)
                summary.verified += 1
                summary.tally.add(record)
                summary.wall_s = time.perf_counter() - started
                if progress is not None:
                    progress(summary)
    finally:
        summary.damaged_lines = len(damaged)
        summary.wall_s = time.perf_counter() - started
        try:
            store.write_summary(summary.to_dict())
        finally:
            store.close()
            await verifier.aclose()
    logger.info("verified %s: %s", run, summary.to_dict())
    return summary
