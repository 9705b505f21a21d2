"""The invariants every stored record keeps (design.md section 1), written as code.

:func:`check_record` returns the rules a record breaks; :func:`check_run` reads a run's output
(and its config, for the roles' formats) and counts violations per rule. ``tessy check`` prints
them and exits non-zero on any; the tests run every real-model output through it.

The rules:

- ``word_split``: no switch inside a word: at no hand-over in the thinking does a letter or
  digit end the text before and another begin the text after (``4`` | ``096``); not for
  ``rsd``, which hands over token by token;
- ``spans``: the stored assistant message holds exactly the spans' thinking and answer (in the
  student's format, where it can be rendered here);
- ``marker_in_thinking``: the thinking holds no end-of-thinking marker of either role's format,
  nor ends in a fragment of one (``<``, ``</thi``, ``assistant`` of ``assistantfinal``...);
- ``markup_in_answer``: the answer holds no thinking or channel markup;
- ``alternation``: within the thinking, spans alternate roles, and in the cooperative modes the
  first is the student's;
- ``mode``: each mode's rules on who writes what (teacher-only: the teacher writes all, ...;
  teacher-score keeps the first best-scored student candidate, RSD's student writes one token
  per replaced teacher token, a teacher-mix sample is one role's);
- ``stats``: the counters agree with the spans (tokens per role and phase, switches).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from .errors import TessyError
from .formats import Format, get_format
from .records import Mode, Record, read_records

__all__ = ["RULES", "CheckResult", "Violation", "check_record", "check_run", "end_markers"]

RULES = ("word_split", "spans", "marker_in_thinking", "markup_in_answer", "alternation", "mode", "stats")

#: Markup that never belongs in an answer, whatever the formats.
_ANSWER_MARKUP = ("<think>", "</think>", "<|channel|>", "<|message|>", "<|start|>", "<|end|>", "<|im_start|>")
#: End-of-thinking markers when a run's config does not name its formats.
_DEFAULT_MARKERS = ("</think>",)


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str


@dataclass
class CheckResult:
    """What :func:`check_run` found: records read, violations by rule, the first few examples."""

    path: Path
    records: int = 0
    damaged_lines: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, Violation]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.by_rule


def end_markers(formats: Iterable[Format]) -> tuple[str, ...]:
    """Every end-of-thinking marker of the given formats (``</think>`` when none is given)."""
    return tuple(dict.fromkeys(m for f in formats for m in f.think_stop)) or _DEFAULT_MARKERS


def check_record(
    record: Record, *, markers: Sequence[str] = _DEFAULT_MARKERS, student_format: Format | None = None
) -> list[Violation]:
    """The invariants ``record`` breaks (empty when it keeps them all)."""
    out: list[Violation] = []
    think = [s for s in record.spans if s.phase == "think"]
    answer_spans = [s for s in record.spans if s.phase == "answer"]
    thinking, answer = record.thinking, record.answer

    # RSD hands over at any token the student replaces, inside words too: the rule is TESSY's.
    token_level = record.mode == Mode.RSD.value
    for before, after in pairwise(think):
        if token_level:
            break
        if before.source != after.source and before.text[-1:].isalnum() and after.text[:1].isalnum():
            out.append(Violation("word_split", f"{before.text[-12:]!r} | {after.text[:12]!r}"))

    if [s.phase for s in record.spans] != sorted((s.phase for s in record.spans), key=("think", "answer").index):
        out.append(Violation("spans", "an answer span comes before a thinking span"))
    response = record.response
    if response is None:
        out.append(Violation("spans", "no assistant message"))
    elif student_format is not None:
        expected = student_format.render_response(thinking, answer)
        if response != expected:
            out.append(Violation("spans", "the assistant message is not the spans in the student's format"))
    elif thinking not in response or not response.endswith(answer):
        out.append(Violation("spans", "the assistant message does not hold the spans' thinking and answer"))

    for marker in markers:
        if marker in thinking:
            out.append(Violation("marker_in_thinking", f"{marker!r} in the thinking"))
        else:
            tail = thinking.rstrip()
            fragment = next((marker[:n] for n in range(len(marker) - 1, 0, -1) if tail.endswith(marker[:n])), "")
            if fragment and (len(fragment) > 1 or not fragment.isalnum()):
                out.append(Violation("marker_in_thinking", f"the thinking ends in {fragment!r}, part of {marker!r}"))
    for markup in _ANSWER_MARKUP:
        if markup in answer:
            out.append(Violation("markup_in_answer", f"{markup!r} in the answer"))

    for before, after in pairwise(think):
        if before.source == after.source:
            out.append(Violation("alternation", f"two {before.source} spans in a row"))
            break
    out += _mode_rules(record, think, answer_spans)
    out += _stats_rules(record, think)
    return out


def _mode_rules(record: Record, think: list[Any], answer_spans: list[Any]) -> list[Violation]:
    try:
        mode = Mode(record.mode)
    except ValueError:
        return [Violation("mode", f"unknown mode {record.mode!r}")]
    if mode.is_method:
        return _method_rules(record, mode, think, answer_spans)
    out: list[Violation] = []
    if mode.thinker is None:
        if think and think[0].source != "student":
            out.append(Violation("alternation", "the cooperative thinking does not start with the student"))
    elif any(s.source != mode.thinker for s in think):
        out.append(Violation("mode", f"{mode.value}: the thinking is not all the {mode.thinker}'s"))
    if any(s.source != mode.answerer for s in answer_spans):
        out.append(Violation("mode", f"{mode.value}: the answer is not all the {mode.answerer}'s"))
    if not answer_spans:
        out.append(Violation("mode", "no answer"))
    return out


def _method_rules(record: Record, mode: Mode, think: list[Any], answer_spans: list[Any]) -> list[Violation]:
    """The comparison modes: teacher-score and teacher-reference are the student's alone,
    student-select the teacher's, a teacher-mix sample one role's; a chosen candidate is the
    first of the best scores; RSD's student writes only where a teacher token was replaced."""
    out: list[Violation] = []
    stats = record.stats
    sources = {s.source for s in record.spans}
    name = mode.value
    if mode is Mode.TEACHER_MIX:
        if len(sources) > 1:
            out.append(Violation("mode", f"{name}: a sample holds both roles' text, not one's"))
    elif mode is Mode.RSD:
        if stats.student_tokens > stats.replaced_tokens:
            out.append(
                Violation(
                    "mode",
                    f"{name}: the student wrote {stats.student_tokens} tokens for "
                    f"{stats.replaced_tokens} replaced teacher tokens (one each)",
                )
            )
        if stats.teacher_tokens > stats.proposed_tokens:
            out.append(Violation("mode", f"{name}: more teacher tokens kept than proposed"))
    elif sources - {mode.thinker}:
        out.append(Violation("mode", f"{name}: the response is not all the {mode.thinker}'s"))
    if mode in (Mode.TEACHER_SCORE, Mode.STUDENT_SELECT):
        scores = stats.candidate_scores
        if stats.candidates < 1 or len(scores) != stats.candidates:
            out.append(Violation("mode", f"{name}: {stats.candidates} candidates but {len(scores)} scores"))
        elif stats.kept_candidate is None or not 0 <= stats.kept_candidate < len(scores):
            out.append(Violation("mode", f"{name}: no kept candidate"))
        else:
            numbers = [x for x in scores if x is not None]
            kept = scores[stats.kept_candidate]
            first_best = scores.index(max(numbers)) if numbers else None
            if numbers and stats.kept_candidate != first_best:
                out.append(
                    Violation("mode", f"{name}: kept candidate {stats.kept_candidate} ({kept}) is not the first best")
                )
    if mode is Mode.TEACHER_REFERENCE and not stats.reference_in_prompt:
        out.append(Violation("mode", f"{name}: the record does not say its prompt held the reference"))
    if not answer_spans:
        out.append(Violation("mode", "no answer"))
    return out


