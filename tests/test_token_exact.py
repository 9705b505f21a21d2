"""Token-exact hand-offs with fake tokenizers: each role's prompt is kept as ids, incrementally."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from conftest import example_lexicon, toks
from tessy import Engine, Role, Sample, SampleResult, get_format
from tessy.backends import GenerateRequest
from tessy.fakes import FakeTokenizer, ScriptedBackend, ScriptedPredictor
from tessy.text import TokenView

PROMPT = "What is 17 + 25?"


def token_backend(tokenizer: FakeTokenizer, *script: str | Sequence[str]) -> ScriptedBackend:
    return ScriptedBackend(list(script), tokenizer=tokenizer, token_ids=True)


def run(engine: Engine) -> SampleResult:
    return asyncio.run(engine.run_sample(Sample.from_prompt("s1", PROMPT)))


def prompt_ids(request: GenerateRequest) -> list[int]:
    assert request.prompt.token_ids is not None
    return list(request.prompt.token_ids)


def assert_exact(backend: ScriptedBackend, tokenizer: FakeTokenizer) -> None:
    """Every prompt's ids decode to its text, and each extends the previous one."""
    previous: list[int] = []
    for request in backend.requests:
        ids = prompt_ids(request)
        assert tokenizer.decode(ids) == request.prompt.text
        assert ids[: len(previous)] == previous
        previous = ids


@pytest.fixture
def tokenizers() -> tuple[FakeTokenizer, FakeTokenizer]:
    return FakeTokenizer(), FakeTokenizer()  # two vocabularies, like two models


