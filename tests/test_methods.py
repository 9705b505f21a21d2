"""The comparison modes (teacher-score, student-select, teacher-reference, teacher-mix, rsd) with
scripted fakes: each method's rule, pinned on responses whose outcome is known."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tessy import Engine, Limits, Role, Sample, get_format
from tessy.backends import GenerateRequest, ScoreRequest, TokenScores
from tessy.backends.scripted import ScriptedBackend
from tessy.boundary import LexiconPredictor
from tessy.build import build_engine, build_methods
from tessy.check import check_record
from tessy.config import SynthConfig
from tessy.engine.methods import MethodSettings, PromptTemplate, judge, mix_source, parse_score
from tessy.errors import ConfigError
from tessy.records import Mode, Record, SampleResult

FMT = get_format("qwen3")
LIMITS = Limits(max_total_tokens=200, max_thinking_tokens=100, repetition=None)


def role(name: Any, backend: ScriptedBackend) -> Role:
    return Role(name, backend, FMT, LexiconPredictor())


def run(
    mode: str, teacher: ScriptedBackend, student: ScriptedBackend, *ids: str, **settings: Any
) -> list[SampleResult]:
    engine = Engine(
        role("teacher", teacher), role("student", student), mode=mode, limits=LIMITS, methods=MethodSettings(**settings)
    )

    async def go() -> list[SampleResult]:
        samples = [Sample.from_prompt(i, f"Question {i}: what is 17 + 25?") for i in ids or ("q",)]
        out = [r async for r in engine.run(samples)]
        return sorted(out, key=lambda r: r.sample.id)

    return asyncio.run(go())


def assert_checks(result: SampleResult, mode: str) -> None:
    assert result.ok, result.failure
    record = Record.from_result(result, "h", mode)
    assert check_record(record, student_format=FMT) == []


# -- rsd -------------------------------------------------------------------------------------


def table_scorer(probabilities: dict[str, float], default: float = 0.5) -> Any:
    def score(request: ScoreRequest, pieces: Sequence[str]) -> list[float]:
        return [math.log(probabilities.get(p, default)) for p in pieces]

    return score


def rsd_fakes() -> tuple[ScriptedBackend, ScriptedBackend]:
    teacher = ScriptedBackend(
        [
            [" The", " sum", " is", " 42", "."],  # proposal 1: " is" is unlikely to the student
            [" 42", ".", "</think>"],  # after the student's " equals": thinking ends
            ["It", " is", " 42", "."],  # the answer: " is" again
            [" 42", "."],
        ]
    )
    student = ScriptedBackend([[" equals"], [" equals"]], scorer=table_scorer({" is": 0.05}))
    return teacher, student


def test_rsd_keeps_a_teacher_token_the_student_finds_likely_and_replaces_the_first_it_does_not() -> None:
    teacher, student = rsd_fakes()
    (result,) = run("rsd", teacher, student, rsd_propose_tokens=5, rsd_threshold=0.1)
    assert_checks(result, "rsd")
    think = [(s.source, s.text) for s in result.spans if s.phase == "think"]
    answer = [(s.source, s.text) for s in result.spans if s.phase == "answer"]
    assert think == [("teacher", " The sum"), ("student", " equals"), ("teacher", " 42.")]
    assert answer == [("teacher", "It"), ("student", " equals"), ("teacher", " 42.")]
    assert result.response == "<think>\n The sum equals 42.\n</think>\n\nIt equals 42."
    stats = result.stats
    # Four proposals, each scored in one request; two student tokens; nothing else.
    assert (stats.requests, stats.score_requests, len(student.requests)) == (10, 4, 2)
    assert (stats.proposed_tokens, stats.replaced_tokens) == (13, 2)
    assert (stats.teacher_tokens, stats.student_tokens, stats.switches) == (7, 2, 2)
    assert stats.discarded_tokens == 6  # " is 42 ." twice: the replaced token and the proposal after it


def test_rsd_scores_each_proposal_whole_after_the_text_kept_so_far() -> None:
    teacher, student = rsd_fakes()
    run("rsd", teacher, student, rsd_propose_tokens=5)
    scored = [(r.prompt.text[-16:], r.continuation) for r in student.score_requests]
    assert [c for _, c in scored] == [" The sum is 42.", " 42.", "It is 42.", " 42."]
    assert scored[1][0].endswith(" The sum equals")  # the student's token is in the next prompt
    # The student samples exactly one token at the replaced position.
    assert [r.max_tokens for r in student.requests] == [1, 1]
    assert student.requests[0].prompt.text.endswith("<think>\n The sum")


def test_rsd_keeps_a_token_whose_probability_is_exactly_the_threshold() -> None:
    teacher = ScriptedBackend([[" a", " b", "</think>"], ["Done."]])
    student = ScriptedBackend([], scorer=table_scorer({" b": 0.25}))
    (result,) = run("rsd", teacher, student, rsd_threshold=0.25)
    assert [(s.source, s.text) for s in result.spans] == [("teacher", " a b"), ("teacher", "Done.")]
    assert result.stats.replaced_tokens == 0


def test_rsd_judges_each_teacher_token_by_the_student_tokens_that_end_in_it() -> None:
    # Character-level student tokens under word-level teacher tokens.
    chars = TokenScores(
        list(" abc"), [math.log(x) for x in (0.9, 0.5, 0.5, 0.2)], offsets=[(0, 1), (1, 2), (2, 3), (3, 4)]
    )
    assert judge([" ab", "c"], chars) == pytest.approx([math.log(0.9 * 0.5 * 0.5), math.log(0.2)])
    # A student token that straddles two teacher tokens counts in the one where it ends.
    straddle = TokenScores([" a", "bc"], [math.log(0.3), math.log(0.6)], offsets=[(0, 2), (2, 4)])
    assert judge([" ab", "c"], straddle) == pytest.approx([math.log(0.3), math.log(0.6)])
    # A span that leaves out a leading space (some tokenizers' offsets) ends where it ends.
    trimmed = TokenScores(["Ġab", "c"], [math.log(0.3), math.log(0.6)], offsets=[(1, 3), (3, 4)])
    assert judge([" ab", "c"], trimmed) == pytest.approx([math.log(0.3), math.log(0.6)])


class CharTokenizer:
    """Another model's tokenizer: one token per character."""

    def pieces(self, text: str) -> list[str]:
        return list(text)


