"""The data's invariants as code: each rule passes the design's worked example and catches the
defect it is for (the three seen in a demo's output among them)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from tessy import Record, SampleStats, Span, load_config, read_records, synthesize
from tessy.check import check_record, check_run
from tessy.cli import main
from tessy.formats import get_format

OFFLINE = Path(__file__).resolve().parents[1] / "examples" / "offline.yaml"


def record(spans: list[tuple[str, str, str, int]], *, mode: str = "tessy", **stats: int) -> Record:
    """A record as the engine writes one, from (source, phase, text, tokens) spans."""
    made = [Span(s, p, t, n) for s, p, t, n in spans]  # type: ignore[arg-type]
    think = [s for s in made if s.phase == "think"]
    counted = SampleStats(
        teacher_tokens=sum(s.tokens for s in made if s.source == "teacher"),
        student_tokens=sum(s.tokens for s in made if s.source == "student"),
        think_tokens=sum(s.tokens for s in think),
        answer_tokens=sum(s.tokens for s in made if s.phase == "answer"),
        switches=sum(a.source != b.source for a, b in pairwise(think)),
    )
    for key, value in stats.items():
        setattr(counted, key, value)
    thinking = "".join(s.text for s in think)
    answer = "".join(s.text for s in made if s.phase == "answer")
    response = get_format("qwen3").render_response(thinking, answer)
    messages = [{"role": "user", "content": "What is 17 + 25?"}, {"role": "assistant", "content": response}]
    return Record("r", messages, mode, made, counted, "h")


#: The worked example of design.md section 1, as stored.
WORKED = [
    ("student", "think", "Okay, so", 3),
    ("teacher", "think", " 17 + 25 = 42.", 6),
    ("student", "think", " Let me", 2),
    ("teacher", "think", " double-check: 42 - 25 = 17, correct.", 11),
    ("student", "answer", "The answer is 42.", 5),
]


def rules(rec: Record) -> list[str]:
    return [v.rule for v in check_record(rec, markers=("</think>",), student_format=get_format("qwen3"))]


def test_the_worked_example_keeps_every_invariant():
    assert rules(record(WORKED)) == []


def test_a_switch_inside_a_word_is_caught():
    split = [("student", "think", "Okay, so 4", 4), ("teacher", "think", "096 is a four-digit number.", 7)]
    assert rules(record([*split, ("student", "answer", "Yes.", 2)])) == ["word_split"]


@pytest.mark.parametrize("tail", ["<", "</", "</thin"])
def test_thinking_that_ends_in_a_fragment_of_the_end_marker_is_caught(tail: str):
    spans = [("student", "think", "Okay, so", 3), ("teacher", "think", f" 17 + 25 = 42.\n{tail}", 8)]
    assert rules(record([*spans, ("student", "answer", "42.", 2)])) == ["marker_in_thinking"]


def test_an_answer_that_writes_think_tags_again_is_caught():
    spans = [*WORKED[:-1], ("student", "answer", "42.\n</think>\nSo the answer is 42.", 9)]
    assert rules(record(spans)) == ["markup_in_answer"]


def test_two_spans_of_one_role_in_a_row_and_a_teacher_start_are_caught():
    spans = [
        ("teacher", "think", "17 + 25 = 42. ", 6),
        ("teacher", "think", "Done.", 2),
        ("student", "answer", "42", 1),
    ]
    assert sorted(set(rules(record(spans)))) == ["alternation"]


def test_each_modes_rules_on_who_writes_what():
    teacher_only = [("teacher", "think", "17 + 25 = 42.", 6), ("student", "answer", "42", 1)]
    assert rules(record(teacher_only, mode="teacher-only")) == ["mode"]
    assert rules(record(teacher_only, mode="teacher-think")) == []


def test_counters_that_disagree_with_the_spans_are_caught():
    assert rules(record(WORKED, teacher_tokens=99)) == ["stats"]
    assert rules(record(WORKED, switches=7)) == ["stats"]


def test_an_assistant_message_that_is_not_the_spans_is_caught():
    rec = record(WORKED)
    rec.messages[-1]["content"] = rec.messages[-1]["content"].replace("42.", "43.", 1)
    assert rules(rec) == ["spans"]


def test_a_run_is_checked_with_its_formats_and_the_cli_exits_non_zero_on_a_violation(tmp_path: Path, capsys):
    out = tmp_path / "run.jsonl"
    synthesize(load_config(OFFLINE, [f"data.output={out}"]))
    result = check_run(out)
    assert result.ok and result.records == 5
    assert main(["check", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[0])
    bad["spans"][0]["text"] += " </think> "
    out.write_text("\n".join([json.dumps(bad), *lines[1:]]) + "\n", encoding="utf-8")
    assert check_run(out).by_rule["marker_in_thinking"] == 1
    assert main(["check", str(out)]) == 1
    assert "VIOLATIONS" in capsys.readouterr().out


def test_an_answer_that_writes_think_tags_again_ends_there(tmp_path: Path):
    """A small student writes </think> again in its answer (5 of 18 did on the demo's prompts):
    the think tags are stop strings of the answer, so the stored answer ends before them."""
    out = tmp_path / "run.jsonl"
    overrides = [f"data.output={out}", 'student.answers=["The answer is 42.\\n</think>\\nSo, wait: 42."]']
    synthesize(load_config(OFFLINE, overrides))
    result = check_run(out)
    assert result.ok and result.records == 5, result.by_rule
    for rec in read_records(out):
        assert rec.answer.rstrip() == "The answer is 42."
