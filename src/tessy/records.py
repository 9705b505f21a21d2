"""Value types that flow through tessy: samples in, spans and results out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Failure",
    "Message",
    "Mode",
    "Phase",
    "Sample",
    "SampleResult",
    "SampleStats",
    "Source",
    "Span",
]

Source = Literal["teacher", "student"]
Phase = Literal["think", "answer"]
Message = dict[str, str]


class Mode(str, enum.Enum):
    """Who writes the thinking and who writes the answer."""

    TESSY = "tessy"
    TEACHER_ONLY = "teacher-only"
    STUDENT_ONLY = "student-only"
    TEACHER_THINK = "teacher-think"
    TEACHER_ANSWER = "teacher-answer"
    TESSY_TEACHER_ANSWER = "tessy-teacher-answer"

    @property
    def thinker(self) -> Source | None:
        """The role that writes all the thinking, or ``None`` when the two cooperate."""
        return _THINKER[self]

    @property
    def answerer(self) -> Source:
        return _ANSWERER[self]

    @property
    def roles(self) -> tuple[Source, ...]:
        """The roles this mode uses."""
        used = {self.answerer} | ({self.thinker} if self.thinker else {"teacher", "student"})
        return tuple(r for r in ("teacher", "student") if r in used)


_THINKER: dict[Mode, Source | None] = {
    Mode.TESSY: None,
    Mode.TEACHER_ONLY: "teacher",
    Mode.STUDENT_ONLY: "student",
    Mode.TEACHER_THINK: "teacher",
    Mode.TEACHER_ANSWER: "student",
    Mode.TESSY_TEACHER_ANSWER: None,
}
_ANSWERER: dict[Mode, Source] = {
    Mode.TESSY: "student",
    Mode.TEACHER_ONLY: "teacher",
    Mode.STUDENT_ONLY: "student",
    Mode.TEACHER_THINK: "student",
    Mode.TEACHER_ANSWER: "teacher",
    Mode.TESSY_TEACHER_ANSWER: "teacher",
}


@dataclass(frozen=True, slots=True)
class Span:
    """A maximal run of text written by one role in one phase."""

    source: Source
    phase: Phase
    text: str
    tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "phase": self.phase, "text": self.text, "tokens": self.tokens}


@dataclass(frozen=True, slots=True)
class Sample:
    """One prompt to synthesise a response for.

    ``messages`` is the conversation up to (and including) the user turn to answer;
    ``fields`` are the other input fields, kept in the output record.
    """

    id: str
    messages: list[Message]
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_prompt(cls, id: str, prompt: str, **fields: Any) -> Sample:
        return cls(id=id, messages=[{"role": "user", "content": prompt}], fields=dict(fields))


@dataclass(slots=True)
class SampleStats:
    """Per-sample counters. Token counts are in each role's own tokenizer."""

    teacher_tokens: int = 0
    student_tokens: int = 0
    switches: int = 0
    requests: int = 0
    failed_requests: int = 0
    #: Requests that failed (an error, a broken stream, an unproven end) and were tried again;
    #: nothing of them is in the record.
    retried_requests: int = 0
    discarded_tokens: int = 0
    #: Requests whose prompt did not extend the same role's previous prompt (a prefix-cache miss).
    prefix_misses: int = 0
    think_tokens: int = 0
    answer_tokens: int = 0
    guards: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.teacher_tokens + self.student_tokens

    @property
    def teacher_share(self) -> float:
        total = self.total_tokens
        return self.teacher_tokens / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher_tokens": self.teacher_tokens,
            "student_tokens": self.student_tokens,
            "switches": self.switches,
            "requests": self.requests,
            "failed_requests": self.failed_requests,
            "retried_requests": self.retried_requests,
            "discarded_tokens": self.discarded_tokens,
            "prefix_misses": self.prefix_misses,
            "think_tokens": self.think_tokens,
            "answer_tokens": self.answer_tokens,
            "teacher_share": round(self.teacher_share, 4),
            "guards": list(self.guards),
            "wall_s": round(self.wall_s, 3),
        }


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a sample (or an input line) failed: a short ``kind`` to count by (``token_budget``,
    ``repetition``, ``request_failures``, ``bad_input``...) and a ``detail`` for people."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind

    @classmethod
    def parse(cls, text: str) -> Failure:
        """A failure from its text form ``kind: detail`` (as failure files hold it)."""
        kind, sep, detail = text.partition(":")
        if not sep or not kind.strip() or " " in kind.strip():
            return cls("unknown", text.strip())
        return cls(kind.strip(), detail.strip())

    def startswith(self, prefix: str | tuple[str, ...]) -> bool:
        """Whether the text form starts with ``prefix`` (``failure.startswith("token_budget")``)."""
        return str(self).startswith(prefix)


@dataclass(slots=True)
class SampleResult:
    """What the engine made of one sample: a response, or a failure with its reason."""

    sample: Sample
    spans: list[Span]
    stats: SampleStats
    response: str | None
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def thinking(self) -> str:
        return "".join(s.text for s in self.spans if s.phase == "think")

    @property
    def answer(self) -> str:
        return "".join(s.text for s in self.spans if s.phase == "answer")
