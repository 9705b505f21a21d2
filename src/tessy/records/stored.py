"""Records as the files of a run hold them: one JSON form each, read back tolerantly.

``OUT.jsonl`` holds a :class:`Record` a line; ``OUT.failed.jsonl`` a :class:`FailureRecord` a line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..jsonl import iter_jsonl, skip_line
from .sample import Failure, Message, Mode, SampleResult, SampleStats, Span, WithSpans, _str

__all__ = ["RESERVED", "FailureRecord", "Record", "Verification", "read_failures", "read_records"]

#: Fields a record sets itself; input fields of these names are kept under ``"input"``.
RESERVED = frozenset(
    {
        "id",
        "messages",
        "spans",
        "stats",
        "config_hash",
        "mode",
        "input",
        "failure",
        "response",
        "verification",
        "prompt_id",
        "seed",
        "kept",
    }
)


@dataclass(frozen=True, slots=True)
class Verification:
    """What a verifier said of a record's answer.

    ``passed`` is ``True`` or ``False`` for an answer that was judged, and ``None`` when it could
    not be judged (the sandbox did not start, the input has no reference): an infrastructure
    failure or missing data is never counted as a wrong answer. ``score`` is the verifier's
    graded score where it has one (e.g. the share of tests passed); ``detail`` says why, briefly.
    """

    kind: str
    passed: bool | None
    score: float | None = None
    detail: str = ""

    @property
    def judged(self) -> bool:
        """Whether the answer was judged at all (``passed`` is not ``None``)."""
        return self.passed is not None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "passed": self.passed, "score": self.score, "detail": self.detail}

    @classmethod
    def from_json(cls, obj: Any) -> Verification:
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise ValueError("'verification' is not an object with a string 'kind'")
        passed = obj.get("passed")
        if passed is not None and not isinstance(passed, bool):
            raise ValueError("'verification.passed' is not true, false or null")
        score = obj.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise ValueError("'verification.score' is not a number")
        return cls(obj["kind"], passed, None if score is None else float(score), str(obj.get("detail") or ""))


def _id(obj: dict[str, Any]) -> str:
    value = obj.get("id")
    if value is None or isinstance(value, (bool, dict, list)):
        raise ValueError("no 'id'")
    return str(value)


def _optional(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"'{key}' is not a {kind.__name__}")
    return value


def _messages(value: Any) -> list[Message]:
    if not isinstance(value, list):
        raise ValueError("'messages' is not a list")
    out: list[Message] = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError("a message is not an object with string 'role' and 'content'")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _spans(value: Any) -> list[Span]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("'spans' is not a list")
    return [Span.from_json(s) for s in value]


@dataclass(frozen=True)
class Record(WithSpans):
    """A finished sample as ``OUT.jsonl`` holds it.

    ``messages`` are the prompt's messages and the assistant's response (in the student's
    format, thinking included); ``fields`` are the input's other fields, as the input had them.
    """

    id: str
    messages: list[Message]
    mode: str
    spans: list[Span]
    stats: SampleStats
    config_hash: str
    fields: dict[str, Any] = field(default_factory=dict)
    verification: Verification | None = None
    #: With several samples per prompt (``samples_per_prompt``, ``max_attempts``): the prompt's
    #: id (this record's id is ``PROMPT_ID#k``, k its attempt) and the sampling seed it was drawn
    #: with; ``None`` (and absent from the JSON) for a prompt's only sample.
    prompt_id: str | None = None
    seed: int | None = None
    #: With rejection sampling (``keep: first-passing | best``): whether this sample is one the
    #: run keeps for its prompt; ``None`` (absent) when every sample is kept.
    kept: bool | None = None

    @classmethod
    def from_result(cls, result: SampleResult, config_hash: str, mode: Mode | str) -> Record:
        """The record of a finished sample."""
        sample = result.sample
        assistant: Message = {"role": "assistant", "content": result.response or ""}
        return cls(
            id=sample.id,
            messages=[*sample.messages, assistant],
            mode=Mode(mode).value,
            spans=list(result.spans),
            stats=result.stats,
            config_hash=config_hash,
            fields=dict(sample.fields),
            prompt_id=sample.prompt_id,
            seed=sample.seed,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the record, id first, then the kept input fields.

        Input fields named like the record's own (:data:`RESERVED`) go under ``"input"``.
        """
        out: dict[str, Any] = {"id": self.id}
        out.update((k, v) for k, v in self.fields.items() if k not in RESERVED)
        moved = {k: v for k, v in self.fields.items() if k in RESERVED}
        if moved:
            out["input"] = moved
        out["messages"] = [dict(m) for m in self.messages]
        out["mode"] = self.mode
        out["spans"] = [s.to_json() for s in self.spans]
        out["stats"] = self.stats.to_json()
        out["config_hash"] = self.config_hash
        if self.verification is not None:
            out["verification"] = self.verification.to_json()
        for name in ("prompt_id", "seed", "kept"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Record:
        """A record from its JSON object (``ValueError`` when it is not one). ``id`` and
        ``messages`` are needed; other fields an older file lacks take their defaults."""
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        fields = {k: v for k, v in obj.items() if k not in RESERVED}
        moved = obj.get("input")
        if isinstance(moved, dict):
            fields.update(moved)
        elif moved is not None:
            fields["input"] = moved  # not written by tessy: keep it as the field it is
        return cls(
            id=_id(obj),
            messages=_messages(obj.get("messages")),
            mode=_str(obj, "mode"),
            spans=_spans(obj.get("spans")),
            stats=SampleStats.from_json(obj.get("stats")),
            config_hash=_str(obj, "config_hash"),
            fields=fields,
            verification=None if obj.get("verification") is None else Verification.from_json(obj["verification"]),
            prompt_id=_optional(obj, "prompt_id", str),
            seed=_optional(obj, "seed", int),
            kept=_optional(obj, "kept", bool),
        )

    @property
    def response(self) -> str | None:
        """The assistant message (thinking and answer, in the student's format), if there is one."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]["content"]
        return None

    @property
    def prompt(self) -> list[Message]:
        """The conversation the response answers (the messages before the assistant's)."""
        return self.messages[:-1] if self.response is not None else list(self.messages)


@dataclass(frozen=True)
class FailureRecord:
    """A line of ``OUT.failed.jsonl``: a sample that failed (with what it had done so far), or,
    with ``raw`` set, an input line (or row) that was no sample, keyed ``FILE:LINE``."""

    id: str
    failure: Failure
    config_hash: str = ""
    messages: list[Message] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)
    mode: str = ""
    spans: list[Span] = field(default_factory=list)
    stats: SampleStats = field(default_factory=SampleStats)
    raw: str | None = None

    @classmethod
    def from_result(cls, result: SampleResult, config_hash: str, mode: Mode | str) -> FailureRecord:
        """The failure record of a sample that failed."""
        sample = result.sample
        return cls(
            id=sample.id,
            failure=result.failure or Failure("unknown"),
            config_hash=config_hash,
            messages=list(sample.messages),
            fields=dict(sample.fields),
            mode=Mode(mode).value,
            spans=list(result.spans),
            stats=result.stats,
        )

    @classmethod
    def bad_input(cls, key: str, error: str, raw: str, config_hash: str, kind: str = "bad_input") -> FailureRecord:
        """The failure record of an input line that could not be read as a sample (``kind``:
        ``bad_input``, or ``duplicate_id`` for a second line with an id seen before)."""
        return cls(id=key, failure=Failure(kind, error), config_hash=config_hash, raw=raw)

    def to_json(self) -> dict[str, Any]:
        if self.raw is not None:
            return {"id": self.id, "failure": str(self.failure), "raw": self.raw, "config_hash": self.config_hash}
        return {
            "id": self.id,
            "failure": str(self.failure),
            "messages": [dict(m) for m in self.messages],
            "fields": self.fields,
            "mode": self.mode,
            "spans": [s.to_json() for s in self.spans],
            "stats": self.stats.to_json(),
            "config_hash": self.config_hash,
        }

    @classmethod
    def from_json(cls, obj: Any) -> FailureRecord:
        """A failure record from its JSON object (``ValueError`` when it is not one); only ``id``
        is needed (a missing reason is ``unknown``)."""
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        fields = obj.get("fields") or {}
        if not isinstance(fields, dict):
            raise ValueError("'fields' is not an object")
        raw = obj.get("raw")
        return cls(
            id=_id(obj),
            failure=Failure.parse(str(obj.get("failure") or "unknown")),
            config_hash=_str(obj, "config_hash"),
            messages=_messages(obj.get("messages") or []),
            fields=fields,
            mode=_str(obj, "mode"),
            spans=_spans(obj.get("spans")),
            stats=SampleStats.from_json(obj.get("stats")),
            raw=None if raw is None else str(raw),
        )


_R = TypeVar("_R", Record, FailureRecord)


def _read(path: Path, parse: Callable[[Any], _R], damaged: list[int] | None, missing_ok: bool) -> Iterator[_R]:
    for line_no, obj in iter_jsonl(path, missing_ok=missing_ok, damaged=damaged):
        try:
            yield parse(obj)
        except ValueError as exc:
            skip_line(path, line_no, f"not a record: {exc}", damaged)


def read_records(path: Path, *, damaged: list[int] | None = None, missing_ok: bool = False) -> Iterator[Record]:
    """The records of an output file, lazily. Lines that are no record are skipped with a
    warning; their numbers are added to ``damaged`` when it is given."""
    return _read(path, Record.from_json, damaged, missing_ok)


def read_failures(path: Path, *, damaged: list[int] | None = None, missing_ok: bool = False) -> Iterator[FailureRecord]:
    """The failure records of a failure file, lazily (as :func:`read_records`)."""
    return _read(path, FailureRecord.from_json, damaged, missing_ok)
