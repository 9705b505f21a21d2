"""Data I/O: reading prompts (lenient and strict) and the append-only, resumable output store."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from tessy import DataError, Sample, SampleResult, SampleStats, Span
from tessy.data import OutputStore, sidecar_paths
from tessy.prompts import BadLine, prompt_id, read_prompts
from tessy.records import Failure, Record

# -- helpers ---------------------------------------------------------------------------------


def write_lines(path: Path, lines: list[str | dict[str, Any]]) -> Path:
    """Write one line per item: dicts as JSON, strings verbatim."""
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def read_all(path: Path, **kwargs: Any) -> list[Sample | BadLine]:
    return list(read_prompts(path, **kwargs))


def one_sample(tmp_path: Path, obj: dict[str, Any], **kwargs: Any) -> Sample:
    items = read_all(write_lines(tmp_path / "in.jsonl", [obj]), **kwargs)
    assert len(items) == 1
    item = items[0]
    assert isinstance(item, Sample), item
    return item


def one_bad(tmp_path: Path, line: str, **kwargs: Any) -> BadLine:
    items = read_all(write_lines(tmp_path / "in.jsonl", [line]), **kwargs)
    assert len(items) == 1
    item = items[0]
    assert isinstance(item, BadLine), item
    return item


def jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` decoded; fails on any line that is not a JSON object."""
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "the file must end with a whole line"
    out = []
    for line in raw.decode("utf-8").splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict)
        out.append(obj)
    return out


def ok_result(sample_id: str, **fields: Any) -> SampleResult:
    sample = Sample(id=sample_id, messages=[{"role": "user", "content": f"question {sample_id}"}], fields=fields)
    spans = [
        Span("student", "think", "Okay, so", 3),
        Span("teacher", "think", " 17 + 25 = 42.", 6),
        Span("student", "answer", "The answer is 42.", 5),
    ]
    stats = SampleStats(teacher_tokens=6, student_tokens=8, switches=1, requests=3, discarded_tokens=4)
    response = "<think>\nOkay, so 17 + 25 = 42.\n</think>\n\nThe answer is 42."
    return SampleResult(sample, spans, stats, response)


def failed_result(sample_id: str, reason: str = "request_failed: HTTP 400") -> SampleResult:
    sample = Sample(id=sample_id, messages=[{"role": "user", "content": f"question {sample_id}"}])
    return SampleResult(sample, [], SampleStats(requests=1, failed_requests=1), None, failure=Failure.parse(reason))


def open_store(output: Path, config_hash: str = "h1", **kwargs: Any) -> OutputStore:
    return OutputStore.open(output, config={"mode": "tessy"}, config_hash=config_hash, **kwargs)


# -- reading prompts -------------------------------------------------------------------------


def test_prompt_string_becomes_one_user_message(tmp_path: Path) -> None:
    s = one_sample(tmp_path, {"id": "a", "prompt": "What is 2 + 2?"})
    assert s.id == "a"
    assert s.messages == [{"role": "user", "content": "What is 2 + 2?"}]
    assert s.fields == {}


def test_chat_messages_with_system_are_kept_in_order(tmp_path: Path) -> None:
    msgs = [
        {"role": "system", "content": "You are a careful tutor."},
        {"role": "user", "content": "Is 91 prime?"},
    ]
    s = one_sample(tmp_path, {"id": "c", "messages": msgs})
    assert s.messages == msgs


def test_multi_turn_messages_ending_with_user(tmp_path: Path) -> None:
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Sum 1..10?"},
    ]
    s = one_sample(tmp_path, {"messages": msgs})
    assert s.messages == msgs


def test_messages_drop_extra_keys_of_each_message(tmp_path: Path) -> None:
    s = one_sample(tmp_path, {"messages": [{"role": "user", "content": "q", "name": "bob", "weight": 1}]})
    assert s.messages == [{"role": "user", "content": "q"}]


def test_messages_win_over_prompt_which_is_kept_as_a_field(tmp_path: Path) -> None:
    s = one_sample(tmp_path, {"prompt": "from prompt", "messages": [{"role": "user", "content": "from messages"}]})
    assert s.messages == [{"role": "user", "content": "from messages"}]
    assert s.fields == {"prompt": "from prompt"}


