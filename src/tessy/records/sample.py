"""A sample and what the engine made of it: its spans, counters and failure, in memory."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "COST_COUNTERS",
    "Failure",
    "Message",
    "Mode",
    "Phase",
    "Sample",
    "SampleResult",
    "SampleStats",
    "Source",
    "Span",
    "add_costs",
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
    #: The student writes N candidates (student-only), the teacher scores each, the best is kept.
    TEACHER_SCORE = "teacher-score"
    #: The teacher writes a response; the student then writes its own with it as a reference.
    TEACHER_REFERENCE = "teacher-reference"
    #: Each sample is teacher-only or student-only, chosen by its id (1:1 by default).
    TEACHER_MIX = "teacher-mix"
    #: Reverse speculative decoding: the teacher proposes each token, the student keeps it if it
    #: finds it likely enough, else writes that position itself.
    RSD = "rsd"
    #: The teacher writes N candidates (teacher-only); the one the student finds most likely is kept.
    STUDENT_SELECT = "student-select"

    @property
    def is_method(self) -> bool:
        """Whether this mode is one of the comparison methods built from whole runs of the basic
        modes or token by token (``tessy.engine.methods``) rather than the turn-taking loop."""
        return self in _METHODS

    @property
    def needs_student_scores(self) -> bool:
        """Whether the mode needs the student's log-probabilities of given text."""
        return self in (Mode.RSD, Mode.STUDENT_SELECT)

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
        if self in _METHODS:
            return ("teacher", "student")
        used = {self.answerer} | ({self.thinker} if self.thinker else {"teacher", "student"})
        return tuple(r for r in ("teacher", "student") if r in used)


_THINKER: dict[Mode, Source | None] = {
    Mode.TESSY: None,
    Mode.TEACHER_ONLY: "teacher",
    Mode.STUDENT_ONLY: "student",
    Mode.TEACHER_THINK: "teacher",
    Mode.TEACHER_ANSWER: "student",
    Mode.TESSY_TEACHER_ANSWER: None,
    Mode.TEACHER_SCORE: "student",
    Mode.TEACHER_REFERENCE: "student",
    Mode.TEACHER_MIX: None,  # per sample: all the teacher's or all the student's
    Mode.RSD: None,
    Mode.STUDENT_SELECT: "teacher",
}
_ANSWERER: dict[Mode, Source] = {
    Mode.TESSY: "student",
    Mode.TEACHER_ONLY: "teacher",
    Mode.STUDENT_ONLY: "student",
    Mode.TEACHER_THINK: "student",
    Mode.TEACHER_ANSWER: "teacher",
    Mode.TESSY_TEACHER_ANSWER: "teacher",
    Mode.TEACHER_SCORE: "student",
    Mode.TEACHER_REFERENCE: "student",
    Mode.TEACHER_MIX: "student",  # per sample (see check.py): the thinker's
    Mode.RSD: "student",  # both roles write the answer token by token (see check.py)
    Mode.STUDENT_SELECT: "teacher",
}
_METHODS = frozenset({Mode.TEACHER_SCORE, Mode.TEACHER_REFERENCE, Mode.TEACHER_MIX, Mode.RSD, Mode.STUDENT_SELECT})


@dataclass(frozen=True, slots=True)
class Span:
    """A maximal run of text written by one role in one phase."""

    source: Source
    phase: Phase
    text: str
    tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "phase": self.phase, "text": self.text, "tokens": self.tokens}

    @classmethod
    def from_json(cls, obj: Any) -> Span:
        """A span as a record holds it (``tokens`` may be missing in old files)."""
        if not isinstance(obj, dict):
            raise ValueError("a span is not an object")
        source, phase = obj.get("source"), obj.get("phase")
        if source not in ("teacher", "student"):
            raise ValueError(f"a span's source is {source!r}, not teacher or student")
        if phase not in ("think", "answer"):
            raise ValueError(f"a span's phase is {phase!r}, not think or answer")
        return cls(source, phase, _str(obj, "text"), _int(obj, "tokens"))


@dataclass(frozen=True, slots=True)
class Sample:
    """One prompt to synthesise a response for.

    ``messages`` is the conversation up to (and including) the user turn to answer;
    ``fields`` are the other input fields, kept in the output record. With several samples
    per prompt, ``id`` is ``PROMPT_ID#k``, ``prompt_id`` the prompt's id and ``seed`` the
    sampling seed every request of this sample is sent with (else both ``None``).
    """

    id: str
    messages: list[Message]
    fields: dict[str, Any] = field(default_factory=dict)
    prompt_id: str | None = None
    seed: int | None = None

    @classmethod
    def from_prompt(cls, id: str, prompt: str, **fields: Any) -> Sample:
        return cls(id=id, messages=[{"role": "user", "content": prompt}], fields=dict(fields))


#: The counters of what a sample cost, finished or failed: a run sums them over every sample,
#: and a sample over the runs it made on its behalf (the comparison methods' candidates).
COST_COUNTERS = (
    "requests",
    "failed_requests",
    "retried_requests",
    "discarded_tokens",
    "prefix_misses",
    "glued_handoffs",
    "reported_prompt_tokens",
    "cached_prompt_tokens",
    "score_requests",
    "candidates",
)
#: Counters a record holds only where they are set, so that lines of runs that never set them
#: stay as they were.
_OPTIONAL_COUNTERS = (
    "glued_handoffs",
    "reported_prompt_tokens",
    "cached_prompt_tokens",
    "candidates",
    "score_requests",
    "proposed_tokens",
    "replaced_tokens",
)


