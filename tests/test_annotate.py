"""Annotation: the judge-output parser, verbatim span location, the lexicon judge, and whole runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tessy import BackendError, Role, get_format
from tessy.backends import GenerateRequest
from tessy.boundary import LexiconPredictor
from tessy.fakes import ScriptedBackend
from tessy.jsonl import read_jsonl
from tessy.predictor.annotate import (
    JUDGE_EXAMPLES,
    JudgeOutputError,
    aannotate,
    judge_prompt,
    lexicon_spans,
    locate_spans,
    parse_judge_output,
    rejected_path,
)

# -- the parser --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('["Okay, so", "Hmm,"]', ["Okay, so", "Hmm,"]),
        ("[]", []),
        ('```json\n["Wait,", "So"]\n```', ["Wait,", "So"]),
        ('```\n["Wait,"]\n```\nThose are all.', ["Wait,"]),
        ('Here are the style phrases:\n["Let me", "Now"]\nI hope this helps!', ["Let me", "Now"]),
        ('The passage [see above] has: ["Alright,"]', ["Alright,"]),  # a bracket that is not a list
        ('["Okay,", "So", "Then', ["Okay,", "So"]),  # cut short by the token limit
        ('["Okay,", "So",', ["Okay,", "So"]),
        ('[\n  "Hmm"\n]\n["ignored second list"]', ["Hmm"]),
        ('{"spans": ["Okay", "So"]}', ["Okay", "So"]),  # wrapped in an object
        ('[1, ["not this"]] ["but this"]', ["but this"]),  # never a list nested in a rejected one
        ('["with \\"quotes\\" inside"]', ['with "quotes" inside']),
    ],
)
def test_the_parser_finds_the_list_around_fences_and_prose(output: str, expected: list[str]):
    assert parse_judge_output(output) == expected


@pytest.mark.parametrize(
    "output",
    [
        "",
        "There are no style phrases here.",
        "['single', 'quotes']",  # not JSON
        "[1, 2, 3]",
        '[["Okay"], ["So"]]',
        '["Okay", {"text": "So"}]',
        "[",
        "```json\n{broken\n```",
    ],
)
def test_malformed_outputs_are_rejected_as_unparsable(output: str):
    with pytest.raises(JudgeOutputError) as info:
        parse_judge_output(output)
    assert info.value.reason == "unparsable"


# -- locating spans ----------------------------------------------------------------------

WINDOW = "Okay, so the sum is 42. So we check it. Hmm, so it holds."


def test_spans_are_located_in_order_each_search_after_the_previous_match():
    spans = locate_spans(WINDOW, ["Okay, so", "So", "Hmm,", "so"])
    assert [WINDOW[a:b] for a, b in spans] == ["Okay, so", "So", "Hmm,", "so"]
    # The second "so" is the one after "Hmm,", not the one inside "Okay, so".
    assert spans[3][0] > spans[2][1]
    assert locate_spans(WINDOW, []) == []
    # Whitespace around a phrase is dropped; empty phrases are skipped.
    assert locate_spans(WINDOW, ["  Okay,  ", "", "   "]) == [(0, 5)]


@pytest.mark.parametrize(
    "phrases",
    [
        ["Alright,"],  # not in the window
        ["okay, so"],  # case differs: not verbatim
        ["Hmm,", "Okay, so"],  # out of order
        ["Okay, so", "Okay, so"],  # only once in the window
        ["Okay,  so"],  # whitespace inside differs
    ],
)
def test_phrases_not_found_verbatim_reject_the_whole_output(phrases: list[str]):
    with pytest.raises(JudgeOutputError) as info:
        locate_spans(WINDOW, phrases)
    assert info.value.reason == "not_verbatim"


def test_the_lexicon_judge_extends_phrases_over_their_punctuation():
    lex = LexiconPredictor()
    text = "Okay, so the sum is 42. Wait... let me see: 7 + 5 = 12."
    assert [text[a:b] for a, b in lexicon_spans(text, lex)] == ["Okay, so", "Wait... let me see:"]


def test_the_judge_prompt_holds_the_window_and_opens_the_answer():
    role = Role("teacher", ScriptedBackend(["x"]), get_format("chatml"), LexiconPredictor())
    prompt = judge_prompt(role, "THE WINDOW TEXT", '["')
    assert prompt.rstrip('["').endswith("THE WINDOW TEXT<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert prompt.startswith("<|im_start|>user\n")
    # The worked examples come first, as earlier turns, each answered in the expected form.
    assert prompt.count("<|im_start|>assistant\n") == len(JUDGE_EXAMPLES) + 1
    for passage, answer in JUDGE_EXAMPLES:
        assert passage in prompt and answer in prompt
        assert locate_spans(passage, parse_judge_output(answer)) is not None


# -- whole runs --------------------------------------------------------------------------

TRACE_A = "Okay, so we add the numbers. " + " ".join(f"x{i}" for i in range(20)) + " Hmm, done."
TRACE_B = "Wait, let me see. " + " ".join(f"y{i}" for i in range(10))


def write_traces(path: Path) -> Path:
    rows = [
        {"id": "a", "role": "teacher", "prompt": "p", "text": TRACE_A},
        {"id": "b", "role": "teacher", "prompt": "p", "text": TRACE_B},
        {"id": "empty", "role": "teacher", "prompt": "p", "text": "  "},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def judge_role(answers: dict[str, object]) -> tuple[Role, ScriptedBackend]:
    """A judge answering per window (the window's first word picks the answer)."""

    def respond(request: GenerateRequest) -> object:
        window = request.prompt.text.rsplit("Passage:\n", 1)[-1]
        for key, answer in answers.items():
            if window.startswith(key):
                return answer
        return '"]'  # [""]: an empty phrase, skipped: no style

    backend = ScriptedBackend(responder=respond)  # type: ignore[arg-type]
    return Role("teacher", backend, get_format("qwen3"), LexiconPredictor()), backend


async def test_an_llm_judge_run_keeps_good_windows_and_counts_each_kind_of_rejection(tmp_path: Path):
    traces = write_traces(tmp_path / "traces.jsonl")
    role, backend = judge_role(
        {
            "Okay, so": ['Okay, so"', "]"],  # after the '["' prefill: a valid list
            "x4": ["```json\n", "{}"],  # unparsable
            "Wait,": ['Wait,", "Let me"]'],  # "Let me" is not in the window (it says "let me")
            "y6": BackendError("server down", retryable=False),
        }
    )
    out = tmp_path / "ann.jsonl"
    summary = await aannotate([traces], out, judge=role, window_words=10, concurrency=3)
    records = list(read_jsonl(out))
    rejected = list(read_jsonl(rejected_path(out)))
    assert summary.traces == 2  # the blank trace has no windows
    assert summary.windows == 5 == summary.accepted + summary.n_rejected  # 10 + 10 + 8 words, then 10 + 4
    assert summary.rejected == {"unparsable": 1, "not_verbatim": 1, "request_failed": 1}
    assert {r["reason"] for r in rejected} == {"unparsable", "not_verbatim", "request_failed"}
    first = next(r for r in records if r["trace_id"] == "a" and r["window_index"] == 0)
    assert [first["window_text"][a:b] for a, b in first["spans"]] == ["Okay, so"]
    # Every accepted record can be traced back to the trace by its offsets.
    for r in records:
        trace = TRACE_A if r["trace_id"] == "a" else TRACE_B
        assert trace[r["window_start"] : r["window_end"]] == r["window_text"]
        assert trace[: r["window_start"]].endswith(r["context"])
    # The judge was asked once per window, with the window in its prompt.
    assert len(backend.requests) == 5
    # Each question was a session of its own, ended (released) whether it was answered or failed.
    assert sorted(backend.released) == sorted(r.sample_id for r in backend.requests)
    assert all(req.prompt.text.endswith('["') for req in backend.requests)

    # A rerun skips every window already accepted or rejected.
    again = await aannotate([traces], out, judge=role, window_words=10)
    assert again.windows == 0 and again.skipped == 5
    assert len(backend.requests) == 5


async def test_the_lexicon_judge_needs_no_model(tmp_path: Path):
    traces = write_traces(tmp_path / "traces.jsonl")
    out = tmp_path / "ann.jsonl"
    summary = await aannotate([traces], out, judge="lexicon", window_words=10, limit=3)
    assert summary.accepted == 3 and summary.n_rejected == 0
    records = list(read_jsonl(out))
    assert [records[0]["window_text"][a:b] for a, b in records[0]["spans"]] == ["Okay, so"]
    assert records[0]["judge"] == "lexicon"
    again = await aannotate([traces], out, judge="lexicon", window_words=10, limit=3)
    assert again.skipped == 3 and again.windows == 0  # the same limit run again adds nothing
    one_more = await aannotate([traces], out, judge="lexicon", window_words=10, limit=4)
    assert one_more.skipped == 3 and one_more.accepted == 1
    rest = await aannotate([traces], out, judge="lexicon", window_words=10)
    assert rest.skipped == 4 and rest.accepted == 1


def test_an_unknown_judge_is_a_config_error(tmp_path: Path):
    from tessy import ConfigError

    with pytest.raises(ConfigError):
        asyncio.run(aannotate([write_traces(tmp_path / "t.jsonl")], tmp_path / "o.jsonl", judge="oracle"))
