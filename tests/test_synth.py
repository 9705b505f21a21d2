"""Whole runs through the library (``tessy.synthesize``) and the command line (``tessy synth``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import tessy
from tessy import BackendError, ConfigError, DataError, Engine, GenerateRequest, Generation, Sample, load_config
from tessy.backends import Backend
from tessy.build import build_engine, build_role
from tessy.cli import main
from tessy.prompts import read_prompts
from tessy.records import RunStats
from tessy.report.runs import load_run, run_stats

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "examples" / "offline.yaml"
PROMPTS = ROOT / "examples" / "prompts.jsonl"
MODES = ("tessy", "teacher-only", "student-only", "teacher-think", "teacher-answer", "tessy-teacher-answer")

#: The offline example's student responses plus one that ends the thinking, so that the modes in
#: which the student thinks alone come to an end.
STUDENT_RESPONSES = [
    " Okay, so let me look at what is asked",
    " Wait, let me double-check that step",
    " Hmm, so the next step is the check",
    " Alright, let's see what is left to do",
    " So that settles it.\n</think>",
]
#: What the teacher answers in the modes where the teacher writes the answer.
TEACHER_ANSWER = "So the answer is 42, as the working shows."
ALL_MODES_OVERRIDES = [f"student.responses={json.dumps(STUDENT_RESPONSES)}", f"teacher.answers=[{TEACHER_ANSWER!r}]"]


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide console, so that rich does not wrap the summary table's rows."""
    monkeypatch.setenv("COLUMNS", "400")


def example_ids() -> list[str]:
    return [s.id for s in read_prompts(PROMPTS) if isinstance(s, Sample)]


def records(path: Path) -> list[dict[str, Any]]:
    """All records of a JSONL file (an absent file has none); fails on any invalid line."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path} does not end with a whole line"
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


def failed_path(output: Path) -> Path:
    return output.with_name(output.stem + ".failed.jsonl")


def offline(output: Path, *overrides: str) -> tessy.SynthConfig:
    return load_config(OFFLINE, [f"data.output={output}", *overrides])


def write_prompts(path: Path, n: int, *, prefix: str = "p") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Question {i}?"}) + "\n" for i in ids), encoding="utf-8")
    return ids


def flat(text: str) -> str:
    """Text with all whitespace runs as one space (rich wraps long lines)."""
    return " ".join(text.split())


def check_response(rec: dict[str, Any]) -> None:
    """The stored response is the spans, in the student's (qwen3) format."""
    spans = rec["spans"]
    assert spans, rec
    assert all(s["source"] in ("teacher", "student") and s["phase"] in ("think", "answer") for s in spans)
    phases = [s["phase"] for s in spans]
    # All thinking first, then the answer.
    assert phases == sorted(phases, key=lambda p: p == "answer")
    thinking = "".join(s["text"] for s in spans if s["phase"] == "think")
    answer = "".join(s["text"] for s in spans if s["phase"] == "answer")
    assert thinking.strip()
    assert answer.strip()
    user, assistant = rec["messages"][-2], rec["messages"][-1]
    assert user["role"] == "user"
    assert assistant["role"] == "assistant"
    assert assistant["content"] == f"<think>\n{thinking}\n</think>\n\n{answer}"


def check_acceptance(output: Path, config_hash: str | None = None) -> list[dict[str, Any]]:
    """The acceptance check on the offline example's output."""
    recs = records(output)
    assert sorted(r["id"] for r in recs) == sorted(example_ids())
    for rec in recs:
        assert next(iter(rec)) == "id"
        spans = rec["spans"]
        assert {s["source"] for s in spans} == {"student", "teacher"}, rec["id"]
        assert spans[0]["source"] == "student"
        assert spans[0]["phase"] == "think"
        answer = [s for s in spans if s["phase"] == "answer"]
        assert answer
        assert all(s["source"] == "student" for s in answer)
        assert rec["messages"][-1]["content"].startswith("<think>")
        check_response(rec)
        stats = rec["stats"]
        assert stats["teacher_tokens"] > 0
        assert stats["student_tokens"] > 0
        assert stats["switches"] >= 1
        assert stats["requests"] >= 3
        if config_hash is not None:
            assert rec["config_hash"] == config_hash
    by_id = {r["id"]: r for r in recs}
    # Input fields are kept; chat input keeps its system message.
    chat = by_id["chat-1"]
    assert chat["source"] == "handwritten"
    assert chat["messages"][0] == {"role": "system", "content": "You are a careful tutor."}
    assert chat["messages"][1] == {"role": "user", "content": "Is 91 a prime number?"}
    return recs


