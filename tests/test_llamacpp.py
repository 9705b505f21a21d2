"""Contract tests against a real llama.cpp server running SmolLM2-135M (93 MB) on the CPU."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import httpx
import pytest

from tessy import Engine, LexiconPredictor, Limits, Record, Role, Sample, SamplingParams, get_format
from tessy.backends import GenerateRequest, Prompt
from tessy.backends.llamacpp import LlamaCppBackend, LlamaServer
from tessy.backends.openai import OpenAICompletionsBackend
from tessy.check import check_record, end_markers
from tessy.errors import TessyError
from tessy.models import MissingModelError, resolve

pytestmark = [pytest.mark.contract, pytest.mark.real]

PROMPT = "<|im_start|>user\nWhat is 12 + 30? Explain.<|im_end|>\n<|im_start|>assistant\n<think>\n"
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=1)


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    try:
        resolve("smollm2-135m")
    except MissingModelError as exc:  # make test installs it; a bare pytest run may not have it
        pytest.skip(str(exc))
    # One thread: llama.cpp's threads wait on each other, so any other load on a core stalls two.
    srv = LlamaServer("smollm2-135m", n_ctx=4096, n_parallel=2, n_threads=1)
    loop = asyncio.new_event_loop()  # the child process belongs to the loop that started it
    try:
        loop.run_until_complete(srv.start())
        log = srv.log_path
        assert log is not None and log.exists()  # the server's stderr while it runs
        yield srv
        loop.run_until_complete(srv.stop())
    finally:
        loop.close()
    assert not srv.running
    assert not log.exists() and srv.log_path is None  # a clean stop leaves no file behind


def client(srv: LlamaServer) -> OpenAICompletionsBackend:
    return OpenAICompletionsBackend(model="m", endpoints=[f"{srv.url}/v1"], server="llamacpp", max_retries=1)


def gen(srv: LlamaServer, req: GenerateRequest) -> object:
    async def go():
        b = client(srv)
        try:
            return await b.generate(req)
        finally:
            await b.aclose()

    return asyncio.run(go())


def req(
    prompt: Prompt | str = PROMPT, n: int = 12, sampling: SamplingParams = GREEDY, stop: tuple[str, ...] = ()
) -> GenerateRequest:
    p = Prompt.of(prompt) if isinstance(prompt, str) else prompt
    return GenerateRequest(p, n, stop, sampling, sample_id="s", role="student")


def test_raw_prompt_and_token_accounting(server):
    g = gen(server, req(n=12))
    assert g.finish_reason == "length"
    assert len(g.pieces) == g.completion_tokens == 12  # one piece per generated token
    assert "".join(g.pieces) == g.text and g.text.strip()
    assert g.prompt_tokens == len(httpx.post(f"{server.url}/tokenize", json={"content": PROMPT}).json()["tokens"])


def test_token_id_prompt_gives_the_same_greedy_text(server):
    ids = httpx.post(f"{server.url}/tokenize", json={"content": PROMPT}).json()["tokens"]
    by_text = gen(server, req(n=10))
    by_ids = gen(server, req(Prompt(Prompt.of(PROMPT).view, token_ids=ids), n=10))
    assert by_ids.text == by_text.text and by_ids.prompt_tokens == len(ids)


def test_extending_the_prompt_hits_the_prefix_cache(server):
    first = gen(server, req(n=10))
    second = gen(server, req(PROMPT + first.text + " So", n=4))
    # All but the last few tokens of the longer prompt were cached in the slot.
    assert second.cached_tokens is not None and second.cached_tokens >= first.prompt_tokens


def test_sampling_parameters_are_honoured(server):
    hot = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=7)
    a, b = gen(server, req(n=16, sampling=hot)), gen(server, req(n=16, sampling=hot))
    assert a.text == b.text  # the same seed gives the same text
    others = {
        gen(server, req(n=16, sampling=SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=s))).text
        for s in range(8, 12)
    }
    assert len(others | {a.text}) > 1  # other seeds sample other text
    top1 = SamplingParams(temperature=1.0, top_p=1.0, top_k=1, seed=3)
    assert gen(server, req(n=16, sampling=top1)).text == gen(server, req(n=16)).text  # top_k=1 is greedy


def test_stop_strings_end_the_completion(server):
    full = gen(server, req(n=24))
    word = full.text.split()[3]
    g = gen(server, req(n=24, stop=(word,)))
    assert g.finish_reason == "stop" and word not in g.text and full.text.startswith(g.text)


def test_closing_a_stream_stops_the_server_generating(server):
    async def go() -> float:
        b = client(server)
        try:
            stream = b.stream(req(n=1500))
            got = 0
            async for delta in stream:
                got += len(delta.pieces)
                if got >= 3:
                    break
            await stream.aclose()
            closed = time.monotonic()
            async with httpx.AsyncClient() as c:
                while True:
                    slots = (await c.get(f"{server.url}/slots")).json()
                    if not any(s.get("is_processing") for s in slots):
                        return time.monotonic() - closed
                    await asyncio.sleep(0.05)
        finally:
            await b.aclose()

    # 1500 tokens would take many seconds; an aborted request frees its slot at once.
    assert asyncio.run(go()) < 2.0


def test_tessy_runs_on_real_models_chunked_and_streaming():
    async def run(streaming: bool) -> list:
        backend = LlamaCppBackend("smollm2-135m", n_ctx=4096, n_parallel=2, n_threads=1)
        fmt = get_format("chatml")
        seeded = SamplingParams(seed=11)
        engine = Engine(
            Role("teacher", backend, fmt, LexiconPredictor(), chunk_tokens=20, sampling=seeded),
            Role("student", backend, fmt, LexiconPredictor(), chunk_tokens=20, sampling=seeded),
            limits=Limits(max_total_tokens=480, max_thinking_tokens=96),
            streaming=streaming,
        )
        samples = [
            Sample.from_prompt(f"q{i}", p)
            for i, p in enumerate(["What is 7 * 6?", "Write a Python function that reverses a string."])
        ]
        try:
            return [r async for r in engine.run(samples)]
        finally:
            await backend.aclose()

    chatml = get_format("chatml")
    fmt_markers = end_markers([chatml])
    for streaming in (False, True):
        results = asyncio.run(run(streaming))
        # A 135M model may loop or ramble: that must end as a guard's recorded reason.
        assert all(r.ok or r.failure.startswith(("repetition", "token_budget")) for r in results)
        assert any(r.ok for r in results), [r.failure for r in results]
        for r in (r for r in results if r.ok):
            violations = check_record(Record.from_result(r, "", "tessy"), markers=fmt_markers, student_format=chatml)
            # every invariant of design.md, a word glued across a hand-over included
            assert violations == [], (r.sample.id, violations)
            assert r.spans[0].source == "student" and r.response.startswith("<think>\n")
            assert r.thinking == "".join(s.text for s in r.spans if s.phase == "think")
            assert r.stats.requests >= 2


def test_a_server_that_cannot_start_says_why(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF but not really a model")
    srv = LlamaServer(bad, n_threads=1, startup_timeout_s=60)
    with pytest.raises(TessyError, match="did not start") as failure:
        asyncio.run(srv.start())
    assert not srv.running
    # The log is kept for diagnosis, and the error names it.
    assert srv.log_path is not None and srv.log_path.exists()
    assert str(srv.log_path) in str(failure.value)
    srv.log_path.unlink()


def test_no_server_outlives_a_killed_parent(tmp_path):
    import subprocess
    import sys

    script = (
        "import asyncio, sys\n"
        "from tessy.backends.llamacpp import LlamaServer\n"
        "s = LlamaServer('smollm2-135m', n_ctx=1024, n_parallel=1, n_threads=1)\n"
        "asyncio.run(s.start())\n"
        "print(s._proc.pid, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail("the llama.cpp server outlived its killed parent")
