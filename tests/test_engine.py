"""The rules of design.md section 1, pinned with scripted fakes."""

from __future__ import annotations

import asyncio

import pytest

from conftest import make_engine, scripted, toks
from tessy import BackendError, Engine, Limits, Mode, RepetitionGuard, Role, Sample, get_format
from tessy.backends import GenerateRequest, Generation
from tessy.boundary import CutQuery
from tessy.fakes import ScriptedBackend, ScriptedPredictor
from tessy.records import Failure

PROMPT = Sample.from_prompt("s1", "What is 17 + 25?")
QWEN_HEADER = "<|im_start|>user\nWhat is 17 + 25?<|im_end|>\n<|im_start|>assistant\n<think>\n"


def run(engine, sample=PROMPT):
    return asyncio.run(engine.run_sample(sample))


class TestWorkedExample:
    """design.md's table, step by step."""

    def test_response_spans_and_stats(self, worked_example):
        student, teacher = worked_example
        result = run(make_engine(student, teacher))
        assert result.ok, result.failure
        assert result.response == (
            "<think>\nOkay, so 17 + 25 = 42. Let me double-check: 42 - 25 = 17, correct.\n</think>\n\nThe answer is 42."
        )
        # Six spans in the table; the two adjacent teacher spans (steps 4 and 5) are merged.
        assert [(s.source, s.phase, s.text) for s in result.spans] == [
            ("student", "think", "Okay, so"),
            ("teacher", "think", " 17 + 25 = 42."),
            ("student", "think", " Let me"),
            ("teacher", "think", " double-check: 42 - 25 = 17, correct."),
            ("student", "answer", "The answer is 42."),
        ]
        stats = result.stats
        assert (stats.switches, stats.requests, stats.discarded_tokens) == (3, 6, 13)
        assert stats.student_tokens == 3 + 2 + 5
        assert stats.teacher_tokens == 6 + 8 + 4  # the trailing newline is kept, then trimmed by the format
        assert stats.guards == []
        assert student.remaining == 0 and teacher.remaining == 0

    def test_each_request_continues_the_shared_text_in_its_own_format(self, worked_example):
        student, teacher = worked_example
        run(make_engine(student, teacher))
        s_prompts = [r.prompt.text for r in student.requests]
        t_prompts = [r.prompt.text for r in teacher.requests]
        assert s_prompts[0] == QWEN_HEADER  # step 1: the student starts
        assert t_prompts[0] == QWEN_HEADER + "Okay, so"  # step 2
        assert s_prompts[1] == QWEN_HEADER + "Okay, so 17 + 25 = 42."  # step 3
        assert t_prompts[1] == QWEN_HEADER + "Okay, so 17 + 25 = 42. Let me"  # step 4
        assert t_prompts[2] == QWEN_HEADER + "Okay, so 17 + 25 = 42. Let me double-check: 42 - 25 = 17"  # step 5
        # Step 6: the student answers after the whole thinking, closed in its format.
        assert s_prompts[2] == (
            QWEN_HEADER + "Okay, so 17 + 25 = 42. Let me double-check: 42 - 25 = 17, correct.\n</think>\n\n"
        )
        assert [r.max_tokens for r in teacher.requests] == [8, 8, 8]
        assert all(r.stop == ("</think>",) for r in teacher.requests)
        assert [r.phase for r in student.requests] == ["think", "think", "answer"]
        assert {r.sample_id for r in student.requests + teacher.requests} == {"s1"}