def test_rsd_works_across_tokenizers_judging_a_teacher_token_by_its_characters_under_the_student() -> None:
    teacher = ScriptedBackend([[" ok", " zz", "</think>"], [" yes", "</think>"], ["Fine."]])
    # Every character is likely, but 'z' is not: " zz" is (0.5 * 0.2 * 0.2) = 0.02 < 0.1.
    student = ScriptedBackend([[" yes"]], tokenizer=CharTokenizer(), scorer=table_scorer({"z": 0.2}, default=0.99))  # type: ignore[arg-type]
    (result,) = run("rsd", teacher, student, rsd_threshold=0.1)
    assert_checks(result, "rsd")
    assert [(s.source, s.text) for s in result.spans if s.phase == "think"] == [
        ("teacher", " ok"),
        ("student", " yes"),
        ("teacher", " yes"),
    ]
    assert result.stats.replaced_tokens == 1


def test_rsd_is_refused_up_front_when_the_students_backend_cannot_score() -> None:
    teacher, student = rsd_fakes()
    student.supports_scoring = False
    for mode in ("rsd", "student-select"):
        with pytest.raises(ValueError, match=r"hf .*vllm or sglang.*llama\.cpp"):
            Engine(role("teacher", teacher), role("student", student), mode=mode)
    Engine(role("teacher", teacher), role("student", student), mode="teacher-score")  # the teacher writes a score


def test_a_config_with_rsd_on_a_llamacpp_student_is_refused_naming_the_backends_that_can(tmp_path: Path) -> None:
    config = SynthConfig.model_validate(
        {
            "mode": "rsd",
            "teacher": {"backend": "scripted", "responses": ["x"]},
            "student": {
                "backend": "openai",
                "server": "llamacpp",
                "model": "m",
                "endpoints": ["http://127.0.0.1:9/v1"],
            },
        }
    )
    with pytest.raises(ConfigError, match="student's log-probabilities") as info:
        build_engine(config)
    assert "backend: hf" in str(info.value) and "vllm or sglang" in str(info.value)


