from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessy.backends import GenerateRequest, Prompt
from tessy.boundary import CutQuery
from tessy.fakes import FakeTokenizer, ScriptedBackend, ScriptedPredictor
from tessy.text import TextBuffer, TextView


@given(st.lists(st.text(max_size=12), max_size=30), st.integers(min_value=0, max_value=80))
def test_views_are_snapshots_with_exact_tails(parts, n):
    buf = TextBuffer()
    views = []
    for p in parts:
        buf.append(p)
        views.append((buf.view(), "".join(parts[: len(views) + 1])))
    for view, expected in views:
        assert view.text == expected
        assert len(view) == len(expected)
        assert view.tail(n) == (expected[-n:] if n else "")
        assert view.extended("!").text == expected + "!"
        assert view.extended("!").tail(n) == ((expected + "!")[-n:] if n else "")


@given(st.text())
def test_fake_tokenizer_is_lossless(text):
    tok = FakeTokenizer()
    assert "".join(tok.pieces(text)) == text
    assert tok.decode(tok.encode(text)) == text


def test_fake_tokenizer_splits_like_the_worked_example():
    tok = FakeTokenizer()
    assert tok.pieces("Okay, so I need to add 17") == ["Okay", ",", " so", " I", " need", " to", " add", " 17"]
    assert tok.pieces(" double-check: 42") == [" double", "-check", ":", " 42"]
    assert tok.pieces(", correct.\n</think>") == [",", " correct", ".", "\n", "</think>"]


def request(max_tokens: int, stop: tuple[str, ...] = (), sample_id: str = "s") -> GenerateRequest:
    return GenerateRequest(Prompt.of("prompt"), max_tokens, stop, sample_id=sample_id)


def test_scripted_backend_behaves_like_a_server():
    backend = ScriptedBackend(["one two three four", "a b </think> c", ["x", "</th", "ink>"], "short"])
    gen = asyncio.run(backend.generate(request(2)))
    assert (gen.pieces, gen.finish_reason) == (["one", " two"], "length")
    gen = asyncio.run(backend.generate(request(10, ("</think>",))))
    assert (gen.text, gen.finish_reason, gen.stop_reason) == ("a b ", "stop", "</think>")
    # A stop string split over two pieces is found, and the piece before it trimmed.
    gen = asyncio.run(backend.generate(request(10, ("</think>",))))
    assert (gen.pieces, gen.finish_reason) == (["x"], "stop")
    gen = asyncio.run(backend.generate(request(10)))
    assert (gen.text, gen.finish_reason, gen.stop_reason) == ("short", "stop", None)
    assert len(backend.requests) == 4 and backend.remaining == 0
    with pytest.raises(AssertionError, match="script ran out"):
        asyncio.run(backend.generate(request(1)))


def test_scripted_stream_yields_tokens_and_counts_aborts():
    backend = ScriptedBackend(["a b c d", "e f"])

    async def take(n):
        out = []
        stream = backend.stream(request(10))
        async for delta in stream:
            out.extend(delta.pieces)
            if len(out) == n:
                break
        await stream.aclose()
        return out

    assert asyncio.run(take(2)) == ["a", " b"]
    assert backend.aborted_streams == 1
    assert asyncio.run(take(99)) == ["e", " f"]
    assert backend.aborted_streams == 1


def test_cycling_backend_continues_when_nothing_was_cut():
    backend = ScriptedBackend.cycling(["one two three", " four five"])
    first = asyncio.run(backend.generate(request(2, sample_id="z")))
    kept = Prompt(TextView.of("prompt" + first.text))
    second = asyncio.run(backend.generate(GenerateRequest(kept, 2, sample_id="z")))
    # The continuation picks up exactly where the first request stopped.
    stream = ["one", " two", " three", " four", " five"] * 2
    start = 0 if first.pieces == ["one", " two"] else 3
    assert first.pieces == stream[start : start + 2]
    assert second.pieces == stream[start + 2 : start + 4]
    # After a cut (the prompt does not end with the last text), the next response starts afresh.
    cut = asyncio.run(backend.generate(GenerateRequest(Prompt.of("other"), 2, sample_id="z")))
    assert cut.text in ("one two", " four five")


def test_scripted_predictor_records_queries():
    pred = ScriptedPredictor([1, None])
    q = CutQuery("student", TextView.of(""), ["a", " b"])
    assert asyncio.run(pred.find_cut(q)) == 1
    assert asyncio.run(pred.find_cut(q)) is None
    assert pred.queries == [q, q]