class TestCuts:
    def test_first_token_is_never_cut(self):
        # The student starts with capability text: its first token is kept all the same.
        student = scripted(toks("17| +| 25"), toks("Done|."))
        teacher = scripted(toks(" +| 25| =| 42|.|</think>"))
        result = run(make_engine(student, teacher))
        assert result.spans[0].source == "student" and result.spans[0].text == "17"
        assert result.spans[1].text == " + 25 = 42."

    def test_a_predictor_cannot_cut_before_the_first_token(self):
        student = scripted(toks("Okay|,| so"))
        result = run(make_engine(student, scripted(), student_predictor=ScriptedPredictor([-1])))
        assert not result.ok and result.failure is not None and result.failure.kind == "BoundaryError"

    def test_cut_completes_the_word(self):
        # design.md: had step 4 been cut after " double", the span ends at "double-check:".
        student = scripted(toks("Okay|,| so| I"), toks(" Fine|.|</think>"), toks("A|."))
        teacher = scripted(toks(" double|-check|:| 42| -| 25| =| 17"))
        result = run(
            make_engine(
                student,
                teacher,
                student_predictor=ScriptedPredictor([2, None]),
                teacher_predictor=ScriptedPredictor([0]),
            )
        )
        assert [(s.source, s.text) for s in result.spans if s.phase == "think"] == [
            ("student", "Okay, so"),
            ("teacher", " double-check:"),
            ("student", " Fine."),
        ]
        assert result.stats.discarded_tokens == 1 + 5
        assert result.stats.switches == 2

    def test_word_running_past_the_chunk_is_finished_by_the_same_role(self):
        student = scripted(toks("Okay|,| so| I"), toks(" Good|.|</think>"), toks("A|."))
        # The teacher's chunk (k = 2) ends inside "recompute", and the cut falls in that word.
        teacher = scripted(toks(" we| re"), toks("comp|ute| it| now"))
        engine = Engine(
            Role("teacher", teacher, get_format("qwen3"), ScriptedPredictor([1]), chunk_tokens=2),
            Role("student", student, get_format("qwen3"), ScriptedPredictor([2, None]), chunk_tokens=4),
            limits=Limits(word_completion_tokens=4),
        )
        result = run(engine)
        assert [(s.source, s.text) for s in result.spans if s.phase == "think"] == [
            ("student", "Okay, so"),
            ("teacher", " we recompute"),
            ("student", " Good."),
        ]
        # The word was finished by one more teacher request, asking for the completion budget.
        assert [r.max_tokens for r in teacher.requests] == [2, 4]
        assert teacher.requests[1].prompt.text.endswith("Okay, so we re")
        assert result.stats.discarded_tokens == 1 + 2
        assert result.stats.requests == 5

    def test_a_word_longer_than_the_completion_budget_keeps_the_turn(self):
        # The cut falls in "12345678", which does not end within the 2-token completion: the
        # teacher keeps the turn rather than hand over in the middle of the number.
        student = scripted(toks("Okay|,| so| I"), toks("A|."))
        teacher = scripted(toks(" the| 12"), toks("34|56"), toks("78| is"), toks(" big|."), toks("</think>"))
        engine = Engine(
            Role("teacher", teacher, get_format("qwen3"), ScriptedPredictor([1, None, None]), chunk_tokens=2),
            Role("student", student, get_format("qwen3"), ScriptedPredictor([2]), chunk_tokens=4),
            limits=Limits(word_completion_tokens=2),
        )
        result = run(engine)
        assert result.ok, result.failure
        assert [(s.source, s.text) for s in result.spans if s.phase == "think"] == [
            ("student", "Okay, so"),
            ("teacher", " the 12345678 is big."),
        ]
        assert result.stats.switches == 1

    def test_roles_switch_only_on_a_cut(self):
        # A predictor that never cuts: the student writes the whole thinking alone.
        never = ScriptedPredictor(responder=lambda q: None)
        student = scripted(toks("Okay|,| so| 1| +| 1"), toks("| =| 2|.|</think>"), toks("2"))
        teacher = scripted()
        result = run(make_engine(student, teacher, k=6, student_predictor=never))
        assert result.ok
        assert {s.source for s in result.spans} == {"student"}
        assert teacher.requests == [] and result.stats.switches == 0

    def test_predictor_sees_the_shared_context_and_the_chunk(self):
        seen: list[CutQuery] = []

        def spy(q: CutQuery) -> int | None:
            seen.append(q)
            return None

        student = scripted(toks("Okay|,| so| let|</think>"), toks("A|."))
        run(make_engine(student, scripted(), student_predictor=ScriptedPredictor(responder=spy)))
        assert seen[0].role == "student" and list(seen[0].pieces) == ["Okay", ",", " so", " let"]
        # The end of thinking came with this chunk: a cut must leave a next token inside it.
        assert seen[0].max_position == 2
        assert seen[0].context.text == ""


