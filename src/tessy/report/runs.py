"""Runs as a report sees them: the records of an output file, its failures and its config, and
the figures of each run (who wrote how much, switches, lengths, requests, failures).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import sidecar_paths
from ..records import FailureRecord, Record, RunStats, read_failures, read_records

__all__ = ["Distribution", "Run", "RunFigures", "load_run", "run_figures", "run_stats"]

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One output file: its records (in file order), failures (by id) and resolved config."""

    name: str
    path: Path
    records: list[Record]
    failures: dict[str, FailureRecord] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    damaged_lines: int = 0

    @property
    def mode(self) -> str:
        modes = Counter(r.mode or "?" for r in self.records)
        if modes:
            return modes.most_common(1)[0][0]
        return str((self.config or {}).get("mode", "?"))

    @property
    def by_id(self) -> dict[str, Record]:
        return {r.id: r for r in self.records}

    @property
    def student_format(self) -> str | None:
        student = (self.config or {}).get("student")
        return str(student["format"]) if isinstance(student, dict) and "format" in student else None


def load_run(path: Path, name: str | None = None) -> Run:
    """Read a run's output file and, where they exist, its failure and config sidecars."""
    damaged: list[int] = []
    records = list(read_records(path, damaged=damaged))
    failed_path, config_path = sidecar_paths(path)
    failures: dict[str, FailureRecord] = {}
    if failed_path.is_file():
        done = {r.id for r in records}
        for f in read_failures(failed_path):
            if f.id not in done:  # failed once, then done on a retry: not a failure
                failures[f.id] = f  # the last attempt wins
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
class RunFigures:
    """What the report shows of one run: its counters and, per finished sample, distributions."""

    name: str
    mode: str
    stats: RunStats
    switches: Distribution
    response_tokens: Distribution
    response_chars: Distribution
    requests_per_sample: Distribution
    damaged_lines: int


def run_stats(run: Run) -> RunStats:
    """The counters of a run: its records and its failures (failed samples cost requests too)."""
    stats = RunStats()
    for record in run.records:
        stats.add(record)
    for failure in run.failures.values():
        stats.add(failure)
    return stats


def run_figures(run: Run) -> RunFigures:
    records = run.records
    return RunFigures(
        name=run.name,
        mode=run.mode,
        stats=run_stats(run),
        switches=Distribution.of([float(r.stats.switches) for r in records]),
        response_tokens=Distribution.of([float(r.stats.total_tokens) for r in records]),
        response_chars=Distribution.of([float(len(r.response or "")) for r in records]),
        requests_per_sample=Distribution.of([float(r.stats.requests) for r in records]),
        damaged_lines=run.damaged_lines,
    )