class FailFor(Backend):
    """Wraps a backend; requests of the given samples fail with a non-retryable error."""

    supports_streaming = False

    def __init__(self, inner: Backend, fail_ids: set[str]) -> None:
        super().__init__(max_concurrency=inner.max_concurrency)
        self.inner = inner
        self.fail_ids = fail_ids
        self.failed: Counter[str] = Counter()

    async def generate(self, request: GenerateRequest) -> Generation:
        if request.sample_id in self.fail_ids:
            self.failed[request.sample_id] += 1
            raise BackendError("HTTP 400: the prompt is too long for this model", retryable=False, status=400)
        return await self.inner.generate(request)


def failing_engine(config: tessy.SynthConfig, fail_ids: set[str]) -> tuple[Engine, FailFor]:
    teacher = build_role("teacher", config.teacher)
    student = build_role("student", config.student)
    student.backend = FailFor(student.backend, fail_ids)
    assert isinstance(student.backend, FailFor)
    return Engine(teacher, student, mode=config.mode), student.backend


# -- the acceptance check ----------------------------------------------------------------------


def test_library_run_of_the_offline_example(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = offline(out)
    summary = tessy.synthesize(config)
    assert summary.written == 5
    assert summary.n_failed == 0
    assert summary.bad_lines == 0
    assert summary.output == out
    assert summary.config_hash == config.config_hash()
    assert 0 < summary.teacher_share < 1
    check_acceptance(out, config.config_hash())
    assert not failed_path(out).exists()
    saved = json.loads((tmp_path / "out.config.json").read_text())
    assert saved["config_hash"] == config.config_hash()
    assert saved["config"]["mode"] == "tessy"
    # Again: everything is skipped, nothing is added.
    before = out.read_bytes()
    again = tessy.synthesize(config)
    assert again.written == 0
    assert again.skipped_done == 5
    assert out.read_bytes() == before


async def test_async_run_with_progress(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    seen: list[tuple[int | None, int]] = []
    summary = await tessy.asynthesize(offline(out), progress=lambda s: seen.append((s.total, s.processed)))
    assert summary.written == 5
    assert seen
    assert all(total == 5 for total, _ in seen)
    assert seen[-1][1] == 5
    assert [p for _, p in seen] == sorted(p for _, p in seen)
    check_acceptance(out)


def test_the_same_config_gives_the_same_data(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    tessy.synthesize(offline(a, "max_in_flight=1"))
    tessy.synthesize(offline(b, "max_in_flight=64"))

    def content(path: Path) -> dict[str, Any]:
        return {r["id"]: (r["messages"], r["spans"]) for r in records(path)}

    assert content(a) == content(b)


def test_cli_acceptance_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["synth", "--config", str(OFFLINE), "--output", str(out)]) == 0
    first = capsys.readouterr()
    assert "Traceback" not in first.err
    assert "samples written" in first.out
    check_acceptance(out, offline(out).config_hash())
    before = out.read_bytes()
    assert main(["synth", "--config", str(OFFLINE), "--output", str(out)]) == 0
    second = flat(capsys.readouterr().out)
    assert out.read_bytes() == before
    assert "skipped (already done / failed before) │ 5 / 0" in second
    assert "samples written │ 0" in second


def test_cli_acceptance_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("tessy")
    if not script.exists():
        pytest.skip("the tessy console script is not installed beside this Python")
    out = tmp_path / "offline.jsonl"
    cmd = [str(script), "synth", "--config", str(OFFLINE), "--output", str(out)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=os.environ.copy())
    assert first.returncode == 0, first.stderr
    check_acceptance(out)
    lines = out.read_bytes().count(b"\n")
    assert lines == 5
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=os.environ.copy())
    assert second.returncode == 0, second.stderr
    assert out.read_bytes().count(b"\n") == lines
    assert "skipped (already done / failed before) │ 5 / 0" in flat(second.stdout)
    # The repository's examples directory is left alone.
    assert not (ROOT / "examples" / "offline-out.jsonl").exists()


# -- CLI options -------------------------------------------------------------------------------


def test_cli_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    ids = example_ids()
    assert main(["synth", "--config", str(OFFLINE), "--output", str(out), "--limit", "2"]) == 0
    assert sorted(r["id"] for r in records(out)) == sorted(ids[:2])
    assert main(["synth", "--config", str(OFFLINE), "--output", str(out), "--limit", "4"]) == 0
    assert sorted(r["id"] for r in records(out)) == sorted(ids[:4])
    assert "2 / 0" in flat(capsys.readouterr().out)


def test_cli_input_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = write_prompts(tmp_path / "mine.jsonl", 3)
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--config", str(OFFLINE), "--input", "mine.jsonl", "--output", "out.jsonl"]) == 0
    assert sorted(r["id"] for r in records(tmp_path / "out.jsonl")) == sorted(ids)


def test_cli_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    overrides = ["teacher.chunk_tokens=7", "mode=teacher-think", "student.sampling.seed=3"]
    assert main(["synth", "--config", str(OFFLINE), "--output", str(out), *overrides]) == 0
    recs = records(out)
    assert len(recs) == 5
    expected_hash = offline(out, *overrides).config_hash()
    assert expected_hash != offline(out).config_hash()
    for rec in recs:
        assert rec["mode"] == "teacher-think"
        assert rec["config_hash"] == expected_hash
        assert {s["source"] for s in rec["spans"] if s["phase"] == "think"} == {"teacher"}
    saved = json.loads((tmp_path / "out.config.json").read_text())
    assert saved["config"]["teacher"]["chunk_tokens"] == 7
    assert saved["config"]["student"]["sampling"]["seed"] == 3
    assert saved["config_hash"] == expected_hash


def test_smaller_chunks_mean_more_requests(tmp_path: Path) -> None:
    small = tessy.synthesize(offline(tmp_path / "a.jsonl", "teacher.chunk_tokens=4", "student.chunk_tokens=4"))
    large = tessy.synthesize(offline(tmp_path / "b.jsonl"))
    assert small.written == large.written == 5
    assert small.requests > large.requests


@pytest.mark.parametrize(
    ("setup", "args", "needle"),
    [
        ("unknown_key", [], "teacher.bogus"),
        ("bad_yaml", [], "not valid YAML"),
        ("missing_file", [], "cannot read the config file"),
        ("ok", ["teacher.chunk_tokens"], "key=value"),
        ("ok", ["guards.max_thinking_tokens=4096"], "max_thinking_tokens"),
        ("ok", ["mode=teacher-first"], "mode"),
        ("ok", ["data.input=does-not-exist.jsonl"], "does-not-exist.jsonl"),
    ],
)
def test_cli_bad_config_is_a_readable_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, args: list[str], needle: str
) -> None:
    config = tmp_path / "run.yaml"
    text = OFFLINE.read_text(encoding="utf-8").replace("data:\n  input: prompts.jsonl", f"data:\n  input: {PROMPTS}")
    if setup == "unknown_key":
        text = text.replace("teacher:\n", "teacher:\n  bogus: 1\n")
    elif setup == "bad_yaml":
        text += "\nmode: [tessy\n"
    if setup != "missing_file":
        config.write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(["synth", "--config", str(config), "--output", str(out), *args])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    assert flat(err).startswith("error:")
    assert needle in flat(err)
    assert not out.exists()