def test_prompt_field_as_string(tmp_path: Path) -> None:
    s = one_sample(tmp_path, {"id": 1, "question": "Why?", "prompt": "not this"}, prompt_field="question")
    assert s.messages == [{"role": "user", "content": "Why?"}]
    # The configured field is consumed, the others are kept.
    assert s.fields == {"prompt": "not this"}


def test_prompt_field_as_messages(tmp_path: Path) -> None:
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    s = one_sample(tmp_path, {"conversation": conv, "level": 3}, prompt_field="conversation")
    assert s.messages == conv
    assert s.fields == {"level": 3}


def test_prompt_field_missing_is_a_bad_line(tmp_path: Path) -> None:
    bad = one_bad(tmp_path, json.dumps({"prompt": "x"}), prompt_field="question")
    assert "question" in bad.error


def test_custom_id_field(tmp_path: Path) -> None:
    s = one_sample(tmp_path, {"uid": "u-7", "id": "other", "prompt": "q"}, id_field="uid")
    assert s.id == "u-7"
    assert s.fields == {"id": "other"}


@pytest.mark.parametrize(("raw", "expected"), [("abc", "abc"), (42, "42"), (0, "0"), (-3, "-3")])
def test_input_id_string_or_int(tmp_path: Path, raw: object, expected: str) -> None:
    assert one_sample(tmp_path, {"id": raw, "prompt": "q"}).id == expected


def test_id_without_input_id_is_a_stable_hash_of_the_prompt(tmp_path: Path) -> None:
    lines = [
        {"prompt": "What is 2 + 2?"},
        {"prompt": "What is 2 + 3?"},
        {"prompt": "What is 2 + 2?", "source": "dup"},
        {"messages": [{"role": "user", "content": "What is 2 + 2?"}]},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2 + 2?"}]},
        {"id": None, "prompt": "What is 2 + 2?"},
    ]
    # One file per line: in one file, a prompt seen before is a duplicate (see the test below).
    ids = [one_sample(tmp_path, obj).id for obj in lines]
    same = ids[0]
    assert ids[1] != same  # another prompt
    assert ids[2] == same  # other fields do not matter
    assert ids[3] == same  # a bare prompt is one user message
    assert ids[4] != same  # a system message is part of the prompt
    assert ids[5] == same  # a null id counts as none
    assert all(isinstance(i, str) and i for i in ids)
    # Stable: the same on another read, and equal to the documented function.
    again = [one_sample(tmp_path, obj).id for obj in lines]
    assert again == ids
    assert same == prompt_id([{"role": "user", "content": "What is 2 + 2?"}])


def test_prompt_id_does_not_depend_on_key_order() -> None:
    a = prompt_id([{"role": "user", "content": "x"}])
    b = prompt_id([{"content": "x", "role": "user"}])
    assert a == b
    assert a != prompt_id([{"role": "user", "content": "y"}])


def test_input_fields_are_kept_in_the_sample(tmp_path: Path) -> None:
    s = one_sample(tmp_path, {"id": "a", "prompt": "q", "source": "web", "tags": ["x", "y"], "meta": {"n": 1}})
    assert s.fields == {"source": "web", "tags": ["x", "y"], "meta": {"n": 1}}