class TestEndOfThinking:
    @pytest.mark.parametrize("writer", ["student", "teacher"])
    def test_either_role_may_end_the_thinking(self, writer):
        if writer == "student":
            student = scripted(toks("Okay|,| so| done|.|\n|</think>"), toks("Answer|."))
            teacher = scripted()
        else:
            student = scripted(toks("Okay|,| so| I"), toks("Answer|."))
            teacher = scripted(toks(" I| add| them|.|</think>"))
        result = run(
            make_engine(
                student,
                teacher,
                student_predictor=ScriptedPredictor(responder=lambda q: None) if writer == "student" else None,
            )
        )
        assert result.ok
        assert result.spans[-1].phase == "answer" and result.spans[-1].source == "student"
        assert result.response.endswith("\n</think>\n\nAnswer.")

    def test_end_of_sequence_ends_thinking_for_chat_models(self):
        # ChatML instruct models with thinking pre-filled often just end their turn.
        student = scripted(toks("Okay|,| so| the| sum"), toks("Fine|."))
        teacher = scripted(toks(" the| sum| is| 42|."))  # fewer than k tokens: it ended its turn
        result = run(make_engine(student, teacher, student_format="chatml", teacher_format="chatml"))
        assert result.ok
        assert result.thinking == "Okay, so the sum is 42."

    def test_marker_in_the_text_is_found_when_the_server_ignores_stop(self):
        class IgnoresStop(ScriptedBackend):
            async def generate(self, request: GenerateRequest) -> Generation:
                pieces = self._next(request)[: request.max_tokens]
                return Generation(pieces=pieces, finish_reason="length")

        student = scripted(toks("Okay|,| so| I| will| add| them| up"), toks("Yes|."))
        teacher = IgnoresStop([toks(" 2| +| 2| =| 4|.</th|ink>| junk")])
        result = run(make_engine(student, teacher))
        assert result.ok
        assert result.thinking == "Okay, so 2 + 2 = 4."
        # Five student tokens after the cut, and the teacher's piece after the marker.
        assert result.stats.discarded_tokens == 5 + 1

    def test_the_answer_is_written_by_the_student_in_its_format(self, worked_example):
        student, teacher = worked_example
        result = run(make_engine(student, teacher, student_format="qwen3", teacher_format="deepseek-r1"))
        assert teacher.requests[0].prompt.text.startswith("<｜begin▁of▁sentence｜><｜User｜>What is 17 + 25?")
        assert student.requests[-1].phase == "answer"
        assert result.response.startswith("<think>\nOkay, so")


class TestModes:
    @pytest.mark.parametrize(
        ("mode", "think_sources", "answerer"),
        [
            (Mode.TESSY, {"student", "teacher"}, "student"),
            (Mode.TEACHER_ONLY, {"teacher"}, "teacher"),
            (Mode.STUDENT_ONLY, {"student"}, "student"),
            (Mode.TEACHER_THINK, {"teacher"}, "student"),
            (Mode.TEACHER_ANSWER, {"student"}, "teacher"),
            (Mode.TESSY_TEACHER_ANSWER, {"student", "teacher"}, "teacher"),
        ],
    )
    def test_who_writes_what(self, mode, think_sources, answerer):
        student = ScriptedBackend.cycling(["Okay, so", " hmm, so 2 + 2 = 4.</think>"], answers=["Student answer."])
        teacher = ScriptedBackend.cycling([" 2 + 2 = 4, and 4 * 3 = 12.</think>"], answers=["Teacher answer."])
        result = run(make_engine(student, teacher, mode=mode, k=4))
        assert result.ok, result.failure
        assert {s.source for s in result.spans if s.phase == "think"} == think_sources
        answers = [s for s in result.spans if s.phase == "answer"]
        assert {s.source for s in answers} == {answerer}
        assert result.response.endswith(f"</think>\n\n{answerer.capitalize()} answer.")
        assert result.response.startswith("<think>\n")
        if mode.thinker is not None:
            # One role thinks alone: one request for the whole thinking, no switches.
            assert result.stats.switches == 0
            thinker = student if mode.thinker == "student" else teacher
            assert thinker.requests[0].phase == "think"
            assert thinker.requests[0].max_tokens == Limits().max_thinking_tokens

    def test_modes_list_the_roles_they_use(self):
        assert Mode.STUDENT_ONLY.roles == ("student",)
        assert Mode.TEACHER_ANSWER.roles == ("teacher", "student")
        assert Mode.TESSY.answerer == "student" and Mode.TESSY_TEACHER_ANSWER.answerer == "teacher"