@pytest.mark.parametrize("which", ["input", "output"])
def test_cli_directory_given_as_a_file_is_a_readable_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """A folder given as --input or --output is a readable error, not a traceback."""
    folder = tmp_path / "folder"
    folder.mkdir()
    args = ["--input", str(folder), "--output", str(tmp_path / "o.jsonl")]
    if which == "output":
        args = ["--output", str(folder)]
    try:
        code = main(["synth", "--config", str(OFFLINE), *args])
    except OSError as exc:
        pytest.fail(f"a {which} directory raised {exc!r} instead of a readable error")
    err = capsys.readouterr().err
    assert code == 1
    assert "error:" in err
    assert "Traceback" not in err


def test_cli_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "synth" in capsys.readouterr().out


# -- config changes between runs ---------------------------------------------------------------


def test_cli_rerun_with_another_chunk_size_is_refused_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    base = ["synth", "--config", str(OFFLINE), "--output", str(out)]
    assert main([*base, "--limit", "2"]) == 0
    before = out.read_bytes()
    config_before = (tmp_path / "out.config.json").read_bytes()
    capsys.readouterr()

    assert main([*base, "teacher.chunk_tokens=8"]) == 1
    err = flat(capsys.readouterr().err)
    assert "Traceback" not in err
    assert "allow_config_change" in err
    assert out.read_bytes() == before
    assert (tmp_path / "out.config.json").read_bytes() == config_before
    assert not failed_path(out).exists()

    assert main([*base, "teacher.chunk_tokens=8", "data.allow_config_change=true"]) == 0
    recs = records(out)
    assert out.read_bytes().startswith(before)
    assert sorted(r["id"] for r in recs) == sorted(example_ids())
    old_hash, new_hash = offline(out).config_hash(), offline(out, "teacher.chunk_tokens=8").config_hash()
    assert [r["config_hash"] for r in recs] == [old_hash] * 2 + [new_hash] * 3


def test_library_rerun_with_another_mode_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    tessy.synthesize(offline(out, "limit=1"))
    with pytest.raises(DataError, match="allow_config_change"):
        tessy.synthesize(offline(out, "mode=teacher-think"))
    # Paths, concurrency, latency and limits are not part of the config: those reruns resume.
    summary = tessy.synthesize(offline(out, "max_in_flight=2", "teacher.latency_s=0.001", "student.max_concurrency=3"))
    assert summary.skipped_done == 1
    assert summary.written == 4