def test_reading_is_lazy_and_line_by_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", [{"id": str(i), "prompt": f"q{i}"} for i in range(3)])
    it = read_prompts(path)
    first = next(it)
    assert isinstance(first, Sample)
    assert first.id == "0"
    assert [x.id for x in it if isinstance(x, Sample)] == ["1", "2"]


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "prompt": "q"}\n\n   \n{oops\n{"id": "b", "prompt": "r"}\n', encoding="utf-8")
    items = read_all(path)
    assert [type(x).__name__ for x in items] == ["Sample", "BadLine", "Sample"]
    bad = items[1]
    assert isinstance(bad, BadLine)
    assert bad.line_no == 4


def test_missing_input_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl"):
        read_all(tmp_path / "nope.jsonl")


# -- malformed lines ---------------------------------------------------------------------------

BAD_LINES = {
    "invalid_json": ('{"id": "x", "prompt": ', "not valid JSON"),
    "not_an_object": ('["a", "b"]', "JSON object"),
    "missing_prompt": ('{"id": "x", "text": "hello"}', "prompt"),
    "empty_prompt": ('{"id": "x", "prompt": "   "}', "empty"),
    "prompt_not_text": ('{"id": "x", "prompt": 5}', "prompt"),
    "empty_messages": ('{"id": "x", "messages": []}', "messages"),
    "messages_not_list": ('{"id": "x", "messages": {"role": "user", "content": "q"}}', "messages"),
    "message_bad_role": ('{"id": "x", "messages": [{"role": "robot", "content": "q"}]}', "messages[0]"),
    "message_no_content": ('{"id": "x", "messages": [{"role": "user"}]}', "messages[0]"),
    "message_content_not_text": ('{"id": "x", "messages": [{"role": "user", "content": ["q"]}]}', "messages[0]"),
    "last_not_user": (
        '{"id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
        "last message",
    ),
    "id_float": ('{"id": 1.5, "prompt": "q"}', "'id'"),
    "id_bool": ('{"id": true, "prompt": "q"}', "'id'"),
    "id_list": ('{"id": ["a"], "prompt": "q"}', "'id'"),
    "id_empty": ('{"id": "  ", "prompt": "q"}', "'id'"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_malformed_line_is_a_bad_line_and_reading_goes_on(tmp_path: Path, case: str) -> None:
    line, needle = BAD_LINES[case]
    path = tmp_path / "in.jsonl"
    path.write_text(f'{{"id": "before", "prompt": "q"}}\n{line}\n{{"id": "after", "prompt": "r"}}\n', encoding="utf-8")
    items = read_all(path)
    assert len(items) == 3
    before, bad, after = items
    assert isinstance(before, Sample)
    assert before.id == "before"
    assert isinstance(after, Sample)
    assert after.id == "after"
    assert isinstance(bad, BadLine)
    assert bad.source == str(path)
    assert bad.line_no == 2
    assert bad.raw == line
    assert needle in bad.error
    assert str(bad).startswith(f"{path}:2: ")


@pytest.mark.parametrize("case", ["invalid_json", "missing_prompt", "last_not_user", "id_float"])
def test_strict_mode_raises_naming_file_and_line(tmp_path: Path, case: str) -> None:
    line, _ = BAD_LINES[case]
    path = tmp_path / "in.jsonl"
    path.write_text(f'{{"id": "a", "prompt": "q"}}\n\n{line}\n{{"id": "b", "prompt": "r"}}\n', encoding="utf-8")
    it = read_prompts(path, strict=True)
    first = next(it)
    assert isinstance(first, Sample)
    with pytest.raises(DataError) as info:
        next(it)
    assert f"{path}:3" in str(info.value)
    assert "strict" in str(info.value)


def test_strict_mode_reads_a_clean_file(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", [{"id": "a", "prompt": "q"}, {"id": "b", "prompt": "r"}])
    assert [x.id for x in read_all(path, strict=True) if isinstance(x, Sample)] == ["a", "b"]


# -- output records ----------------------------------------------------------------------------


def test_a_records_fields_are_in_order() -> None:
    result = ok_result("s1", source="web", level=2)
    rec = Record.from_result(result, "cafe", "tessy").to_json()
    keys = list(rec)
    assert keys[0] == "id"
    assert rec["id"] == "s1"
    # Input fields are kept, before the record's own fields.
    assert rec["source"] == "web"
    assert rec["level"] == 2
    assert keys.index("source") < keys.index("messages")
    assert rec["messages"] == [
        {"role": "user", "content": "question s1"},
        {"role": "assistant", "content": result.response},
    ]
    assert rec["spans"] == [
        {"source": "student", "phase": "think", "text": "Okay, so", "tokens": 3},
        {"source": "teacher", "phase": "think", "text": " 17 + 25 = 42.", "tokens": 6},
        {"source": "student", "phase": "answer", "text": "The answer is 42.", "tokens": 5},
    ]
    stats = rec["stats"]
    for name, value in [
        ("teacher_tokens", 6),
        ("student_tokens", 8),
        ("switches", 1),
        ("requests", 3),
        ("discarded_tokens", 4),
    ]:
        assert stats[name] == value
    assert rec["config_hash"] == "cafe"
    assert rec["mode"] == "tessy"
    assert "input" not in rec


def test_reserved_input_fields_are_moved_under_input() -> None:
    result = ok_result("s1", mode="exam", stats={"n": 1}, spans="x", input="raw", response="gold", source="web")
    rec = Record.from_result(result, "cafe", "teacher-think").to_json()
    assert rec["input"] == {"mode": "exam", "stats": {"n": 1}, "spans": "x", "input": "raw", "response": "gold"}
    # The record's own fields are not overwritten by the input's.
    assert rec["mode"] == "teacher-think"
    assert rec["stats"]["teacher_tokens"] == 6
    assert rec["spans"][0]["source"] == "student"
    assert rec["source"] == "web"


def test_sidecar_paths() -> None:
    failed, config = sidecar_paths(Path("/d/run.jsonl"))
    assert failed == Path("/d/run.failed.jsonl")
    assert config == Path("/d/run.config.json")
    failed, config = sidecar_paths(Path("/d/out"))
    assert failed == Path("/d/out.failed.jsonl")
    assert config == Path("/d/out.config.json")


# -- the output store --------------------------------------------------------------------------


def test_store_appends_valid_jsonl_and_writes_its_config(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.jsonl"
    with open_store(out) as store:
        assert store.done_ids == set()
        assert store.failed_ids == set()
        store.write(ok_result("a", source="web"), "tessy")
        # The file is valid after every record.
        assert [r["id"] for r in jsonl(out)] == ["a"]
        store.write(ok_result("b"), "tessy")
    records = jsonl(out)
    assert [r["id"] for r in records] == ["a", "b"]
    for rec in records:
        assert next(iter(rec)) == "id"
        assert {"messages", "spans", "stats", "config_hash"} <= set(rec)
        assert rec["config_hash"] == "h1"
        assert rec["messages"][-1]["role"] == "assistant"
        assert rec["messages"][-1]["content"].startswith("<think>\n")
    assert records[0]["source"] == "web"
    config = json.loads((tmp_path / "sub" / "out.config.json").read_text())
    assert config == {"config_hash": "h1", "config": {"mode": "tessy"}}
    assert not (tmp_path / "sub" / "out.failed.jsonl").exists()


def test_failures_go_to_the_sidecar_with_their_reason(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with open_store(out) as store:
        store.write(ok_result("a"), "tessy")
        store.write(failed_result("b", "request_failed: HTTP 400 bad request"), "tessy")
    assert [r["id"] for r in jsonl(out)] == ["a"]
    failed = jsonl(tmp_path / "out.failed.jsonl")
    assert len(failed) == 1
    rec = failed[0]
    assert rec["id"] == "b"
    assert rec["failure"] == "request_failed: HTTP 400 bad request"
    assert rec["messages"] == [{"role": "user", "content": "question b"}]
    assert rec["config_hash"] == "h1"


def test_bad_lines_go_to_the_sidecar_with_line_number(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    bad = BadLine(str(tmp_path / "prompts.jsonl"), 7, "not valid JSON (Expecting value at column 1)", "{oops")
    with open_store(out) as store:
        store.write_bad_line(bad)
    (rec,) = jsonl(tmp_path / "out.failed.jsonl")
    assert rec["id"] == "prompts.jsonl:7"
    assert rec["failure"].startswith("bad_input: ")
    assert "not valid JSON" in rec["failure"]
    assert rec["raw"] == "{oops"
    assert rec["config_hash"] == "h1"
    with open_store(out) as store:
        assert store.failed_ids == {"prompts.jsonl:7"}


def test_resume_reads_done_and_failed_ids(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with open_store(out) as store:
        store.write(ok_result("a"), "tessy")
        store.write(ok_result('we"ird\\id ü'), "tessy")
        store.write(failed_result("c"), "tessy")
    with open_store(out) as store:
        assert store.done_ids == {"a", 'we"ird\\id ü'}
        assert store.failed_ids == {"c"}
        store.write(ok_result("c"), "tessy")
    with open_store(out) as store:
        assert store.done_ids == {"a", 'we"ird\\id ü', "c"}
    assert [r["id"] for r in jsonl(out)] == ["a", 'we"ird\\id ü', "c"]


def test_resume_reads_records_written_by_other_tools(tmp_path: Path) -> None:
    # Key order, spacing and int ids that tessy itself would not write.
    out = tmp_path / "out.jsonl"
    out.write_text(
        '{"config_hash":"h1","id":"x"}\n{ "id" : 5 , "config_hash" : "h1" }\n\n{"id": "y", "config_hash": "h1", "z": 1}\n',
        encoding="utf-8",
    )
    with open_store(out) as store:
        assert store.done_ids == {"x", "5", "y"}


def test_resume_of_an_empty_or_missing_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    with open_store(out) as store:
        assert store.done_ids == set()
    with open_store(tmp_path / "new.jsonl") as store:
        assert store.done_ids == set()


@pytest.mark.parametrize(
    "tail",
    [
        b'{"id": "c", "messages": [{"role": "us',  # a partial record, no newline
        b'{"id": "c", "config_hash": "h1"}',  # a whole object but no newline: not known complete
        b"\x00\x00\x00\x00",  # zeros left by a crash, no newline
        b"garbage\n",  # a complete line that is not a record
        b'{"id": "c", "config_hash": "h1"\n',  # truncated JSON with a newline
        b"\xff\xfe{\n",  # not even UTF-8
    ],
)
def test_torn_last_line_is_cut_off_and_earlier_records_kept(tmp_path: Path, tail: bytes) -> None:
    out = tmp_path / "out.jsonl"
    with open_store(out) as store:
        store.write(ok_result("a"), "tessy")
        store.write(ok_result("b"), "tessy")
    good = out.read_bytes()
    out.write_bytes(good + tail)
    with open_store(out) as store:
        assert store.done_ids == {"a", "b"}
        assert out.read_bytes() == good
        store.write(ok_result("c"), "tessy")
    assert [r["id"] for r in jsonl(out)] == ["a", "b", "c"]


def test_torn_last_line_of_the_failure_file_is_cut_off(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with open_store(out) as store:
        store.write(failed_result("a"), "tessy")
    failed = tmp_path / "out.failed.jsonl"
    good = failed.read_bytes()
    failed.write_bytes(good + b'{"id": "b", "fail')
    with open_store(out) as store:
        assert store.failed_ids == {"a"}
        store.write(failed_result("b"), "tessy")
    assert [r["id"] for r in jsonl(failed)] == ["a", "b"]


def test_a_damaged_line_before_good_records_does_not_delete_them(tmp_path: Path) -> None:
    """Only a torn *last* line may be cut: records after a damaged line must survive (or the run refuse).

    Only a torn *last* line is cut off; a damaged line in the middle is left alone, and the
    valid records after it are kept.
    """
    out = tmp_path / "out.jsonl"
    with open_store(out) as store:
        store.write(ok_result("a"), "tessy")
    first = out.read_bytes()
    with open_store(tmp_path / "other.jsonl") as store:
        store.write(ok_result("b"), "tessy")
    later = (tmp_path / "other.jsonl").read_bytes()
    out.write_bytes(first + b"\x00\x00garbage\n" + later)
    # Refusing to touch a file damaged in the middle is fine too.
    with contextlib.suppress(DataError):
        open_store(out).close()
    assert later in out.read_bytes(), "a valid record after a damaged line was deleted"


def test_other_config_hash_is_refused_unless_allowed(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with open_store(out, "h1") as store:
        store.write(ok_result("a"), "tessy")
    before = out.read_bytes()
    config_before = (tmp_path / "out.config.json").read_bytes()
    with pytest.raises(DataError) as info:
        open_store(out, "h2")
    message = str(info.value)
    assert "h1" in message
    assert "h2" in message
    assert "allow_config_change" in message
    assert out.read_bytes() == before
    assert (tmp_path / "out.config.json").read_bytes() == config_before
    with open_store(out, "h2", allow_config_change=True) as store:
        assert store.done_ids == {"a"}
        store.write(ok_result("b"), "tessy")
    assert [(r["id"], r["config_hash"]) for r in jsonl(out)] == [("a", "h1"), ("b", "h2")]
    assert json.loads((tmp_path / "out.config.json").read_text())["config_hash"] == "h2"


def test_other_config_hash_in_the_failure_file_is_refused_too(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with open_store(out, "h1") as store:
        store.write(failed_result("a"), "tessy")
    with pytest.raises(DataError, match="allow_config_change"):
        open_store(out, "h2")


def test_same_config_hash_resumes(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with open_store(out, "h1") as store:
        store.write(ok_result("a"), "tessy")
    with open_store(out, "h1") as store:
        assert store.done_ids == {"a"}


def test_fsync_store_writes_the_same(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with open_store(out, fsync=True) as store:
        store.write(ok_result("a"), "tessy")
        store.write(failed_result("b"), "tessy")
    assert [r["id"] for r in jsonl(out)] == ["a"]
    assert [r["id"] for r in jsonl(tmp_path / "out.failed.jsonl")] == ["b"]