class TestGuards:
    def test_thinking_budget_closes_thinking_and_answers(self):
        student = ScriptedBackend.cycling(["Okay, so"], answers=["Short answer."])
        teacher = ScriptedBackend.cycling([" one two three four five six seven eight nine ten"])
        limits = Limits(max_total_tokens=200, max_thinking_tokens=30)
        result = run(make_engine(student, teacher, limits=limits, k=8))
        assert result.ok
        assert result.stats.guards == ["thinking_budget"]
        assert result.stats.think_tokens == 30
        assert result.response.endswith("\n</think>\n\nShort answer.")
        # No request ever asked for more thinking than the budget had left.
        asked = sum(r.max_tokens for r in teacher.requests + student.requests if r.phase == "think")
        assert asked >= 30

    def test_total_budget_fails_a_truncated_answer_and_keeps_its_spans(self):
        student = scripted(toks("Okay|,| so| I|</think>"), toks("a| b| c| d| e| f| g| h"))
        limits = Limits(max_total_tokens=8, max_thinking_tokens=4, repetition=None)
        result = run(
            make_engine(
                student, scripted(), limits=limits, student_predictor=ScriptedPredictor(responder=lambda q: None)
            )
        )
        assert not result.ok
        assert result.failure.startswith("token_budget")
        assert result.response is None
        assert [s.phase for s in result.spans] == ["think", "answer"]
        assert student.requests[-1].max_tokens == 4

    def test_degenerate_repetition_fails_the_sample(self):
        student = ScriptedBackend.cycling(["Okay, so"])
        teacher = ScriptedBackend.cycling([" x = 1; y = 2;"])  # the teacher loops for ever
        limits = Limits(repetition=RepetitionGuard(min_tokens=40, max_period=16, min_repeats=3))
        result = run(make_engine(student, teacher, limits=limits, k=20))
        assert not result.ok and result.failure.startswith("repetition")
        assert result.stats.think_tokens < 200

    def test_repetition_guard_ignores_ordinary_text(self):
        guard = RepetitionGuard()
        text = ("We add the tens, then the ones, and carry when the sum passes nine. " * 1).split()
        assert not guard.is_degenerate(text)
        assert guard.is_degenerate(["ab"] * 200)
        assert guard.is_degenerate(list("abcdefg") * 40)

    def test_failed_requests_are_retried_then_counted(self):
        student = scripted(BackendError("connection reset"), toks("Okay|,| so| I|</think>"), toks("Yes|."))
        result = run(make_engine(student, scripted(), student_predictor=ScriptedPredictor(responder=lambda q: None)))
        assert result.ok
        assert (result.stats.failed_requests, result.stats.requests) == (1, 3)

    def test_too_many_failed_requests_fail_the_sample(self):
        errors = [BackendError("HTTP 503") for _ in range(3)]
        result = run(make_engine(scripted(*errors), scripted(), limits=Limits(max_request_failures=2)))
        assert not result.ok
        assert result.failure.startswith("request_failures") and "HTTP 503" in str(result.failure)
        assert result.stats.failed_requests == 3

    def test_a_non_retryable_error_fails_at_once(self):
        student = scripted(BackendError("HTTP 400: prompt too long", retryable=False))
        result = run(make_engine(student, scripted()))
        assert not result.ok and result.failure == Failure("request_failed", "HTTP 400: prompt too long")
        assert result.stats.requests == 1


def cut_after(word: str) -> ScriptedPredictor:
    """A predictor that cuts after the first piece ``word`` it may cut at, in chunks and streams alike."""

    def find(query: CutQuery) -> int | None:
        return next((i for i, p in enumerate(query.pieces[: query.last + 1]) if p == word), None)

    return ScriptedPredictor(responder=find)