def test_missing_data_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.input"):
        tessy.synthesize(load_config(OFFLINE, ["data.output=null"]))
    with pytest.raises(ConfigError, match="does not exist"):
        tessy.synthesize(offline(tmp_path / "o.jsonl", f"data.input={tmp_path / 'none.jsonl'}"))


# -- bad input lines ---------------------------------------------------------------------------


def write_mixed_input(path: Path) -> None:
    lines = [
        json.dumps({"id": "good-1", "prompt": "What is 17 + 25?"}),
        '{"id": "broken", "prompt": ',
        json.dumps({"id": "no-prompt", "text": "hello"}),
        json.dumps({"id": "good-2", "messages": [{"role": "user", "content": "Sum a list."}]}),
        json.dumps(
            {"id": "bad-msgs", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        ),
        json.dumps({"id": 3.5, "prompt": "float id"}),
        json.dumps({"prompt": "Is 91 prime?"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_bad_input_lines_are_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_mixed_input(source)
    out = tmp_path / "out.jsonl"
    config = offline(out, f"data.input={source}")
    summary = tessy.synthesize(config)
    assert summary.bad_lines == 4
    assert summary.written == 3
    recs = records(out)
    assert {r["id"] for r in recs} >= {"good-1", "good-2"}
    assert len(recs) == 3
    for rec in recs:
        check_response(rec)
    failed = records(failed_path(out))
    assert [f["id"] for f in failed] == ["in.jsonl:2", "in.jsonl:3", "in.jsonl:5", "in.jsonl:6"]
    for f in failed:
        assert f["failure"].startswith("bad_input")
        assert f["config_hash"] == config.config_hash()
    assert failed[0]["raw"] == '{"id": "broken", "prompt": '
    assert "JSON" in failed[0]["failure"]

    # A rerun does not record them twice and does not redo the good ones.
    before_out, before_failed = out.read_bytes(), failed_path(out).read_bytes()
    again = tessy.synthesize(config)
    assert again.written == 0
    assert again.skipped_done == 3
    assert again.bad_lines == 4
    assert out.read_bytes() == before_out
    assert failed_path(out).read_bytes() == before_failed


def test_bad_input_lines_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    write_mixed_input(source)
    out = tmp_path / "out.jsonl"
    argv = ["synth", "--config", str(OFFLINE), "--input", str(source), "--output", str(out), "max_failure_rate=1"]
    assert main(argv) == 0
    assert len(records(out)) == 3
    assert len(records(failed_path(out))) == 4
    text = flat(capsys.readouterr().out)
    assert "malformed input lines │ 4" in text


def test_strict_mode_stops_at_a_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    write_mixed_input(source)
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=r"in\.jsonl:2"):
        tessy.synthesize(offline(out, f"data.input={source}", "data.strict=true"))
    assert not any(f["id"].startswith("in.jsonl:") for f in records(failed_path(out)))

    out2 = tmp_path / "out2.jsonl"
    code = main(["synth", "--config", str(OFFLINE), "--input", str(source), "--output", str(out2), "data.strict=true"])
    err = flat(capsys.readouterr().err)
    assert code == 1
    assert "Traceback" not in err
    assert "in.jsonl:2" in err
    assert "strict" in err


def test_lone_surrogate_in_a_prompt_does_not_crash_the_run(tmp_path: Path) -> None:
    """A lone surrogate (the valid JSON escape "\\ud800") cannot be UTF-8: the record is written
    with ASCII escapes instead of ending the run and losing every later sample."""
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "ok-1", "prompt": "fine"}\n{"id": "sur", "prompt": "bad \\ud800 surrogate"}\n{"id": "ok-2", "prompt": "fine too"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    try:
        tessy.synthesize(offline(out, f"data.input={source}", "max_in_flight=1"))
    except UnicodeError as exc:
        pytest.fail(f"one odd prompt crashed the run: {exc!r}")
    done = {r["id"] for r in records(out)}
    failed = {r["id"] for r in records(failed_path(out))}
    assert {"ok-1", "ok-2"} <= done
    assert "sur" in done | failed or "in.jsonl:2" in failed


def test_undecodable_input_bytes_keep_the_output_valid_utf8(tmp_path: Path) -> None:
    """A prompt holding a byte that is not UTF-8 is a malformed line; the output stays valid UTF-8."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"id": "ok-1", "prompt": "fine"}\n{"id": "raw", "prompt": "bad \xff byte"}\n')
    out = tmp_path / "out.jsonl"
    tessy.synthesize(offline(out, f"data.input={source}"))
    for path in (out, failed_path(out)):
        if path.exists():
            path.read_bytes().decode("utf-8")  # raises on invalid UTF-8
    assert "ok-1" in {r["id"] for r in records(out)}


# -- failed samples ----------------------------------------------------------------------------


async def test_failed_samples_go_to_the_sidecar_and_are_skipped_on_rerun(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = offline(out)
    engine, backend = failing_engine(config, {"reverse", "add-1"})
    try:
        summary = await tessy.asynthesize(config, engine=engine)
    finally:
        await engine.aclose()
    assert summary.written == 3
    assert summary.n_failed == 2
    assert summary.failed == Counter({"request_failed": 2})
    # Non-retryable: one request each, no retries.
    assert backend.failed == Counter({"reverse": 1, "add-1": 1})
    assert sorted(r["id"] for r in records(out)) == sorted(set(example_ids()) - {"reverse", "add-1"})
    failed = {f["id"]: f for f in records(failed_path(out))}
    assert set(failed) == {"reverse", "add-1"}
    for f in failed.values():
        assert f["failure"].startswith("request_failed")
        assert "too long" in f["failure"]
        assert f["config_hash"] == config.config_hash()
        assert f["messages"][-1]["role"] == "user"
    assert failed["reverse"]["messages"][-1]["content"].startswith("Reverse a singly linked list")

    # Rerun: the failed ones are skipped, not tried again, not recorded again.
    before_out, before_failed = out.read_bytes(), failed_path(out).read_bytes()
    engine2, backend2 = failing_engine(config, {"reverse", "add-1"})
    try:
        again = await tessy.asynthesize(config, engine=engine2)
    finally:
        await engine2.aclose()
    assert again.skipped_failed == 2
    assert again.skipped_done == 3
    assert again.written == again.n_failed == 0
    assert not backend2.failed
    assert out.read_bytes() == before_out
    assert failed_path(out).read_bytes() == before_failed

    # With data.retry_failed they run again (and now succeed).
    retry = await tessy.asynthesize(offline(out, "data.retry_failed=true"))
    assert retry.written == 2
    assert retry.skipped_done == 3
    assert retry.skipped_failed == 0
    assert sorted(r["id"] for r in records(out)) == sorted(example_ids())
    check_acceptance(out)

    # And once done, they are not run a third time.
    last = await tessy.asynthesize(offline(out, "data.retry_failed=true"))
    assert last.written == 0
    assert last.skipped_done == 5


async def test_the_live_counters_are_the_reports_counters_of_the_same_run(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = offline(out, "teacher.chunk_tokens=3")
    engine, _ = failing_engine(config, {"reverse"})
    try:
        summary = await tessy.asynthesize(config, engine=engine)
    finally:
        await engine.aclose()
    assert summary.written == 4 and summary.failed == {"request_failed": 1}
    read = run_stats(load_run(out))
    names = [f.name for f in dataclasses.fields(RunStats)]
    assert {n: getattr(summary, n) for n in names} == {n: getattr(read, n) for n in names}
    assert read.think_tokens > read.teacher_think_tokens > 0 and read.requests > summary.written


async def test_retry_failed_that_fails_again_is_recorded_again(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = offline(out, "data.retry_failed=true")
    for expected in (1, 2):
        engine, _ = failing_engine(config, {"sum-list"})
        try:
            summary = await tessy.asynthesize(config, engine=engine)
        finally:
            await engine.aclose()
        assert summary.n_failed == 1
        assert [f["id"] for f in records(failed_path(out))] == ["sum-list"] * expected
    assert len(records(out)) == 4


async def test_engine_argument_is_used_and_left_open(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = offline(out)
    engine = build_engine(config)
    closed: list[str] = []
    for name, role in engine.roles.items():
        original = role.backend.aclose

        async def aclose(name: str = name, original: Any = original) -> None:
            closed.append(name)
            await original()

        role.backend.aclose = aclose  # type: ignore[method-assign]
    summary = await tessy.asynthesize(config, engine=engine)
    assert summary.written == 5
    assert closed == []
    await engine.aclose()
    assert sorted(closed) == ["student", "teacher"]


# -- modes -------------------------------------------------------------------------------------


def expected_sources(mode: str) -> tuple[set[str], str, bool]:
    """Who writes the thinking, who the answer, and whether the student opens the thinking."""
    return {
        "tessy": ({"student", "teacher"}, "student", True),
        "teacher-only": ({"teacher"}, "teacher", False),
        "student-only": ({"student"}, "student", True),
        "teacher-think": ({"teacher"}, "student", False),
        "teacher-answer": ({"student"}, "teacher", True),
        "tessy-teacher-answer": ({"student", "teacher"}, "teacher", True),
    }[mode]


@pytest.mark.parametrize("mode", MODES)
def test_mode_override_sets_who_writes_what(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str) -> None:
    out = tmp_path / "out.jsonl"
    code = main(["synth", "--config", str(OFFLINE), "--output", str(out), f"mode={mode}", *ALL_MODES_OVERRIDES])
    assert code == 0, capsys.readouterr().err
    assert not failed_path(out).exists(), records(failed_path(out))
    recs = records(out)
    assert sorted(r["id"] for r in recs) == sorted(example_ids())
    thinkers, answerer, student_first = expected_sources(mode)
    for rec in recs:
        assert rec["mode"] == mode
        check_response(rec)
        think = [s["source"] for s in rec["spans"] if s["phase"] == "think"]
        answer = [s["source"] for s in rec["spans"] if s["phase"] == "answer"]
        assert set(think) == thinkers, (rec["id"], think)
        assert set(answer) == {answerer}, (rec["id"], answer)
        assert (think[0] == "student") == student_first
        if answerer == "teacher":
            assert rec["messages"][-1]["content"].endswith(TEACHER_ANSWER)
        stats = rec["stats"]
        if "teacher" not in thinkers and answerer == "student":
            assert stats["teacher_tokens"] == 0
        if "student" not in thinkers and answerer == "teacher":
            assert stats["student_tokens"] == 0
        if len(thinkers) == 1:
            assert stats["switches"] == 0


def test_teacher_answers_default_to_its_responses(tmp_path: Path) -> None:
    """Without ``answers`` a scripted role answers with one of its responses, which ends like a turn."""
    out = tmp_path / "out.jsonl"
    summary = tessy.synthesize(offline(out, "mode=teacher-only"))
    assert summary.n_failed == 0, records(failed_path(out))[:1]
    assert summary.written == 5
    for rec in records(out):
        assert {s["source"] for s in rec["spans"]} == {"teacher"}


# -- resume after a kill -----------------------------------------------------------------------


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def check_valid_jsonl_except_last(path: Path) -> list[str]:
    """Ids of the whole lines; only a last line without a newline may be torn."""
    raw = path.read_bytes()
    *whole, tail = raw.split(b"\n")
    ids = [json.loads(line)["id"] for line in whole]
    if tail:
        with pytest.raises(json.JSONDecodeError):
            json.loads(tail)
    return ids


@pytest.mark.slow
def test_resume_after_kill(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    ids = write_prompts(source, 200)
    out = tmp_path / "out.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "tessy.cli",
        "synth",
        "--config",
        str(OFFLINE),
        "--input",
        str(source),
        "--output",
        str(out),
        "student.latency_s=0.01",
        "teacher.latency_s=0.01",
        "max_in_flight=4",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.monotonic()
    seen: list[str] = []
    for stop_after in (20, 90):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 15
            while count_lines(out) < stop_after:
                assert proc.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        seen = check_valid_jsonl_except_last(out)
        assert len(seen) >= stop_after
        assert len(seen) < len(ids), "the run finished before the kill"
        assert len(set(seen)) == len(seen)
        assert set(seen) <= set(ids)

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    recs = records(out)
    counts = Counter(r["id"] for r in recs)
    assert set(counts) == set(ids)
    assert all(n == 1 for n in counts.values()), [i for i, n in counts.items() if n > 1]
    # The records from before the kills were kept, in place.
    assert [r["id"] for r in recs[: len(seen)]] == seen
    for rec in recs:
        assert rec["spans"][0]["source"] == "student"
    assert records(failed_path(out)) == []
    assert f"{len(seen)} / 0" in flat(done.stdout)
    assert time.monotonic() - started < 30


# -- hostile input -----------------------------------------------------------------------------


def strict_json(line: str) -> Any:
    """A line as strict JSON (no NaN, no Infinity), as jq and other languages' readers take it."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in {line[:80]!r}")

    return json.loads(line, parse_constant=refuse)


def test_hostile_input_lines_are_recorded_with_a_reason_and_every_output_line_is_strict_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        '{"id": "ok-1", "prompt": "fine"}',
        "[" * 5000 + "]" * 5000,  # RecursionError in the JSON reader
        '{"id": "ok-1", "prompt": "the same id again"}',
        '{"id": "nan", "prompt": "q", "score": NaN}',
        '{"id": "inf", "prompt": "q", "weights": [1, -Infinity]}',
        '{"id": "sur", "prompt": "bad \\ud800 surrogate"}',
        '{"id": "sur-field", "prompt": "q", "meta": {"note": "\\udfff"}}',
        '{"id": "ok-2", "prompt": "fine too"}',
    ]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    config = offline(out, f"data.input={source}")
    summary = tessy.synthesize(config)
    assert summary.written == 2 and summary.bad_lines == 6
    assert [r["id"] for r in records(out)] in (["ok-1", "ok-2"], ["ok-2", "ok-1"])
    failed = {f["id"]: f["failure"] for f in records(failed_path(out))}
    assert failed.keys() == {f"in.jsonl:{n}" for n in (2, 3, 4, 5, 6, 7)}
    assert failed["in.jsonl:2"].startswith("bad_input") and "nested too deep" in failed["in.jsonl:2"]
    assert failed["in.jsonl:3"].startswith("duplicate_id") and "line 1" in failed["in.jsonl:3"]
    assert "NaN" in failed["in.jsonl:4"] and "-Infinity" in failed["in.jsonl:5"]
    assert "surrogate" in failed["in.jsonl:6"] and "'meta'.note" in failed["in.jsonl:7"]
    # Every line of both files is strict UTF-8 JSON, as jq and tessy export read it.
    for path in (out, failed_path(out)):
        for line in path.read_bytes().decode("utf-8").splitlines():
            strict_json(line)
        jq = subprocess.run(["jq", "-c", ".id", str(path)], capture_output=True, text=True)
        assert jq.returncode == 0, jq.stderr
    assert main(["export", str(out), "--format", "trl", "--out", str(tmp_path / "trl.jsonl")]) == 0
    assert len(records(tmp_path / "trl.jsonl")) == 2

    # A rerun skips the first ok-1 as done and records nothing twice (the duplicate stays one).
    before = failed_path(out).read_bytes()
    again = tessy.synthesize(config)
    assert (again.written, again.skipped_done, again.bad_lines) == (0, 2, 6)
    assert failed_path(out).read_bytes() == before


async def test_duplicate_ids_in_prompts_given_in_memory_are_recorded_too() -> None:
    prompts = [{"id": "a", "prompt": "q"}, {"id": "b", "prompt": "r"}, {"id": "a", "prompt": "s"}]
    config = load_config(OFFLINE, ["data.output=null"])  # records and failures in memory
    async with tessy.Synthesis(config, prompts=prompts) as run:
        done = [record.id async for record in run]
    assert sorted(done) == ["a", "b"]
    assert [(f.id, f.failure.kind) for f in run.failures] == [("the given list:3", "duplicate_id")]
    assert "item 1 has it too" in f"{run.failures[0].failure}"


# -- unattended runs ---------------------------------------------------------------------------


def synth_argv(out: Path, *extra: str, source: Path = PROMPTS) -> list[str]:
    return ["synth", "--config", str(OFFLINE), "--input", str(source), "--output", str(out), *extra]


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in flat(err), (needle, err)


def test_too_many_failed_inputs_fail_the_run_and_the_summary_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    write_mixed_input(source)  # 4 of 7 lines are no prompt: 57%
    out = tmp_path / "out.jsonl"
    assert main(synth_argv(out, source=source)) == 3
    captured = capsys.readouterr()
    assert "57.1% (limit 50%, max_failure_rate): TOO MANY" in flat(captured.out)
    assert "over max_failure_rate=0.5" in flat(captured.err)
    saved = json.loads(out.with_name("out.summary.json").read_text(encoding="utf-8"))
    assert saved["too_many_failures"] is True and saved["failure_rate"] == 0.5714
    # The same output, resumed, reports the same rate (finished inputs of the first run count).
    assert main(synth_argv(out, "max_failure_rate=0.6", source=source)) == 0
    # 0: any failure fails the run.
    assert main(synth_argv(tmp_path / "clean.jsonl", "max_failure_rate=0")) == 0
    assert main(synth_argv(tmp_path / "any.jsonl", "max_failure_rate=0", source=source)) == 3


def test_every_run_writes_its_summary_as_data_beside_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs" / "exp #2.jsonl"
    assert main(synth_argv(out)) == 0
    path = out.with_name("exp #2.summary.json")
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["written"] == len(example_ids()) and saved["error"] is None
    assert saved["output"] == str(out) and saved["config_hash"] == records(out)[0]["config_hash"]
    assert {"failure_rate", "max_failure_rate", "samples_per_s", "tokens_per_s", "total"} <= saved.keys()
    assert not list(out.parent.glob("*.tmp"))  # written through a temporary file, then renamed


def test_a_second_run_on_the_same_output_refuses_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tessy.data import OutputStore

    out = tmp_path / "out.jsonl"
    first = OutputStore.open(out, config={}, config_hash="h")  # a run that is writing
    try:
        before = sorted(p.name for p in tmp_path.iterdir())
        assert main(synth_argv(out)) == 1
        one_line_error(capsys.readouterr().err, "another tessy run", f"process {os.getpid()}", str(out))
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even a summary
        with pytest.raises(DataError, match="another tessy run"):
            tessy.synthesize(offline(out))
    finally:
        first.close()
    # Released on close (and by the kernel on a crash, see test_resume_after_kill): a run goes on.
    assert main(synth_argv(out, "data.allow_config_change=true")) == 0


def test_two_processes_on_one_output_write_each_id_once(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ids = write_prompts(tmp_path / "in.jsonl", 40)
    cmd = [sys.executable, "-m", "tessy.cli", *synth_argv(out, "student.latency_s=0.01", source=tmp_path / "in.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    codes = sorted(p.wait(timeout=120) for p in runs)
    assert codes[0] == 0
    assert sorted(r["id"] for r in records(out)) == sorted(ids)  # never two lines for one id
    if codes[1] != 0:
        assert b"another tessy run" in b"".join(p.stderr.read() for p in runs if p.stderr)


@pytest.fixture
def refuse_open(monkeypatch: pytest.MonkeyPatch):
    """Make ``os.open`` of one path fail as a read-only file or folder does (tests run as root here,
    where permissions do not stop a write)."""
    import errno

    real_open = os.open

    def install(target: Path) -> None:
        def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if Path(path) == target and flags & (os.O_WRONLY | os.O_RDWR):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)

    return install


def test_a_read_only_output_is_found_before_any_sample_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], refuse_open: Any
) -> None:
    out = tmp_path / "out.jsonl"
    assert main(synth_argv(out, "--limit", "1")) == 0
    before = out.read_bytes()
    refuse_open(out)
    assert main(synth_argv(out)) == 1
    one_line_error(capsys.readouterr().err, f"cannot write to {out}", "Permission denied")
    assert out.read_bytes() == before and not failed_path(out).exists()


def test_a_read_only_folder_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], refuse_open: Any
) -> None:
    out = tmp_path / "out.jsonl"
    refuse_open(tmp_path / "out.lock")
    assert main(synth_argv(out)) == 1
    one_line_error(capsys.readouterr().err, f"cannot write in the folder {tmp_path}")
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only files")
def test_a_really_read_only_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("")
    out.chmod(0o444)
    assert main(synth_argv(out)) == 1
    one_line_error(capsys.readouterr().err, "cannot write to")