# -- teacher-score and student-select ----------------------------------------------------------

STUDENT_RESPONSES = ["Okay, alpha guess. </think>", "Okay, beta guess. </think>", "Okay, gamma guess. </think>"]


def grading_teacher(grades: dict[str, int]) -> ScriptedBackend:
    """A teacher that grades a candidate by the word it finds in the response part of the prompt."""

    def respond(request: GenerateRequest) -> str:
        text = request.prompt.text
        if "## Your grade" not in text:
            return "Teacher thinking. </think>"
        response = text.split("## Response: reasoning", 1)[1]
        word = next(w for w in grades if w in response)
        return f"It is fine.\n</think>\n\nSome words. Score: {grades[word]}"

    return ScriptedBackend(responder=respond)


def test_teacher_score_keeps_the_candidate_the_teacher_grades_highest_the_first_of_ties() -> None:
    teacher = grading_teacher({"alpha": 3, "beta": 8, "gamma": 8})
    student = ScriptedBackend.cycling(STUDENT_RESPONSES, ["The answer is 42."])
    (result,) = run("teacher-score", teacher, student, candidates=5)
    assert_checks(result, "teacher-score")
    stats = result.stats
    assert stats.candidates == 5 and len(stats.candidate_scores) == 5
    first_best = stats.candidate_scores.index(8.0)
    assert stats.kept_candidate == first_best
    assert {s.source for s in result.spans} == {"student"}
    kept_word = next(w for w in ("alpha", "beta", "gamma") if w in result.thinking)
    assert kept_word in ("beta", "gamma")
    # Every candidate is written by the student under its own session, then graded by the teacher.
    assert {f"q#c{i}" for i in range(5)} <= set(student.released)
    assert len(teacher.requests) == 5 and stats.score_requests == 5
    assert stats.requests == 5 * 2 + 5  # thinking and answer per candidate, one grade each
    assert stats.discarded_tokens > stats.student_tokens  # four candidates and five grades dropped


def test_teacher_score_keeps_the_first_candidate_when_all_grades_are_equal() -> None:
    teacher = grading_teacher({"alpha": 5, "beta": 5, "gamma": 5})
    student = ScriptedBackend.cycling(STUDENT_RESPONSES, ["The answer is 42."])
    (result,) = run("teacher-score", teacher, student, candidates=4)
    assert result.stats.kept_candidate == 0 and result.stats.candidate_scores == [5.0] * 4


def test_a_grade_is_the_last_score_the_teacher_writes() -> None:
    assert parse_score("Score: 3 ... on reflection, Score: **9**") == 9.0
    assert parse_score("score = 7.5") == 7.5
    assert parse_score("no grade here") is None


def test_student_select_keeps_the_teacher_candidate_with_the_highest_mean_student_log_probability() -> None:
    # A long candidate of likely tokens beats a short one of unlikely tokens though its total is lower.
    teacher = ScriptedBackend.cycling(
        ["Short odd. </think>", "Long plain words that go on and on and on and on. </think>"], ["Answer."]
    )
    student = ScriptedBackend([], scorer=table_scorer({" odd": 0.01, "Short": 0.01}, default=0.6))
    (result,) = run("student-select", teacher, student, candidates=4)
    assert_checks(result, "student-select")
    stats = result.stats
    assert "Long plain" in result.thinking and {s.source for s in result.spans} == {"teacher"}
    assert stats.kept_candidate == stats.candidate_scores.index(max(s for s in stats.candidate_scores if s is not None))
    # Each candidate's stored response (after the opened thinking) is scored once, under the student.
    assert len(student.score_requests) == 4 and stats.score_requests == 4
    for request in student.score_requests:
        assert request.prompt.text.endswith("<think>\n") and request.continuation.endswith("\n</think>\n\nAnswer.")


# -- teacher-reference -----------------------------------------------------------------------