class TestHandOver:
    """A word never spans two roles, whichever role would split it."""

    def glued_pair(self):
        student = scripted(
            toks("Okay|,| so| I"), toks("096| is| big|."), toks("That| is| big|.|</think>"), toks("4096|.")
        )
        teacher = scripted(toks(" 2|^|12| is| 4| Now"))
        return student, teacher

    @pytest.mark.parametrize("streaming", [False, True], ids=["chunked", "streaming"])
    def test_a_role_that_carries_on_the_givers_word_writes_again_after_the_givers_whitespace(self, streaming):
        # The teacher's word "4" ends (its next token is " Now"); the student would carry it on
        # into "4096". That text is dropped, the teacher's space kept, and the student writes again.
        student, teacher = self.glued_pair()
        engine = make_engine(
            student, teacher, student_predictor=cut_after(" so"), teacher_predictor=cut_after(" 4"), streaming=streaming
        )
        result = run(engine)
        assert result.ok, result.failure
        assert [(s.source, s.text) for s in result.spans if s.phase == "think"] == [
            ("student", "Okay, so"),
            ("teacher", " 2^12 is 4 "),
            ("student", "That is big."),
        ]
        assert student.requests[2].prompt.text.endswith("Okay, so 2^12 is 4 ")
        assert result.stats.glued_handoffs == 1
        assert result.stats.switches == 2
        assert result.stats.teacher_tokens == 6  # " 2^12 is 4" and the kept space
        if not streaming:
            assert result.stats.discarded_tokens == 1 + 1 + 4  # " I", " Now", and the glued "096 is big."

    def test_a_role_that_starts_a_new_word_is_kept_as_it_wrote(self, worked_example):
        student, teacher = worked_example
        result = run(make_engine(student, teacher))
        assert result.ok and result.stats.glued_handoffs == 0

    def test_text_the_giver_itself_ended_in_whitespace_is_not_glue(self):
        student = scripted(toks("Okay|,| so |I"), toks("That| is| big|.|</think>"), toks("A|."))
        teacher = scripted(toks("Sum| 4|. | Now"))  # each span ends in its writer's own whitespace
        engine = make_engine(student, teacher, student_predictor=cut_after(" so "), teacher_predictor=cut_after(". "))
        result = run(engine)
        assert result.ok and result.stats.glued_handoffs == 0
        assert [s.text for s in result.spans if s.phase == "think"] == ["Okay, so ", "Sum 4. ", "That is big."]


class TestStreaming:
    def test_streaming_gives_the_same_data_as_unbounded_chunks(self):
        def pair():
            student = ScriptedBackend.cycling(
                ["Okay, so let me see the sum", " Wait, so the check is"], answers=["42."]
            )
            teacher = ScriptedBackend.cycling([" 17 + 25 = 42 holds. Now", " 42 - 25 = 17 as well.</think>"])
            return student, teacher

        s1, t1 = pair()
        chunked = run(make_engine(s1, t1, k=10_000))
        s2, t2 = pair()
        streamed = run(make_engine(s2, t2, streaming=True))
        assert chunked.ok and streamed.ok
        assert [(s.source, s.text) for s in streamed.spans] == [(s.source, s.text) for s in chunked.spans]
        # One request per span, each stopped early at its boundary.
        assert streamed.stats.requests == len(streamed.spans)
        assert s2.aborted_streams + t2.aborted_streams >= streamed.stats.switches

    def test_a_capped_stream_gives_the_same_data_as_an_unbounded_one_with_more_requests(self):
        # A model that writes one fixed text (as a seeded model would): each prompt is continued
        # from where its thinking ends, so the data depend only on where the cuts fall.
        text = (
            "Okay, so we add 17 and 25 to get 42 and then we verify it by subtracting 25 from 42 which "
            "gives 17 back again as expected from the sum of both terms in the list. Wait, let me "
            "check: 42 - 25 = 17 and 42 - 17 = 25 which matches the values given in the question. So "
            "the sum holds.</think>"
        )
        doc = toks("|".join(text.replace(" ", "| ").split("|")))

        def continue_text(request: GenerateRequest) -> list[str]:
            if request.phase == "answer":
                return ["42."]
            thinking = request.prompt.text.split("<think>\n", 1)[1]
            pos, i = 0, 0
            while pos < len(thinking):
                pos += len(doc[i])
                i += 1
            assert "".join(doc[:i]) == thinking
            return doc[i:]

        def spans(stream_tokens):
            student, teacher = (ScriptedBackend(responder=continue_text) for _ in range(2))
            engine = make_engine(student, teacher, streaming=True)
            for role in engine.roles.values():
                role.stream_tokens = stream_tokens
            result = run(engine)
            assert result.ok
            return [(s.source, s.text) for s in result.spans], result.stats.requests

        unbounded, few = spans(10_000)
        capped, many = spans(6)
        assert capped == unbounded and many > few
        assert "".join(t for _, t in unbounded[:-1]) == text.removesuffix("</think>")

    def test_streaming_waits_for_the_lexicon_lookahead(self):
        # "let" alone is capability, "let me" is style: a streaming cut must not be decided on "let".
        student = ScriptedBackend.cycling(["Okay, so"], answers=["ok"])
        teacher = ScriptedBackend.cycling([" we let me check that 2 + 2 = 4.</think>"])
        result = run(make_engine(student, teacher, streaming=True))
        # (the space after "we" is the teacher's: the scripted student glues "Okay" on; see the glue tests)
        assert result.spans[1].text.rstrip() == " we"

    def test_streaming_needs_a_streaming_backend(self):
        class NoStream(ScriptedBackend):
            supports_streaming = False

        with pytest.raises(ValueError, match="cannot stream"):
            make_engine(NoStream(["x"]), scripted(), streaming=True)