def _stats_rules(record: Record, think: list[Any]) -> list[Violation]:
    stats, out = record.stats, []
    by_source = Counter[str]()
    for span in record.spans:
        by_source[span.source] += span.tokens
    checks = {
        "teacher_tokens": (stats.teacher_tokens, by_source["teacher"]),
        "student_tokens": (stats.student_tokens, by_source["student"]),
        "think_tokens": (stats.think_tokens, sum(s.tokens for s in think)),
        "answer_tokens": (stats.answer_tokens, sum(s.tokens for s in record.spans if s.phase == "answer")),
        "switches": (stats.switches, sum(a.source != b.source for a, b in pairwise(think))),
    }
    for name, (stated, counted) in checks.items():
        if stated != counted:
            out.append(Violation("stats", f"stats.{name} is {stated}, the spans give {counted}"))
    return out


def _role_format(role: Any) -> Format | None:
    """A role's format from a run's stored config (``None`` where it needs a tokenizer)."""
    if not isinstance(role, dict) or not isinstance(role.get("format"), str):
        return None
    try:
        return get_format(role["format"], system_prompt=role.get("system_prompt"), options=role.get("format_options"))
    except TessyError:
        return None


def check_run(path: Path, *, examples: int = 5) -> CheckResult:
    """Check every record of a run's output against the invariants (the formats come from the
    ``OUT.config.json`` beside it, where there is one)."""
    from .data import sidecar_paths

    result = CheckResult(path)
    config_path = sidecar_paths(path)[1]
    markers: tuple[str, ...] = _DEFAULT_MARKERS
    student: Format | None = None
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8")).get("config") or {}
        except (OSError, ValueError, AttributeError):
            config = {}
        teacher_fmt, student = _role_format(config.get("teacher")), _role_format(config.get("student"))
        markers = end_markers(f for f in (teacher_fmt, student) if f is not None)
        for role in ("teacher", "student"):  # a template format's own marker, without its tokenizer
            options = (config.get(role) or {}).get("format_options") or {}
            if isinstance(options, dict) and isinstance(options.get("think_close"), str):
                markers += (options["think_close"],)
    damaged: list[int] = []
    for record in read_records(path, damaged=damaged):
        result.records += 1
        for violation in check_record(record, markers=markers, student_format=student):
            result.by_rule[violation.rule] += 1
            if len(result.examples) < examples:
                result.examples.append((record.id, violation))
    result.damaged_lines = len(damaged)
    return result