def worked_example(
    st: FakeTokenizer, tt: FakeTokenizer, teacher_format: str = "qwen3", streaming: bool = False
) -> tuple[Engine, ScriptedBackend, ScriptedBackend]:
    """design.md's worked example, with the teacher in ``teacher_format``."""
    if teacher_format == "qwen3":
        end = ["\n", "</think>"]
    else:  # the harmony teacher closes its analysis and opens the final channel
        end = ["<|end|>", "<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "42"]
    student = token_backend(
        st,
        toks("Okay|,| so| I| need| to| add| 17"),
        toks(" Let| me| double|-check|:| 42| -| 25"),
        toks("The| answer| is| 42|."),
    )
    teacher_end = [*toks(",| correct|."), *end]
    teacher_script = [toks(" 17| +| 25| =| 42|.| Now| verify")]
    if streaming:  # one request runs to the end of thinking when no boundary stops it
        teacher_script.append([*toks(" double|-check|:| 42| -| 25| =| 17"), *teacher_end])
    else:
        teacher_script += [toks(" double|-check|:| 42| -| 25| =| 17"), teacher_end]
    teacher = token_backend(tt, *teacher_script)
    options = {"current_date": "2026-11-26"} if teacher_format == "gpt-oss" else {}
    engine = Engine(
        Role("teacher", teacher, get_format(teacher_format, options=options), example_lexicon(), 8, tokenizer=tt),
        Role("student", student, get_format("qwen3"), example_lexicon(), 8, tokenizer=st),
        streaming=streaming,
    )
    return engine, student, teacher


class TestTokenExact:
    @pytest.mark.parametrize("streaming", [False, True])
    @pytest.mark.parametrize("teacher_format", ["qwen3", "gpt-oss"])
    def test_prompts_are_exact_and_extend_each_other(
        self, tokenizers: tuple[FakeTokenizer, FakeTokenizer], teacher_format: str, streaming: bool
    ) -> None:
        st, tt = tokenizers
        engine, student, teacher = worked_example(st, tt, teacher_format, streaming)
        result = run(engine)
        assert result.ok, result.failure
        assert_exact(student, st)
        assert_exact(teacher, tt)
        assert result.stats.prefix_misses == 0
        thinking = "Okay, so 17 + 25 = 42. Let me double-check: 42 - 25 = 17, correct."
        assert result.thinking == thinking == "".join(s.text for s in result.spans if s.phase == "think")
        # The record is in the student's format, with none of the teacher's markup.
        assert result.response == f"<think>\n{thinking}\n</think>\n\nThe answer is 42."
        for marker in ("<|start|>", "<|end|>", "<|channel|>", "<|message|>", "assistantfinal"):
            assert marker not in (result.response or "")

    def test_own_tokens_keep_the_models_ids_and_the_others_text_is_encoded_on_its_own(
        self, tokenizers: tuple[FakeTokenizer, FakeTokenizer]
    ) -> None:
        st, tt = tokenizers
        engine, student, teacher = worked_example(st, tt)
        run(engine)
        first, second = prompt_ids(student.requests[0]), prompt_ids(student.requests[1])
        # Student's second prompt = its first + its own kept ids ("Okay", ",", " so") + the
        # teacher's span encoded by itself.
        kept = st.ids_of(["Okay", ",", " so"])
        assert second == first + kept + st.encode(" 17 + 25 = 42.")
        t_first, t_second = prompt_ids(teacher.requests[0]), prompt_ids(teacher.requests[1])
        assert t_first[-3:] == tt.encode("Okay, so")
        assert t_second == t_first + tt.ids_of(toks(" 17| +| 25| =| 42|.")) + tt.encode(" Let me")

    def test_prompts_are_snapshots(self, tokenizers: tuple[FakeTokenizer, FakeTokenizer]) -> None:
        st, tt = tokenizers
        engine, student, _ = worked_example(st, tt)
        run(engine)
        views = [r.prompt.token_ids for r in student.requests]
        assert all(isinstance(v, TokenView) for v in views)
        assert [len(v) for v in views if v is not None] == sorted(len(v) for v in views if v is not None)

    def test_roles_without_a_tokenizer_send_text_only(self) -> None:
        student = ScriptedBackend(["Okay, so</think>", "4"], token_ids=True)
        teacher = ScriptedBackend(["unused"])
        engine = Engine(
            Role("teacher", teacher, get_format("qwen3"), example_lexicon()),
            Role("student", student, get_format("qwen3"), example_lexicon()),
        )
        result = run(engine)
        assert result.ok
        assert all(r.prompt.token_ids is None for r in student.requests)


class TestEdges:
    def make(
        self, st: FakeTokenizer, student_script: list[list[str]], cuts: list[int | None]
    ) -> tuple[Engine, ScriptedBackend]:
        student = token_backend(st, *student_script)
        engine = Engine(
            Role("teacher", ScriptedBackend(["unused"]), get_format("qwen3"), example_lexicon()),
            Role("student", student, get_format("qwen3"), ScriptedPredictor(cuts), 8, tokenizer=st),
            mode="student-only",
        )
        return engine, student

    def test_answer_prompt_that_drops_the_roles_own_whitespace_is_counted_as_a_miss(self) -> None:
        st = FakeTokenizer()
        # The student's thinking ends with a blank line it wrote itself and already sent back
        # in a prompt; the stored thinking drops it, so the answer prompt cuts back into ids.
        student = token_backend(st, toks("so| 4.|\n\n"), toks("</think>"), toks("Four."))
        engine = Engine(
            Role("teacher", ScriptedBackend(["unused"]), get_format("qwen3"), example_lexicon()),
            Role("student", student, get_format("qwen3"), ScriptedPredictor(responder=lambda q: None), 3, tokenizer=st),
        )
        result = run(engine)
        assert result.ok, result.failure
        assert result.response == "<think>\nso 4.\n</think>\n\nFour."
        answer = student.requests[-1]
        assert answer.prompt.text.endswith("<think>\nso 4.\n</think>\n\n")
        assert st.decode(prompt_ids(answer)) == answer.prompt.text
        assert result.stats.prefix_misses == 1

    def test_a_trailing_newline_the_answer_suffix_adds_back_keeps_the_prefix(self) -> None:
        st = FakeTokenizer()
        student = token_backend(st, toks("so| 4.|\n"), toks("</think>"), toks("Four."))
        engine = Engine(
            Role("teacher", ScriptedBackend(["unused"]), get_format("qwen3"), example_lexicon()),
            Role("student", student, get_format("qwen3"), ScriptedPredictor(responder=lambda q: None), 3, tokenizer=st),
        )
        result = run(engine)
        assert result.response == "<think>\nso 4.\n</think>\n\nFour."
        assert result.stats.prefix_misses == 0
        assert_exact(student, st)

    def test_a_piece_cut_inside_its_token_is_encoded_as_text(self) -> None:
        st = FakeTokenizer()
        # The end-of-thinking marker starts inside the last token: " 4.</th" + "ink>".
        engine, student = self.make(st, [["so", " 4.</th", "ink>"], ["Four."]], [None])
        result = run(engine)
        assert result.ok, result.failure
        answer = student.requests[-1]
        assert st.decode(prompt_ids(answer)) == answer.prompt.text
        assert answer.prompt.text.endswith("<think>\nso 4.\n</think>\n\n")
        assert " 4.</th" not in [st.decode([i]) for i in prompt_ids(answer)]

    def test_tokens_holding_part_of_a_character_are_not_kept_without_it(self) -> None:
        st = FakeTokenizer()
        # The thinking ends on a token with an empty piece (the first bytes of a character whose
        # completing token never came): its id stands for no text, so it is not kept.
        engine, student = self.make(st, [["so", " 4", ""], ["Four."]], [None])
        run(engine)
        answer = prompt_ids(student.requests[1])
        assert st.decode(answer) == student.requests[1].prompt.text
        assert st.ids_of(["so", " 4"]) == answer[-5:-3]
        assert st.ids_of([""])[0] not in answer


class TestTokenView:
    def test_snapshot_and_prefix(self) -> None:
        ids = [1, 2, 3]
        a = TokenView(ids)
        ids.append(4)
        b = TokenView(ids)
        assert list(a) == [1, 2, 3] and len(b) == 4
        assert a[-1] == 3 and a[1:] == [2, 3]
        assert b.startswith(a) and not a.startswith(b)
        assert b.startswith([1, 2]) and not b.startswith([2])
        assert a == [1, 2, 3] and a.tolist() == [1, 2, 3]
        with pytest.raises(IndexError):
            a[3]
