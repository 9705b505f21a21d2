"""The record types of tessy, owned here: samples in, spans and results out, and the records
stored for them (design.md section 3) with their one JSON form each, and the run counters
summed from either.

- :class:`Record`: a finished sample, one line of ``OUT.jsonl``.
- :class:`FailureRecord`: a failed sample, or an input line that was no sample, one line of
  ``OUT.failed.jsonl``.
- :class:`RunStats`: the counters of a run, ``add``-ed one result or record at a time (live by
  synthesis, from the files by the report).

Readers are tolerant of older files: a field they lack takes its default. A line that is not a
record at all is skipped (and counted) by :func:`read_records` and :func:`read_failures`.
"""

from .sample import (
    COST_COUNTERS,
    Failure,
    Message,
    Mode,
    Phase,
    Sample,
    SampleResult,
    SampleStats,
    Source,
    Span,
    add_costs,
)
from .stats import RunStats
from .stored import RESERVED, FailureRecord, Record, Verification, read_failures, read_records

__all__ = [
    "COST_COUNTERS",
    "RESERVED",
    "Failure",
    "FailureRecord",
    "Message",
    "Mode",
    "Phase",
    "Record",
    "RunStats",
    "Sample",
    "SampleResult",
    "SampleStats",
    "Source",
    "Span",
    "Verification",
    "add_costs",
    "read_failures",
    "read_records",
]
