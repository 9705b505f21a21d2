"""Runs as a report sees them: the records of an output file, its failures and its config, and
the statistics of each run (who wrote how much, switches, lengths, requests, failures).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import iter_records, sidecar_paths

__all__ = ["Distribution", "Run", "RunStats", "load_run", "run_stats"]

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One output file: its records (in file order), failures (by id) and resolved config."""

    name: str
    path: Path
    records: list[dict[str, Any]]
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    damaged_lines: int = 0

    @property
    def mode(self) -> str:
        modes = Counter(str(r.get("mode", "?")) for r in self.records)
        if modes:
            return modes.most_common(1)[0][0]
        return str((self.config or {}).get("mode", "?"))

    @property
    def by_id(self) -> dict[str, dict[str, Any]]:
        return {str(r["id"]): r for r in self.records}

    @property
    def student_format(self) -> str | None:
        student = (self.config or {}).get("student")
        return str(student["format"]) if isinstance(student, dict) and "format" in student else None


def load_run(path: Path, name: str | None = None) -> Run:
    """Read a run's output file and, where they exist, its failure and config sidecars."""
    damaged: list[int] = []
    records = [r for r in iter_records(path, damaged=damaged) if isinstance(r.get("messages"), list)]
    failed_path, config_path = sidecar_paths(path)
    failures: dict[str, dict[str, Any]] = {}
    if failed_path.is_file():
        done = {str(r["id"]) for r in records}
        for f in iter_records(failed_path):
            if str(f["id"]) not in done:  # failed once, then done on a retry: not a failure
                failures[str(f["id"])] = f  # the last attempt wins
    config = None
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8")).get("config")
        except (OSError, ValueError, AttributeError):
            logger.warning("cannot read %s; the run's config is left out", config_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return Run(name or stem, path, records, failures, config, len(damaged))


@dataclass(frozen=True)
class Distribution:
    """Summary of a list of numbers."""

    mean: float
    median: float
    p90: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Distribution:
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0)
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        return cls(statistics.fmean(ordered), statistics.median(ordered), p90, ordered[-1])


@dataclass
class RunStats:
    """Per-run statistics. Token counts are the engine's, each role in its own tokenizer."""

    name: str
    mode: str
    samples: int
    failed: int
    failures_by_reason: Counter[str]
    teacher_tokens: int
    student_tokens: int
    teacher_think_tokens: int
    think_tokens: int
    switches: Distribution
    response_tokens: Distribution
    response_chars: Distribution
    requests_per_sample: Distribution
    requests: int
    failed_requests: int
    discarded_tokens: int
    guards: Counter[str]
    damaged_lines: int

    @property
    def teacher_share(self) -> float:
        total = self.teacher_tokens + self.student_tokens
        return self.teacher_tokens / total if total else 0.0

    @property
    def teacher_think_share(self) -> float:
        return self.teacher_think_tokens / self.think_tokens if self.think_tokens else 0.0

    @property
    def discarded_per_kept(self) -> float:
        total = self.teacher_tokens + self.student_tokens
        return self.discarded_tokens / total if total else 0.0


def _reason(failure: dict[str, Any]) -> str:
    return str(failure.get("failure") or "unknown").split(":", 1)[0].strip() or "unknown"


def run_stats(run: Run) -> RunStats:
    teacher = student = teacher_think = think = requests = failed_requests = discarded = 0
    switches: list[float] = []
    tokens: list[float] = []
    chars: list[float] = []
    per_sample_requests: list[float] = []
    guards: Counter[str] = Counter()
    for r in run.records:
        st = r.get("stats") or {}
        teacher += int(st.get("teacher_tokens", 0))
        student += int(st.get("student_tokens", 0))
        requests += int(st.get("requests", 0))
        failed_requests += int(st.get("failed_requests", 0))
        discarded += int(st.get("discarded_tokens", 0))
        switches.append(float(st.get("switches", 0)))
        tokens.append(float(st.get("teacher_tokens", 0)) + float(st.get("student_tokens", 0)))
        per_sample_requests.append(float(st.get("requests", 0)))
        guards.update(str(g) for g in st.get("guards", ()))
        chars.append(float(len(assistant_text(r))))
        for span in r.get("spans") or ():
            if span.get("phase") == "think":
                n = int(span.get("tokens", 0))
                think += n
                if span.get("source") == "teacher":
                    teacher_think += n
    for f in run.failures.values():  # failed samples cost requests too
        st = f.get("stats") or {}
        requests += int(st.get("requests", 0))
        failed_requests += int(st.get("failed_requests", 0))
        discarded += int(st.get("discarded_tokens", 0))
        guards.update(str(g) for g in st.get("guards", ()))
    return RunStats(
        name=run.name,
        mode=run.mode,
        samples=len(run.records),
        failed=len(run.failures),
        failures_by_reason=Counter(_reason(f) for f in run.failures.values()),
        teacher_tokens=teacher,
        student_tokens=student,
        teacher_think_tokens=teacher_think,
        think_tokens=think,
        switches=Distribution.of(switches),
        response_tokens=Distribution.of(tokens),
        response_chars=Distribution.of(chars),
        requests_per_sample=Distribution.of(per_sample_requests),
        requests=requests,
        failed_requests=failed_requests,
        discarded_tokens=discarded,
        guards=guards,
        damaged_lines=run.damaged_lines,
    )


def assistant_text(record: dict[str, Any]) -> str:
    """The stored assistant message (thinking and answer, in the student's format)."""
    messages = record.get("messages") or []
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        return str(messages[-1].get("content", ""))
    return ""


def thinking_text(record: dict[str, Any]) -> str:
    """The thinking of a record, from its spans."""
    return "".join(str(s.get("text", "")) for s in record.get("spans") or () if s.get("phase") == "think")


def prompt_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation the response answers (everything before the assistant message)."""
    messages = [m for m in record.get("messages") or () if isinstance(m, dict)]
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    return [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in messages]