class TestConcurrency:
    def test_requests_in_flight_stay_within_the_backend_limit(self):
        student = ScriptedBackend.cycling(["Okay, so"], answers=["A."], latency_s=0.002, max_concurrency=3)
        teacher = ScriptedBackend.cycling([" 1 + 1 = 2.</think>"], latency_s=0.002, max_concurrency=5)
        engine = make_engine(student, teacher)
        samples = [Sample.from_prompt(f"p{i}", f"prompt {i}") for i in range(40)]

        async def go():
            return [r async for r in engine.run(samples, max_in_flight=20)]

        results = asyncio.run(go())
        assert sorted(r.sample.id for r in results) == sorted(s.id for s in samples)
        assert all(r.ok for r in results)
        assert 1 < student.max_in_flight <= 3
        assert 1 < teacher.max_in_flight <= 5

    def test_a_slow_sample_does_not_hold_back_the_others(self):
        slow_done = 0

        class SlowFor(ScriptedBackend):
            async def generate(self, request: GenerateRequest) -> Generation:
                nonlocal slow_done
                if request.sample_id != "slow":
                    return await super().generate(request)
                await asyncio.sleep(0.05)
                slow_done += 1
                return await super().generate(request)

        student = SlowFor.cycling(["Okay, so"], answers=["A."])
        teacher = ScriptedBackend.cycling([" 1 + 1 = 2.</think>"])
        engine = make_engine(student, teacher)
        samples = [Sample.from_prompt("slow", "slow one")] + [Sample.from_prompt(f"f{i}", f"q{i}") for i in range(20)]

        async def go():
            order = []
            async for r in engine.run(samples, max_in_flight=8):
                order.append((r.sample.id, slow_done))
            return order

        order = asyncio.run(go())
        assert [i for i, _ in order][-1] == "slow"  # everyone else finished first...
        # ...while the slow sample was still on its first request: no round waits for it.
        assert max(n for i, n in order if i != "slow") == 0

    def test_input_is_read_lazily_and_in_flight_samples_are_bounded(self):
        pulled = 0

        def samples():
            nonlocal pulled
            for i in range(1000):
                pulled += 1
                yield Sample.from_prompt(f"p{i}", f"q{i}")

        student = ScriptedBackend.cycling(["Okay, so"], answers=["A."], record=False)
        teacher = ScriptedBackend.cycling([" 1 + 1 = 2.</think>"], record=False)
        engine = make_engine(student, teacher)

        async def go():
            async for _ in engine.run(samples(), max_in_flight=5):
                return pulled

        assert asyncio.run(go()) <= 6

    def test_an_unexpected_exception_fails_its_sample_with_a_reason_and_the_others_go_on(self):
        """An unattended run of days must not die at one odd sample (a server's malformed
        field, a bug): that sample fails with what was raised and where; the rest finish."""

        def boom(request):
            if request.sample_id == "bad":
                raise AttributeError("'int' object has no attribute 'get'")
            return "Okay, so</think>" if request.phase == "think" else "A."

        engine = make_engine(ScriptedBackend(responder=boom), scripted(), mode="student-only")
        samples = [Sample.from_prompt(i, "q") for i in ("a", "bad", "b")]

        async def go():
            return {r.sample.id: r async for r in engine.run(samples)}

        results = asyncio.run(go())
        assert results["a"].ok and results["b"].ok
        failure = results["bad"].failure
        assert failure is not None and failure.kind == "unexpected_error"
        assert "AttributeError: 'int' object has no attribute 'get'" in failure.detail
        assert "(at " in failure.detail  # where it was raised


