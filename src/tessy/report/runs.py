"""Runs as a report sees them, each read in one streaming pass: the counters and distributions
of every record, its failures and config, and a bounded sample of its records (see
:mod:`.sampling`); then the figures of each run (who wrote how much, switches, lengths,
requests, failures).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import sidecar_paths
from ..records import FailureRecord, Record, RunStats, read_failures, read_records
from .quality import ModeQuality
from .sampling import SAMPLE_SIZE, Distribution, IdSample, Tally
from .style import StyleCounter, TextTokenizer, word_tokenizer

__all__ = ["Distribution", "Run", "RunDigest", "RunFigures", "load_run", "run_figures", "run_stats"]

logger = logging.getLogger(__name__)


@dataclass
class RunDigest:
    """What a report needs of every record of a run, summed one record at a time. Lengths in
    report tokens and style-word rates are in the tokenizer ``split``."""

    split: TextTokenizer = word_tokenizer
    stats: RunStats = field(default_factory=RunStats)
    modes: Counter[str] = field(default_factory=Counter)
    ids: set[str] = field(default_factory=set)
    switches: Tally = field(default_factory=Tally)
    response_tokens: Tally = field(default_factory=Tally)
    response_chars: Tally = field(default_factory=Tally)
    requests: Tally = field(default_factory=Tally)
    #: The response's length in ``split``'s tokens (the histogram of lengths).
    report_tokens: Tally = field(default_factory=Tally)
    style: StyleCounter = field(default_factory=StyleCounter)
    #: Answers, guards and what an export keeps, by mode.
    quality: dict[str, ModeQuality] = field(default_factory=dict)

    def add(self, record: Record) -> None:
        self.stats.add(record)
        self.modes[record.mode or "?"] += 1
        mode = record.mode or "?"
        self.quality.setdefault(mode, ModeQuality(mode)).add(record)
        self.ids.add(record.id)
        response = record.response or ""
        self.switches.add(record.stats.switches)
        self.response_tokens.add(record.stats.total_tokens)
        self.response_chars.add(len(response))
        self.requests.add(record.stats.requests)
        self.report_tokens.add(len(self.split(response)))
        thinking = record.thinking
        self.style.add(thinking, len(self.split(thinking)))

    @property
    def judged(self) -> int:
        """Records whose answer was judged (``verification.passed`` true or false), all modes."""
        return sum(q.verdicts.judged for q in self.quality.values())

    @property
    def passed(self) -> int:
        return sum(q.verdicts.passed for q in self.quality.values())

    @classmethod
    def of(cls, records: list[Record], failures: dict[str, FailureRecord], split: TextTokenizer) -> RunDigest:
        digest = cls(split)
        for record in records:
            digest.add(record)
        for failure in failures.values():
            digest.stats.add(failure)
        return digest


@dataclass
class Run:
    """One output file as a report holds it: a sample of its records (all of them when the run
    is no larger than the sample; in file order), its failures (by id, reasons and counters
    only), its resolved config, and the digest of every record."""

    name: str
    path: Path
    records: list[Record]
    failures: dict[str, FailureRecord] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    damaged_lines: int = 0
    #: Of every record; ``None`` for a run made in memory (its records are all there is).
    digest: RunDigest | None = None
    #: How many records the sample could hold.
    sample_size: int = SAMPLE_SIZE

    @property
    def mode(self) -> str:
        modes = self.digest.modes if self.digest else Counter(r.mode or "?" for r in self.records)
        if modes:
            return modes.most_common(1)[0][0]
        return str((self.config or {}).get("mode", "?"))

    @property
    def by_id(self) -> dict[str, Record]:
        """The sampled records by id."""
        return {r.id: r for r in self.records}

    @property
    def ids(self) -> set[str]:
        """The ids of every record of the run, sampled or not."""
        return self.digest.ids if self.digest else {r.id for r in self.records}

    @property
    def written(self) -> int:
        return self.digest.stats.written if self.digest else len(self.records)

    @property
    def student_format(self) -> str | None:
        student = (self.config or {}).get("student")
        return str(student["format"]) if isinstance(student, dict) and "format" in student else None

    def digested(self, split: TextTokenizer) -> RunDigest:
        """The digest in tokenizer ``split``: read again (one more pass) if it was made in another."""
        if self.digest is None:
            self.digest = RunDigest.of(self.records, self.failures, split)
        elif self.digest.split is not split:
            logger.info("%s: reading the run again to count in the report's tokenizer", self.name)
            self.digest = load_run(self.path, self.name, tokenizer=split, sample_size=0).digested(split)
        return self.digest


def load_run(
    path: Path,
    name: str | None = None,
    *,
    tokenizer: TextTokenizer | None = None,
    sample_size: int = SAMPLE_SIZE,
    seed: int = 0,
) -> Run:
    """Read a run's output file in one pass, and where they exist its failure and config sidecars.

    Every record is counted (see :class:`RunDigest`; lengths and style words in ``tokenizer``,
    by default words); at most ``sample_size`` records are kept, chosen by a hash of their id
    seeded by ``seed`` (see :class:`.sampling.IdSample`), so runs loaded alike keep the same ids.
    """
    digest = RunDigest(tokenizer or word_tokenizer)
    sample = IdSample(sample_size, seed)
    damaged: list[int] = []
    for record in read_records(path, damaged=damaged):
        digest.add(record)
        sample.offer(record)
    failed_path, config_path = sidecar_paths(path)
    failures: dict[str, FailureRecord] = {}
    if failed_path.is_file():
        for f in read_failures(failed_path):
            if f.id not in digest.ids:  # failed once, then done on a retry: not a failure
                # The last attempt wins; its reason and counters are all a report shows of it.
                failures[f.id] = dataclasses.replace(f, messages=[], fields={}, spans=[], raw=None)
    for failure in failures.values():
        digest.stats.add(failure)
    config = None
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8")).get("config")
        except (OSError, ValueError, AttributeError):
            logger.warning("cannot read %s; the run's config is left out", config_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return Run(name or stem, path, sample.records(), failures, config, len(damaged), digest, sample_size)


@dataclass
class RunFigures:
    """What the report shows of one run: its counters and, per finished sample, distributions
    (over every record), and how many records the report's sample holds."""

    name: str
    mode: str
    stats: RunStats
    switches: Distribution
    response_tokens: Distribution
    response_chars: Distribution
    requests_per_sample: Distribution
    damaged_lines: int
    sampled: int = 0
    #: Answers, guards and what an export keeps, one entry per mode.
    quality: list[ModeQuality] = field(default_factory=list)


def run_stats(run: Run) -> RunStats:
    """The counters of a run: its records and its failures (failed samples cost requests too)."""
    return run.digested(run.digest.split if run.digest else word_tokenizer).stats


def run_figures(run: Run) -> RunFigures:
    d = run.digested(run.digest.split if run.digest else word_tokenizer)
    return RunFigures(
        name=run.name,
        mode=run.mode,
        stats=d.stats,
        switches=d.switches.distribution(),
        response_tokens=d.response_tokens.distribution(),
        response_chars=d.response_chars.distribution(),
        requests_per_sample=d.requests.distribution(),
        damaged_lines=run.damaged_lines,
        sampled=len(run.records),
        quality=list(d.quality.values()),
    )
