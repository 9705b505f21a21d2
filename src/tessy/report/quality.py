"""What a report says of a run's answers and of what an export would keep, per mode, summed one
record at a time: pass rates (of judged answers only; answers that could not be judged and
records never verified are counted apart), pass@1 and pass@n where a prompt has several samples,
guard counts, and how many records an export with the default filters keeps.

Samples of one prompt: records with a ``prompt_id`` field share it; otherwise an id ``ID#k`` is
sample ``k`` of prompt ``ID``, and an id without ``#`` is a prompt's only sample. Memory: a
counter pair per prompt (under an 8-byte hash of its id), the same order as the ids a report
keeps anyway.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..export.filters import Verdicts, guarded
from ..records import Record
from .sampling import id_priority

__all__ = ["ModeQuality", "PassAt", "prompt_key"]


def prompt_key(record: Record) -> str:
    """The prompt a record is a sample of."""
    if record.prompt_id is not None:
        return record.prompt_id
    given = record.fields.get("prompt_id")  # written by hand or by another tool
    if isinstance(given, (str, int)) and not isinstance(given, bool):
        return str(given)
    head, sep, _ = record.id.rpartition("#")
    return head if sep else record.id


@dataclass(frozen=True)
class PassAt:
    """Pass@1 and pass@n over the prompts with at least one judged sample."""

    prompts: int
    #: Judged samples per prompt: the fewest and the most.
    min_n: int
    max_n: int
    #: The mean, over prompts, of the share of its judged samples that passed.
    pass_at_1: float
    #: The share of prompts with at least one passing sample among its judged ones.
    pass_at_n: float


@dataclass
class ModeQuality:
    """The answers of one mode of one run."""

    mode: str
    records: int = 0
    verdicts: Verdicts = field(default_factory=Verdicts)
    #: Records in which each guard fired, and records in which any did.
    guards: Counter[str] = field(default_factory=Counter)
    guarded: int = 0
    #: Records an export with the default filters keeps (no guard fired, not rejected).
    export_keeps: int = 0
    _prompts: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def add(self, record: Record) -> None:
        self.records += 1
        self.verdicts.add(record)
        self.guards.update(set(record.stats.guards))
        if guarded(record):
            self.guarded += 1
        elif record.kept is not False:  # rejection sampling's unkept samples are left out too
            self.export_keeps += 1
        v = record.verification
        if v is not None and v.passed is not None:
            counts = self._prompts.setdefault(id_priority(prompt_key(record)), [0, 0])
            counts[0] += 1
            counts[1] += v.passed

    def pass_at(self) -> PassAt | None:
        """Pass@1 and pass@n, or ``None`` when no answer was judged."""
        judged = [c for c in self._prompts.values() if c[0]]
        if not judged:
            return None
        ns = [n for n, _ in judged]
        return PassAt(
            prompts=len(judged),
            min_n=min(ns),
            max_n=max(ns),
            pass_at_1=sum(p / n for n, p in judged) / len(judged),
            pass_at_n=sum(1 for _, p in judged if p) / len(judged),
        )