class TestSessions:
    """A sample is a session on both roles: when it ends, however it ends, both roles' backends
    and predictors let go of it at once."""

    @staticmethod
    def cycling_roles() -> tuple[ScriptedBackend, ScriptedBackend, ScriptedPredictor, ScriptedPredictor]:
        student = ScriptedBackend.cycling(["Okay, so let me see", " Wait, so"], answers=["A."])
        teacher = ScriptedBackend.cycling([" 1 + 1 = 2 and 2 + 2 = 4"])
        cuts = ScriptedPredictor(responder=lambda q: min(1, q.max_position))
        return student, teacher, cuts, ScriptedPredictor(responder=lambda q: min(1, q.max_position))

    def test_a_finished_sample_is_released_by_both_roles(self):
        student, teacher, sp, tp = self.cycling_roles()
        limits = Limits(max_total_tokens=200, max_thinking_tokens=60, repetition=None)
        engine = make_engine(student, teacher, student_predictor=sp, teacher_predictor=tp, limits=limits)
        result = run(engine)
        assert result.ok and result.stats.switches > 1
        assert student.sample_state == {} and teacher.sample_state == {}  # the cursors are gone
        assert student.released == teacher.released == sp.released == tp.released == ["s1"]

    def test_a_sample_that_fails_while_thinking_is_released_at_once(self):
        student, _, sp, tp = self.cycling_roles()
        teacher = scripted(BackendError("400: bad request", retryable=False))
        engine = make_engine(student, teacher, student_predictor=sp, teacher_predictor=tp)
        result = run(engine)
        assert result.failure is not None and result.failure.kind == "request_failed"
        assert result.stats.think_tokens > 0 and not any(s.phase == "answer" for s in result.spans)
        assert student.sample_state == {}
        assert student.released == teacher.released == sp.released == tp.released == ["s1"]

    def test_a_sample_stopped_by_the_repetition_guard_is_released(self):
        student = ScriptedBackend.cycling([" la"])
        engine = make_engine(
            student,
            scripted(),
            mode="student-only",
            limits=Limits(repetition=RepetitionGuard(min_tokens=8, max_period=2, min_repeats=3, check_every=1)),
        )
        result = run(engine)
        assert result.failure is not None and result.failure.kind == "repetition"
        assert student.sample_state == {} and student.released == ["s1"]

    def test_samples_cancelled_in_flight_are_released(self):
        student = ScriptedBackend.cycling(["Okay, so let me see"], latency_s=0.01)
        teacher = ScriptedBackend.cycling([" 1 + 1 = 2 and 2 + 2 = 4"], latency_s=0.01)
        engine = make_engine(
            student, teacher, limits=Limits(max_total_tokens=20000, max_thinking_tokens=10000, repetition=None)
        )
        samples = [Sample.from_prompt(f"p{i}", f"q{i}") for i in range(4)]

        async def go():
            task = asyncio.ensure_future(anext(engine.run(samples, max_in_flight=4)))
            await asyncio.sleep(0.1)  # every sample is mid-thinking (none can end: no end marker)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(go())
        assert student.sample_state == {} and teacher.sample_state == {}
        assert sorted(student.released) == sorted(teacher.released) == [s.id for s in samples]

    def test_a_bug_still_releases_the_sample(self):
        def boom(request):
            raise RuntimeError("a bug in a backend")

        student, teacher = ScriptedBackend(responder=boom), scripted()
        result = run(make_engine(student, teacher))
        assert result.failure is not None and result.failure.kind == "unexpected_error"
        assert student.released == teacher.released == ["s1"]


def test_system_prompt_is_rendered_for_chat_messages():
    sample = Sample("c1", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}])
    student = scripted(toks("Okay|</think>"), toks("Hello|."))
    run(make_engine(student, scripted(), student_predictor=ScriptedPredictor(responder=lambda q: None)), sample)
    assert student.requests[0].prompt.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?")