def test_teacher_reference_gives_the_student_the_teachers_answer_and_stores_the_users_prompt() -> None:
    teacher = ScriptedBackend.cycling(["Teacher works it out. </think>"], ["REFERENCE: it is 42."])
    student = ScriptedBackend.cycling(["Okay, so 42. </think>"], ["It is 42."])
    (result,) = run("teacher-reference", teacher, student)
    assert_checks(result, "teacher-reference")
    assert {s.source for s in result.spans} == {"student"}
    assert result.sample.messages == [{"role": "user", "content": "Question q: what is 17 + 25?"}]
    student_prompts = [r.prompt.text for r in student.requests]
    assert all("REFERENCE: it is 42." in p and "Question q: what is 17 + 25?" in p for p in student_prompts)
    assert result.stats.reference_in_prompt and result.stats.candidates == 1
    record = Record.from_result(result, "h", "teacher-reference").to_json()
    assert record["stats"]["reference_in_prompt"] is True
    assert "REFERENCE" not in str(record["messages"])
    # The teacher's response cost tokens and requests, and is not in the record.
    assert result.stats.discarded_tokens >= len("Teacher works it out.".split())
    assert result.stats.requests == 4


# -- teacher-mix -----------------------------------------------------------------------------


def test_teacher_mix_is_one_to_one_by_sample_count_and_fixed_per_id() -> None:
    ids = [f"id-{i}" for i in range(4000)]
    teacher_share = sum(mix_source(i, 0.5) is Mode.TEACHER_ONLY for i in ids) / len(ids)
    assert abs(teacher_share - 0.5) < 0.025
    assert [mix_source(i, 0.5) for i in ids[:50]] == [mix_source(i, 0.5) for i in ids[:50]]
    assert all(mix_source(i, 1.0) is Mode.TEACHER_ONLY for i in ids[:50])
    assert all(mix_source(i, 0.0) is Mode.STUDENT_ONLY for i in ids[:50])


def test_teacher_mix_samples_are_wholly_one_roles_and_a_rerun_chooses_alike() -> None:
    def fakes() -> tuple[ScriptedBackend, ScriptedBackend]:
        return (
            ScriptedBackend.cycling(["Teacher text. </think>"], ["T."]),
            ScriptedBackend.cycling(["Student text. </think>"], ["S."]),
        )

    ids = [f"s{i}" for i in range(12)]
    first = run("teacher-mix", *fakes(), *ids)
    second = run("teacher-mix", *fakes(), *ids)
    sources = [{s.source for s in r.spans} for r in first]
    assert all(len(s) == 1 for s in sources)
    assert sources == [{s.source for s in r.spans} for r in second]
    assert [next(iter(s)) for s in sources] == [
        "teacher" if mix_source(r.sample.id, 0.5) is Mode.TEACHER_ONLY else "student" for r in first
    ]
    for r in first:
        assert_checks(r, "teacher-mix")


# -- config, prompts, check -------------------------------------------------------------------


def test_the_methods_section_leaves_the_config_hash_alone_until_it_is_set() -> None:
    base = {
        "mode": "teacher-score",
        "teacher": {"backend": "scripted", "responses": ["x"]},
        "student": {"backend": "scripted", "responses": ["y"]},
    }
    unset = SynthConfig.model_validate(base)
    assert unset.methods is None
    with_methods = SynthConfig.model_validate({**base, "methods": {"candidates": 3}})
    assert with_methods.config_hash() != unset.config_hash()
    assert build_methods(with_methods.methods).candidates == 3


def test_the_shipped_prompts_say_they_are_ours_and_their_notes_are_never_sent() -> None:
    settings = build_methods(None)
    for template in (settings.score_prompt, settings.reference_prompt):
        raw = Path(template.source).read_text(encoding="utf-8")
        assert "did not publish" in raw and "tessy's own" in raw
        assert "did not publish" not in template.text
    filled = settings.score_prompt.fill(question="Q{answer}", thinking="T", answer="A")
    assert "Q{answer}" in filled and "\nA\n" in filled  # one pass: a value's braces stay as they are


def test_a_prompt_file_without_its_placeholder_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "score.md"
    bad.write_text("note\n---\nGrade this: {question}\n", encoding="utf-8")
    config = SynthConfig.model_validate(
        {
            "mode": "teacher-score",
            "teacher": {"backend": "scripted", "responses": ["x"]},
            "student": {"backend": "scripted", "responses": ["y"]},
            "methods": {"score_prompt": str(bad)},
        }
    )
    with pytest.raises(ConfigError, match=re.escape("lacks {answer}")):
        build_methods(config.methods)
    assert (
        PromptTemplate.parse("{reference}", placeholders=("reference",), required=("reference",)).text == "{reference}"
    )


