"""Which records an export keeps: the default leaves out samples a guard cut short; options
keep only verified answers, a minimum teacher share, and one copy of a repeated response.

Each record is judged once, in one pass, and counted under the first filter that leaves it out
(in the order of :data:`FILTERS`), so the counts add up to what was left out.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

from ..records import Record

__all__ = ["FILTERS", "ExportFilters", "RecordFilter", "Verdicts", "guarded"]

#: The filters, in the order a record meets them, with what each leaves out.
FILTERS: dict[str, str] = {
    "rejected": "rejection sampling did not keep the sample (kept: false)",
    "guarded": "a budget or repetition guard fired (the sample was cut short)",
    "not_passed": "the answer did not pass verification (or was not judged, or not verified)",
    "teacher_share": "the teacher wrote less than the minimum share of the tokens",
    "duplicate": "the same prompt and response as a record kept before",
}


def guarded(record: Record) -> bool:
    """Whether a guard fired in this sample (its thinking or answer was cut by a budget)."""
    return bool(record.stats.guards)


@dataclass(frozen=True)
class ExportFilters:
    """What an export keeps. The default keeps every finished sample no guard cut short."""

    #: Keep samples in which a guard fired (by default they are left out).
    include_guarded: bool = False
    #: Keep the samples rejection sampling drew but did not keep (``kept: false``).
    include_rejected: bool = False
    #: Keep only samples whose verification passed (``verification.passed is True``).
    only_passed: bool = False
    #: Keep only samples in which the teacher wrote at least this share of the tokens.
    min_teacher_share: float | None = None
    #: Keep one record of each (prompt, response) pair: the first in the file.
    dedupe: bool = False

    def __post_init__(self) -> None:
        share = self.min_teacher_share
        if share is not None and not 0 <= share <= 1:
            raise ValueError(f"the minimum teacher share is a share, from 0 to 1, not {share}")

    def active(self) -> list[str]:
        """The filters in force (keys of :data:`FILTERS`)."""
        on = {
            "rejected": not self.include_rejected,
            "guarded": not self.include_guarded,
            "not_passed": self.only_passed,
            "teacher_share": self.min_teacher_share is not None,
            "duplicate": self.dedupe,
        }
        return [name for name in FILTERS if on[name]]

    def applied(self) -> list[str]:
        """The filters in force, in words (for the dataset card)."""
        out = []
        if self.include_rejected:
            out.append("samples rejection sampling did not keep are kept too")
        if not self.include_guarded:
            out.append("samples in which a guard fired are left out")
        if self.only_passed:
            out.append("only samples whose answer passed verification are kept")
        if self.min_teacher_share is not None:
            out.append(f"only samples with a teacher token share of at least {self.min_teacher_share:.0%} are kept")
        if self.dedupe:
            out.append("repeated (prompt, response) pairs are kept once")
        return out or ["none: every finished sample is kept"]


@dataclass
class RecordFilter:
    """Applies :class:`ExportFilters` one record at a time and counts what it leaves out."""

    filters: ExportFilters = field(default_factory=ExportFilters)
    kept: int = 0
    #: Records left out, by filter (keys of :data:`FILTERS`).
    left_out: Counter[str] = field(default_factory=Counter)
    #: Of those left out by ``only_passed``: ``failed``, ``not judged`` or ``not verified``.
    not_passed: Counter[str] = field(default_factory=Counter)
    _seen: set[bytes] = field(default_factory=set, repr=False)

    def reason(self, record: Record) -> str | None:
        """The filter that leaves ``record`` out, or ``None`` to keep it (and count either)."""
        why = self._reason(record)
        if why is None:
            self.kept += 1
        else:
            self.left_out[why] += 1
        return why

    def keep(self, record: Record) -> bool:
        return self.reason(record) is None

    def _reason(self, record: Record) -> str | None:
        f = self.filters
        if not f.include_rejected and record.kept is False:
            return "rejected"
        if not f.include_guarded and guarded(record):
            return "guarded"
        if f.only_passed:
            v = record.verification
            if v is None or v.passed is not True:
                self.not_passed["not verified" if v is None else "not judged" if v.passed is None else "failed"] += 1
                return "not_passed"
        if f.min_teacher_share is not None and record.stats.teacher_share < f.min_teacher_share:
            return "teacher_share"
        if f.dedupe:
            key = json.dumps([record.prompt, record.response], ensure_ascii=False, sort_keys=True)
            digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest in self._seen:
                return "duplicate"
            self._seen.add(digest)
        return None

    @property
    def n_left_out(self) -> int:
        return sum(self.left_out.values())

    def summary(self) -> list[str]:
        """What each filter in force left out, in words (none left out is said too)."""
        lines = []
        for name in self.filters.active():
            n = self.left_out.get(name, 0)
            if name == "rejected" and not n:
                continue  # said only of a run that rejection-sampled
            line = f"{n} left out: {FILTERS[name]}"
            if name == "not_passed" and n:
                line += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.not_passed.items())) + ")"
            lines.append(line)
        return lines


@dataclass
class Verdicts:
    """How the answers of some records fared in verification, counted one record at a time."""

    passed: int = 0
    failed: int = 0
    #: Verified, but the answer could not be judged (``passed`` is null): never a wrong answer.
    unjudged: int = 0
    #: Records with no verification at all.
    unverified: int = 0

    def add(self, record: Record) -> None:
        v = record.verification
        if v is None:
            self.unverified += 1
        elif v.passed is None:
            self.unjudged += 1
        elif v.passed:
            self.passed += 1
        else:
            self.failed += 1

    @property
    def judged(self) -> int:
        return self.passed + self.failed

    @property
    def pass_rate(self) -> float | None:
        """The share of judged answers that passed (``None`` when none was judged)."""
        return self.passed / self.judged if self.judged else None

    def describe(self) -> str:
        if not (self.judged or self.unjudged):
            return "not verified"
        rate = f" ({self.pass_rate:.1%})" if self.pass_rate is not None else ""
        parts = [f"{self.passed} of {self.judged} judged answers passed{rate}"]
        if self.unjudged:
            parts.append(f"{self.unjudged} could not be judged")
        if self.unverified:
            parts.append(f"{self.unverified} not verified")
        return "; ".join(parts)