def add_costs(into: Any, stats: SampleStats) -> None:
    """Add ``stats``' :data:`COST_COUNTERS` to ``into`` (a run's counters, or a sample's)."""
    for name in COST_COUNTERS:
        setattr(into, name, getattr(into, name) + getattr(stats, name))


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
    #: Hand-overs where the role taking the turn carried on the giver's last word; its text was
    #: dropped and written again after the whitespace the giver showed.
    glued_handoffs: int = 0
    #: Prompt tokens of the requests whose server reported them with ``cached_tokens`` (usage's
    #: ``prompt_tokens_details``), and of those how many its prefix cache served.
    reported_prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    think_tokens: int = 0
    answer_tokens: int = 0
    guards: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    # The comparison methods' counters (``Mode.is_method``); a record holds them only where set.
    #: Whole responses generated to choose from (teacher-score, student-select), or the
    #: teacher's reference response (teacher-reference). Those not kept count as discarded tokens.
    candidates: int = 0
    #: Each candidate's score in the order generated (the teacher's score, or the student's mean
    #: log-probability per token); ``None``: it failed or gave no score.
    candidate_scores: list[float | None] = field(default_factory=list)
    #: Which candidate the record is (the first of the best scores).
    kept_candidate: int | None = None
    #: Requests, of ``requests``, that scored text: the student's log-probabilities of given
    #: text, or the teacher asked for a score.
    score_requests: int = 0
    #: RSD: teacher tokens proposed, and teacher tokens the student found unlikely and replaced.
    proposed_tokens: int = 0
    replaced_tokens: int = 0
    #: teacher-reference: the student wrote with the teacher's response in its prompt; the
    #: record's messages keep the user's prompt as it was given.
    reference_in_prompt: bool = False

    @property
    def total_tokens(self) -> int:
        return self.teacher_tokens + self.student_tokens

    @property
    def teacher_share(self) -> float:
        return ratio(self.teacher_tokens, self.total_tokens)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
        for key in _OPTIONAL_COUNTERS:
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.candidate_scores:
            out["candidate_scores"] = [None if s is None else round(s, 6) for s in self.candidate_scores]
        if self.kept_candidate is not None:
            out["kept_candidate"] = self.kept_candidate
        if self.reference_in_prompt:
            out["reference_in_prompt"] = True
        return out

    @classmethod
    def from_json(cls, obj: Any) -> SampleStats:
        """Counters as a record holds them; a counter missing (an older file) is 0, and the
        derived ``teacher_share`` is computed again, not read."""
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise ValueError("'stats' is not an object")
        guards = obj.get("guards") or []
        if not isinstance(guards, list):
            raise ValueError("'stats.guards' is not a list")
        return cls(
            teacher_tokens=_int(obj, "teacher_tokens"),
            student_tokens=_int(obj, "student_tokens"),
            switches=_int(obj, "switches"),
            requests=_int(obj, "requests"),
            failed_requests=_int(obj, "failed_requests"),
            retried_requests=_int(obj, "retried_requests"),
            discarded_tokens=_int(obj, "discarded_tokens"),
            prefix_misses=_int(obj, "prefix_misses"),
            glued_handoffs=_int(obj, "glued_handoffs"),
            reported_prompt_tokens=_int(obj, "reported_prompt_tokens"),
            cached_prompt_tokens=_int(obj, "cached_prompt_tokens"),
            think_tokens=_int(obj, "think_tokens"),
            answer_tokens=_int(obj, "answer_tokens"),
            guards=[str(g) for g in guards],
            wall_s=_float(obj, "wall_s"),
            candidates=_int(obj, "candidates"),
            candidate_scores=_scores(obj.get("candidate_scores")),
            kept_candidate=None if obj.get("kept_candidate") is None else _int(obj, "kept_candidate"),
            score_requests=_int(obj, "score_requests"),
            proposed_tokens=_int(obj, "proposed_tokens"),
            replaced_tokens=_int(obj, "replaced_tokens"),
            reference_in_prompt=bool(obj.get("reference_in_prompt", False)),
        )


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
        """A failure from its text form ``kind: detail`` or ``kind`` (as failure files hold it)."""
        kind, _, detail = text.partition(":")
        kind = kind.strip()
        if not kind or " " in kind:
            return cls("unknown", text.strip())
        return cls(kind, detail.strip())

    def startswith(self, prefix: str | tuple[str, ...]) -> bool:
        """Whether the text form starts with ``prefix`` (``failure.startswith("token_budget")``)."""
        return str(self).startswith(prefix)


class WithSpans:
    """The thinking and the answer of anything that holds spans (a result, a record)."""

    __slots__ = ()
    spans: list[Span]

    @property
    def thinking(self) -> str:
        return phase_text(self.spans, "think")

    @property
    def answer(self) -> str:
        return phase_text(self.spans, "answer")


@dataclass(slots=True)
class SampleResult(WithSpans):
    """What the engine made of one sample: a response, or a failure with its reason."""

    sample: Sample
    spans: list[Span]
    stats: SampleStats
    response: str | None
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def phase_text(spans: Iterable[Span], phase: Phase) -> str:
    """The text of one phase: its spans joined."""
    return "".join(s.text for s in spans if s.phase == phase)


def ratio(part: float, whole: float) -> float:
    """``part / whole``, or 0 when there is no whole (an empty run, a sample with no tokens)."""
    return part / whole if whole else 0.0


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key, 0)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key!r} is not a whole number")
    return value


def _scores(value: Any) -> list[float | None]:
    if value is None:
        return []
    if not isinstance(value, list) or any(
        v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in value
    ):
        raise ValueError("'candidate_scores' is not a list of numbers or nulls")
    return [None if v is None else float(v) for v in value]


# Readers of stored JSON (here and in .stored): a field's value of the right type, or ValueError.


def _float(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key!r} is not a number")
    return float(value)


def _str(obj: dict[str, Any], key: str, default: str = "") -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is not a string")
    return value
