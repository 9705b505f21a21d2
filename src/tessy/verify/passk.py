"""pass@1 and pass@n of a run, from its records, counted one record at a time.

Records are grouped by prompt (``prompt_id``, else ``id``). Only judged records count
(``verification.passed`` not ``None``); unjudged ones are counted apart.

- ``pass@1``: the mean over prompts of the share of their judged samples that passed (the
  unbiased estimate when every sample was drawn); with ``keep: first-passing`` (drawing stops at
  a pass) only each prompt's first attempt counts, which keeps it unbiased.
- ``pass@n``: the share of prompts with at least one judged sample that passed, ``n`` being
  the samples drawn per prompt at most.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..records import Record

__all__ = ["PassTally", "attempt_index"]


def attempt_index(record: Record) -> int:
    """The sample's index among its prompt's (``ID#k`` gives k; a single sample is 0)."""
    if record.prompt_id is not None and record.id.startswith(record.prompt_id + "#"):
        tail = record.id[len(record.prompt_id) + 1 :]
        if tail.isdigit():
            return int(tail)
    return 0


@dataclass
class PassTally:
    """Verdicts of a run's records, per prompt. ``n`` is the samples drawn per prompt at most;
    ``adaptive`` says that drawing stopped at a pass (``keep: first-passing``)."""

    n: int = 1
    adaptive: bool = False
    kind: str = ""
    passed: int = 0
    failed: int = 0
    unjudged: int = 0
    kept: int = 0
    _prompts: dict[str, list[tuple[int, bool]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, record: Record) -> None:
        v = record.verification
        if record.kept:
            self.kept += 1
        if v is None or v.kind == "none":
            return
        self.kind = self.kind or v.kind
        if v.passed is None:
            self.unjudged += 1
            return
        self.passed += v.passed
        self.failed += not v.passed
        self._prompts[record.prompt_id or record.id].append((attempt_index(record), v.passed))

    @property
    def judged(self) -> int:
        return self.passed + self.failed

    @property
    def pass_rate(self) -> float:
        return self.passed / self.judged if self.judged else 0.0

    @property
    def pass_at_1(self) -> float:
        if not self._prompts:
            return 0.0
        if self.adaptive:
            firsts = [min(attempts)[1] for attempts in self._prompts.values()]
            return sum(firsts) / len(firsts)
        return sum(sum(ok for _, ok in a) / len(a) for a in self._prompts.values()) / len(self._prompts)

    @property
    def pass_at_n(self) -> float:
        if not self._prompts:
            return 0.0
        return sum(any(ok for _, ok in a) for a in self._prompts.values()) / len(self._prompts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "passed": self.passed,
            "failed": self.failed,
            "unjudged": self.unjudged,
            "pass_rate": round(self.pass_rate, 4),
            "prompts": len(self._prompts),
            "n": self.n,
            "pass@1": round(self.pass_at_1, 4),
            **({f"pass@{self.n}": round(self.pass_at_n, 4)} if self.n > 1 else {}),
            "kept": self.kept,
        }