def test_check_flags_a_teacher_score_record_that_did_not_keep_the_first_best() -> None:
    teacher = grading_teacher({"alpha": 3, "beta": 8, "gamma": 8})
    student = ScriptedBackend.cycling(STUDENT_RESPONSES, ["The answer is 42."])
    (result,) = run("teacher-score", teacher, student, candidates=5)
    first_best = result.stats.candidate_scores.index(max(x for x in result.stats.candidate_scores if x is not None))
    result.stats.kept_candidate = (first_best + 1) % 5
    record = Record.from_result(result, "h", "teacher-score")
    assert [v.rule for v in check_record(record, student_format=FMT)] == ["mode"]


def test_method_counters_round_trip_through_a_record_and_old_records_lack_them() -> None:
    teacher, student = rsd_fakes()
    (result,) = run("rsd", teacher, student, rsd_propose_tokens=5)
    obj = Record.from_result(result, "h", "rsd").to_json()
    back = Record.from_json(obj)
    assert (back.stats.proposed_tokens, back.stats.replaced_tokens, back.stats.score_requests) == (13, 2, 4)
    tessy = SampleResult(Sample.from_prompt("x", "q"), [], type(result.stats)(), "r")
    assert "candidates" not in Record.from_result(tessy, "h", "tessy").to_json()["stats"]


def test_a_synthesis_in_a_method_mode_resumes_skipping_finished_ids(tmp_path: Path) -> None:
    from tessy import synthesize

    config = SynthConfig.model_validate(
        {
            "mode": "teacher-mix",
            "teacher": {"backend": "scripted", "responses": ["Teacher text. </think>"], "answers": ["T."]},
            "student": {"backend": "scripted", "responses": ["Student text. </think>"], "answers": ["S."]},
        }
    )
    out = tmp_path / "out.jsonl"
    prompts = [{"id": f"p{i}", "prompt": f"Question {i}?"} for i in range(6)]
    first = synthesize(config, prompts=prompts, output=out)
    again = synthesize(config, prompts=prompts, output=out)
    assert (first.written, again.written, again.skipped_done) == (6, 0, 6)
    assert first.requests_per_kept_token > 0 and first.to_dict()["generated_per_kept_token"] >= 1


def test_rsd_never_keeps_a_piece_of_an_end_marker_where_a_replacement_could_complete_it() -> None:
    # The head kept before a rejected token ends in "</th": held back, or the student's "ink>"
    # would finish "</think>" inside the stored thinking.
    teacher = ScriptedBackend([[" a", "</th", " zz"], ["</think>"], ["Done."]])
    student = ScriptedBackend([["ink>"]], scorer=table_scorer({" zz": 0.01}))
    (result,) = run("rsd", teacher, student)
    assert_checks(result, "rsd")
    assert result.thinking == " aink>" and "</th" not in result.thinking
    assert result.stats.discarded_tokens == 2  # "</th" held back, " zz" replaced


def test_the_methods_example_config_loads_with_every_comparison_mode() -> None:
    from tessy.config import load_config

    path = Path(__file__).resolve().parents[1] / "examples" / "methods-hf-cpu.yaml"
    for mode in ("rsd", "teacher-score", "teacher-reference", "teacher-mix", "student-select"):
        config = load_config(path, [f"mode={mode}"])
        assert config.mode.value == mode and config.methods is not None
        assert config.student.backend == "hf"


def test_echoed_scores_carry_each_tokens_character_span_in_the_continuation() -> None:
    from tessy.backends.wire import echo_scores

    # "PROMPT" then " ab" + "c": the server echoes the prompt's tokens and the continuation's.
    logprobs = {
        "tokens": ["PRO", "MPT", " ab", "c", "!"],
        "token_logprobs": [None, -0.1, -0.2, -0.3, -0.4],
        "text_offset": [0, 3, 6, 9, 10],
    }
    scores = echo_scores(logprobs, 6, 10, where="test")
    assert scores.logprobs == [-0.2, -0.3] and scores.offsets == [(0, 3), (3, 4)]
    assert judge([" a", "bc"], scores) == pytest.approx([0.0, -0.5])  # " ab" ends in "bc"
