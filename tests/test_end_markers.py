"""No fragment of an end-of-thinking marker is ever kept as thinking, however the marker is cut:
between two stream events, between two requests (chunked), or at the end of the budget.

The fake model is a function of its prompt, as a seeded model is: whatever the thinking so far,
it writes the rest of one fixed response, in which the marker arrives split into two tokens at
a position given by the prompt (every position of every format's every marker is tried).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest

from fault_server import FaultServer
from tessy import Engine, LexiconPredictor, Limits, Role, Sample, SampleResult, get_format
from tessy.backends.openai import OpenAICompletionsBackend
from tessy.engine.context import open_tail

pytestmark = pytest.mark.contract

THINK = ["Okay", ",", " so", " 17", " +", " 25", " =", " 42", "."]
ANSWER = ["The", " answer", " is", " 42", "."]
CASES = [
    (fmt, marker) for fmt in ("qwen3", "deepseek-r1", "chatml", "gpt-oss") for marker in get_format(fmt).think_stop
]


def splits(marker: str) -> list[list[str]]:
    return [[marker[:i], marker[i:]] for i in range(1, len(marker))]


def model(fmt_name: str, marker: str) -> Any:
    fmt = get_format(fmt_name, options={"current_date": ""} if fmt_name == "gpt-oss" else None)
    suffix = fmt.answer_suffix()

    def respond(body: dict[str, Any]) -> list[str]:
        prompt = str(body["prompt"])
        if prompt.endswith(suffix):
            return list(ANSWER)
        m = re.search(r"split (\d+)", prompt)
        assert m is not None
        header = fmt.render_think([{"role": "user", "content": f"What is 17 + 25? (split {m.group(1)})"}])
        assert prompt.startswith(header)
        written = prompt[len(header) :]
        full = [*THINK, *splits(marker)[int(m.group(1))], "\n\n", "So", " 42"]
        assert "".join(full).startswith(written), (written, full)
        pos = 0
        for i, piece in enumerate(full):
            if pos + len(piece) > len(written):
                return [piece[len(written) - pos :], *full[i + 1 :]]
            pos += len(piece)
        return []

    return fmt, respond


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    srv = FaultServer()
    yield srv
    srv.close()


def run(server: FaultServer, fmt_name: str, marker: str, *, k: int, streaming: bool) -> list[SampleResult]:
    fmt, server.responder = model(fmt_name, marker)

    async def go() -> list[SampleResult]:
        backend = OpenAICompletionsBackend(model="m", endpoints=[server.url], backoff_s=0.0, max_retries=1)
        roles = {
            name: Role(name, backend, fmt, LexiconPredictor(("okay", "so"), replace_defaults=True), k)  # type: ignore[arg-type]
            for name in ("teacher", "student")
        }
        samples = [Sample.from_prompt(f"s{i}", f"What is 17 + 25? (split {i})") for i in range(len(splits(marker)))]
        async with Engine(roles["teacher"], roles["student"], streaming=streaming, limits=Limits(400, 300)) as engine:
            return [r async for r in engine.run(samples)]

    return asyncio.run(go())


@pytest.mark.parametrize(("fmt_name", "marker"), CASES)
@pytest.mark.parametrize(("k", "streaming"), [(1, False), (4, False), (64, True)], ids=["k1", "k4", "streaming"])
def test_no_fragment_of_an_end_marker_is_kept_wherever_it_was_cut(server, fmt_name, marker, k, streaming):
    results = run(server, fmt_name, marker, k=k, streaming=streaming)
    assert len(results) == len(marker) - 1
    for r in results:
        assert r.ok, r.failure
        thinking = "".join(s.text for s in r.spans if s.phase == "think")
        answer = "".join(s.text for s in r.spans if s.phase == "answer")
        assert (thinking, answer) == ("Okay, so 17 + 25 = 42.", "The answer is 42."), r.sample.id
        assert not r.stats.guards


def test_the_open_tail_is_what_may_yet_become_a_marker():
    stops = ("</think>", "assistantfinal")
    assert open_tail(["a", " <", "/th"], stops) == 2  # " <" holds the marker's start
    assert open_tail(["is", " it", ".", "assistant"], stops) == 1
    assert open_tail(["x", " <", "b"], stops) == 0  # "<b" cannot become "</think>"
    assert open_tail(["a", "</think>"], stops) == 0  # a whole marker is found, not held
    assert open_tail([], stops) == open_tail(["a"], ()) == 0