def test_an_output_below_a_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "runs").write_text("a file")
    assert main(synth_argv(tmp_path / "runs" / "out.jsonl")) == 1
    one_line_error(capsys.readouterr().err, "is a file, not a folder")


def test_a_full_disk_ends_the_run_in_one_line_with_no_torn_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from tessy import jsonl

    out = tmp_path / "out.jsonl"
    real_write = os.write
    lines = 0

    def fills_up(fd: int, data: bytes) -> int:
        nonlocal lines
        lines += 1
        if lines <= 2:
            return real_write(fd, data)
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jsonl.os, "write", fills_up)
    assert main(synth_argv(out, "max_in_flight=1")) == 1
    monkeypatch.undo()
    one_line_error(capsys.readouterr().err, "No space left on device", str(out))
    assert len(records(out)) == 2  # every line whole; the third taken back
    # Resumed once there is room: the rest is written, nothing twice.
    assert main(synth_argv(out)) == 0
    assert sorted(r["id"] for r in records(out)) == sorted(example_ids())


def test_a_config_that_is_not_utf8_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "run.yaml"
    config.write_bytes(OFFLINE.read_bytes() + b"\n# caf\xe9\n")
    assert main(["synth", "--config", str(config), "--output", str(tmp_path / "out.jsonl")]) == 1
    one_line_error(capsys.readouterr().err, "is not UTF-8")


