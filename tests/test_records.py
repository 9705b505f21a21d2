"""The record types: one JSON form each, byte for byte what earlier versions wrote, read back
tolerantly; and the run counters summed from results or from records alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tessy import Sample, SampleResult, SampleStats, Span
from tessy.records import Failure, FailureRecord, Mode, Record, RunStats, read_failures, read_records

# Lines as tessy wrote them before the record types existed (made by that version's
# OutputStore): old outputs must read back, and new ones must be written, exactly like these.
RECORD_LINE = (
    '{"id": "s1", "source": "web", "level": 2, "input": {"mode": "exam", "input": "raw"}, "messages": '
    '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 17 + 25?"}, '
    '{"role": "assistant", "content": "<think>\\nOkay, so 17 + 25 = 42.\\n</think>\\n\\nThe answer is 42."}], '
    '"mode": "tessy", "spans": [{"source": "student", "phase": "think", "text": "Okay, so", "tokens": 3}, '
    '{"source": "teacher", "phase": "think", "text": " 17 + 25 = 42.", "tokens": 6}, '
    '{"source": "student", "phase": "answer", "text": "The answer is 42.", "tokens": 5}], '
    '"stats": {"teacher_tokens": 6, "student_tokens": 8, "switches": 1, "requests": 3, "failed_requests": 1, "retried_requests": 0, '
    '"discarded_tokens": 4, "prefix_misses": 1, "think_tokens": 9, "answer_tokens": 5, "teacher_share": 0.4286, '
    '"guards": ["thinking_budget"], "wall_s": 0.123}, "config_hash": "cafe"}'
)
FAILURE_LINE = (
    '{"id": "s2", "failure": "request_failures: 4 failed requests: HTTP 503", "messages": '
    '[{"role": "user", "content": "ü?"}], "fields": {"k": 1}, "mode": "tessy", "spans": '
    '[{"source": "student", "phase": "think", "text": "Hmm", "tokens": 1}], "stats": {"teacher_tokens": 0, '
    '"student_tokens": 1, "switches": 0, "requests": 4, "failed_requests": 4, "retried_requests": 0, "discarded_tokens": 0, '
    '"prefix_misses": 0, "think_tokens": 0, "answer_tokens": 0, "teacher_share": 0.0, "guards": ["x"], '
    '"wall_s": 0.0}, "config_hash": "cafe"}'
)
BAD_INPUT_LINE = (
    '{"id": "prompts.jsonl:7", "failure": "bad_input: not valid JSON (Expecting value at column 1)", '
    '"raw": "{oops", "config_hash": "cafe"}'
)


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


def the_worked_example() -> SampleResult:
    sample = Sample(
        id="s1",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 17 + 25?"}],
        fields={"source": "web", "level": 2, "mode": "exam", "input": "raw"},
    )
    spans = [
        Span("student", "think", "Okay, so", 3),
        Span("teacher", "think", " 17 + 25 = 42.", 6),
        Span("student", "answer", "The answer is 42.", 5),
    ]
    stats = SampleStats(
        teacher_tokens=6,
        student_tokens=8,
        switches=1,
        requests=3,
        failed_requests=1,
        discarded_tokens=4,
        prefix_misses=1,
        think_tokens=9,
        answer_tokens=5,
        guards=["thinking_budget"],
        wall_s=0.12345,
    )
    return SampleResult(sample, spans, stats, "<think>\nOkay, so 17 + 25 = 42.\n</think>\n\nThe answer is 42.")


def a_failure() -> SampleResult:
    sample = Sample(id="s2", messages=[{"role": "user", "content": "ü?"}], fields={"k": 1})
    stats = SampleStats(student_tokens=1, requests=4, failed_requests=4, guards=["x"])
    failure = Failure("request_failures", "4 failed requests: HTTP 503")
    return SampleResult(sample, [Span("student", "think", "Hmm", 1)], stats, None, failure=failure)


# -- one JSON form each ------------------------------------------------------------------------


def test_a_record_is_written_exactly_as_before() -> None:
    assert dumps(Record.from_result(the_worked_example(), "cafe", Mode.TESSY).to_json()) == RECORD_LINE


def test_a_failure_and_a_bad_input_line_are_written_exactly_as_before() -> None:
    assert dumps(FailureRecord.from_result(a_failure(), "cafe", "tessy").to_json()) == FAILURE_LINE
    bad = FailureRecord.bad_input("prompts.jsonl:7", "not valid JSON (Expecting value at column 1)", "{oops", "cafe")
    assert dumps(bad.to_json()) == BAD_INPUT_LINE


@pytest.mark.parametrize("line", [RECORD_LINE])
def test_a_record_line_round_trips(line: str) -> None:
    rec = Record.from_json(json.loads(line))
    assert dumps(rec.to_json()) == line
    assert Record.from_json(rec.to_json()) == rec
    assert rec.fields == {"source": "web", "level": 2, "mode": "exam", "input": "raw"}
    assert rec.mode == "tessy" and rec.config_hash == "cafe"
    assert rec.thinking == "Okay, so 17 + 25 = 42." and rec.answer == "The answer is 42."
    assert rec.response is not None and rec.response.startswith("<think>\n")
    assert rec.prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 17 + 25?"}]


@pytest.mark.parametrize("line", [FAILURE_LINE, BAD_INPUT_LINE])
def test_a_failure_line_round_trips(line: str) -> None:
    rec = FailureRecord.from_json(json.loads(line))
    assert dumps(rec.to_json()) == line
    assert FailureRecord.from_json(rec.to_json()) == rec


def test_a_record_from_a_result_round_trips() -> None:
    result = the_worked_example()
    result.stats.wall_s = 1.5  # stored to the millisecond
    rec = Record.from_result(result, "cafe", "tessy")
    assert Record.from_json(rec.to_json()) == rec
    assert rec.fields == result.sample.fields
    failure = FailureRecord.from_result(a_failure(), "cafe", "tessy")
    assert FailureRecord.from_json(failure.to_json()) == failure
    assert failure.failure == Failure("request_failures", "4 failed requests: HTTP 503")


def test_an_old_record_without_newer_fields_parses_with_defaults() -> None:
    old = {
        "id": 7,
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "spans": [{"source": "teacher", "phase": "think", "text": "t"}],
        "stats": {"teacher_tokens": 3, "student_tokens": 1, "switches": 0, "requests": 2, "teacher_share": 0.75},
    }
    rec = Record.from_json(old)
    assert rec.id == "7" and rec.mode == "" and rec.config_hash == "" and rec.fields == {}
    assert rec.spans == [Span("teacher", "think", "t", 0)]
    assert rec.stats == SampleStats(teacher_tokens=3, student_tokens=1, requests=2)
    # Written again, it has every field of today's records.
    assert list(rec.to_json()) == ["id", "messages", "mode", "spans", "stats", "config_hash"]


def test_a_failure_line_with_only_an_id_and_a_reason_parses() -> None:
    rec = FailureRecord.from_json({"id": "c", "failure": "repetition: degenerate repetition"})
    assert rec.failure == Failure("repetition", "degenerate repetition")
    assert rec.stats == SampleStats() and rec.messages == [] and rec.raw is None
    assert FailureRecord.from_json({"id": "d"}).failure.kind == "unknown"


@pytest.mark.parametrize(
    "obj",
    [
        {"messages": []},  # no id
        {"id": "a"},  # no messages
        {"id": "a", "messages": "hi"},
        {"id": "a", "messages": [{"role": "user"}]},
        {"id": "a", "messages": [], "spans": [{"source": "judge", "phase": "think", "text": ""}]},
        {"id": "a", "messages": [], "stats": {"requests": "many"}},
        {"id": "a", "messages": [], "stats": {"requests": 1.5}},
        {"id": "a", "messages": [], "stats": []},
    ],
)
def test_what_is_not_a_record_is_a_value_error(obj: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Record.from_json(obj)


def test_a_failure_without_detail_keeps_its_kind() -> None:
    for failure in (Failure("repetition"), Failure("request_failed", "HTTP 400: too long")):
        assert Failure.parse(str(failure)) == failure
    assert Failure.parse("no kind here") == Failure("unknown", "no kind here")


# -- reading files -----------------------------------------------------------------------------


def test_readers_skip_and_count_lines_that_are_no_record(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(
        RECORD_LINE + '\n{"id": "x"}\n\n{"id": "torn", "mess\n' + RECORD_LINE.replace('"s1"', '"s3"') + "\n",
        encoding="utf-8",
    )
    damaged: list[int] = []
    assert [r.id for r in read_records(path, damaged=damaged)] == ["s1", "s3"]
    assert damaged == [2, 4]
    failed = tmp_path / "out.failed.jsonl"
    failed.write_text(FAILURE_LINE + "\n[1]\n" + BAD_INPUT_LINE + "\n", encoding="utf-8")
    damaged = []
    assert [f.failure.kind for f in read_failures(failed, damaged=damaged)] == ["request_failures", "bad_input"]
    assert damaged == [2]
    assert list(read_records(tmp_path / "none.jsonl", missing_ok=True)) == []


# -- run counters ------------------------------------------------------------------------------


def test_run_stats_add_results_and_records_alike() -> None:
    live, read = RunStats(), RunStats()
    for result in (the_worked_example(), a_failure()):
        live.add(result)
    read.add(Record.from_json(json.loads(RECORD_LINE)))
    read.add(FailureRecord.from_json(json.loads(FAILURE_LINE)))
    read.add(FailureRecord.from_json(json.loads(BAD_INPUT_LINE)))
    expected = RunStats(
        written=1,
        teacher_tokens=6,
        student_tokens=8,
        think_tokens=9,
        teacher_think_tokens=6,
        switches=1,
        requests=3 + 4,
        failed_requests=1 + 4,
        discarded_tokens=4,
        prefix_misses=1,
    )
    expected.failed.update({"request_failures": 1})
    expected.guards.update({"thinking_budget": 1, "x": 1})
    assert live == expected
    expected.failed["bad_input"] += 1  # a bad input line costs nothing but counts as a failure
    assert read == expected
    assert read.n_failed == 2 and read.teacher_share == pytest.approx(6 / 14)
    assert read.teacher_think_share == pytest.approx(6 / 9) and read.switches_per_sample == 1.0


def test_a_records_verification_round_trips_and_an_unjudged_answer_is_not_a_failure():
    from tessy.records import Record, SampleStats, Verification

    rec = Record(
        id="a",
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}],
        mode="tessy",
        spans=[],
        stats=SampleStats(),
        config_hash="h",
        verification=Verification("math", None, None, "no reference answer"),
    )
    back = Record.from_json(rec.to_json())
    assert back.verification == rec.verification
    assert back.verification is not None and not back.verification.judged
    assert Record.from_json({**rec.to_json(), "verification": None}).verification is None
    with pytest.raises(ValueError, match="passed"):
        Record.from_json({**rec.to_json(), "verification": {"kind": "math", "passed": "yes"}})