def test_progress_lines_go_to_a_stderr_that_is_no_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    write_mixed_input(source)
    out = tmp_path / "out.jsonl"
    assert main(synth_argv(out, "progress_interval_s=0.000001", "max_failure_rate=1", source=source)) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("synth: ")]
    assert err, "no progress line"
    last = err[-1]
    assert "/7 inputs" in last and "samples/s" in last and "tokens/s" in last and "ETA" in last
    assert "failed bad input lines 4" in last


async def test_a_stalled_run_still_logs_a_progress_line() -> None:
    from tessy.cli.common import ProgressLog

    lines: list[str] = []
    log = ProgressLog("synth", 0.05, lines.append)
    beat = asyncio.create_task(log.heartbeat())
    await asyncio.sleep(0.2)  # no sample ends
    beat.cancel()
    assert len(lines) >= 2 and "no sample has ended yet" in lines[0]


def test_a_progress_line_gives_the_prefix_cache_hit_rate_where_servers_report_it() -> None:
    from tessy.cli.common import ProgressLog
    from tessy.synth import RunSummary

    lines: list[str] = []
    log = ProgressLog("synth", 0.0, lines.append)
    summary = RunSummary(total=4, written=1)
    log(summary)
    assert "prefix cache" not in lines[-1]  # no server said
    summary.reported_prompt_tokens, summary.cached_prompt_tokens = 200, 168
    log(summary)
    assert "prefix cache 84%" in lines[-1]
