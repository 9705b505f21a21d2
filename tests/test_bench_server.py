"""The simulated server's HTTP contract, checked with a plain HTTP client: vLLM's
``/v1/completions`` shapes, streaming, prefix-cache accounting, abort on disconnect, batching."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tessy import get_format
from tessy.bench import SimParams, SimServer, Workload, make_engines
from tessy.bench.model import sim_tokenizer

pytestmark = pytest.mark.contract

QWEN = get_format("qwen3")
THINK = QWEN.render_think([{"role": "user", "content": "What is 17 + 25? Show your working."}])
FAST = SimParams(decode_step_s=0.002, decode_s_per_seq=0.0, prefill_s_per_token=0.0, request_overhead_s=0.0)


@contextlib.asynccontextmanager
async def serving(params: SimParams, workload: Workload, timeout: float = 10) -> AsyncIterator[httpx.AsyncClient]:
    """A simulated server in this event loop, and a client for it."""
    async with (
        SimServer(make_engines(params, workload)) as server,
        httpx.AsyncClient(base_url=server.url.removesuffix("/v1"), timeout=timeout) as c,
    ):
        yield c


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with serving(FAST, Workload((30, 30), (5, 5))) as c:
        yield c


async def complete(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("model", "sim-teacher")
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def stream(client: httpx.AsyncClient, **body: Any) -> tuple[list[dict[str, Any]], list[str]]:
    body.setdefault("model", "sim-teacher")
    chunks: list[dict[str, Any]] = []
    raw: list[str] = []
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                continue
            raw.append(line)
            assert line.startswith("data: ")
            if line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    return chunks, raw


async def stats(client: httpx.AsyncClient, model: str = "sim-teacher") -> dict[str, Any]:
    return dict((await client.get("/stats")).json()["models"][model])


async def test_models_and_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    models = (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["sim-teacher", "sim-student"]


async def test_completion_has_vllms_shape(client: httpx.AsyncClient) -> None:
    body = await complete(client, prompt=THINK, max_tokens=8, return_token_ids=True)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "sim-teacher"
    (choice,) = body["choices"]
    assert set(choice) >= {"index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids", "prompt_token_ids"}
    assert choice["finish_reason"] == "length" and choice["stop_reason"] is None and choice["logprobs"] is None
    tok = sim_tokenizer()
    assert len(choice["token_ids"]) == 8 and tok.decode(choice["token_ids"]) == choice["text"]
    assert choice["prompt_token_ids"] == tok.encode(THINK)
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(choice["prompt_token_ids"]) and usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    plain = await complete(client, prompt=THINK, max_tokens=8)
    assert plain["choices"][0]["token_ids"] is None and plain["choices"][0]["prompt_token_ids"] is None


async def test_text_and_token_id_prompts_agree(client: httpx.AsyncClient) -> None:
    ids = (await client.post("/tokenize", json={"prompt": THINK})).json()
    assert ids["count"] == len(ids["tokens"])
    assert (await client.post("/detokenize", json={"tokens": ids["tokens"]})).json() == {"prompt": THINK}
    by_text = await complete(client, prompt=THINK, max_tokens=12, return_token_ids=True, seed=3)
    by_ids = await complete(client, prompt=ids["tokens"], max_tokens=12, return_token_ids=True, seed=3)
    assert by_text["choices"][0]["text"] == by_ids["choices"][0]["text"]
    assert by_text["choices"][0]["token_ids"] == by_ids["choices"][0]["token_ids"]


async def test_stop_string_eos_and_stop_token_ids(client: httpx.AsyncClient) -> None:
    tok = sim_tokenizer()
    stopped = (await complete(client, prompt=THINK, max_tokens=100, stop=["</think>"], return_token_ids=True))[
        "choices"
    ][0]
    assert stopped["finish_reason"] == "stop" and stopped["stop_reason"] == "</think>"
    assert "</think>" not in stopped["text"] and stopped["token_ids"][-1] == tok.think_end_id
    answer = QWEN.render_answer([{"role": "user", "content": "q"}], "thought")
    ended = (await complete(client, prompt=answer, max_tokens=100, return_token_ids=True))["choices"][0]
    assert ended["finish_reason"] == "stop" and ended["stop_reason"] is None
    assert ended["token_ids"][-1] == tok.eos_id and "<|im_end|>" not in ended["text"]
    by_id = (await complete(client, prompt=THINK, max_tokens=100, stop_token_ids=[tok.think_end_id]))["choices"][0]
    assert by_id["finish_reason"] == "stop" and by_id["stop_reason"] == tok.think_end_id


async def test_logprobs_in_the_legacy_completions_form(client: httpx.AsyncClient) -> None:
    choice = (await complete(client, prompt=THINK, max_tokens=6, logprobs=2, prompt_logprobs=1, return_token_ids=True))[
        "choices"
    ][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 6
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert value < 0 and top[token] == value and len(top) <= 3
    prompt_lp = choice["prompt_logprobs"]
    assert len(prompt_lp) == len(choice["prompt_token_ids"]) and prompt_lp[0] is None
    for tid, entry in zip(choice["prompt_token_ids"][1:], prompt_lp[1:], strict=True):
        assert entry[str(tid)]["rank"] == 1 and entry[str(tid)]["logprob"] < 0


async def test_streaming_matches_the_whole_response(client: httpx.AsyncClient) -> None:
    whole = (await complete(client, prompt=THINK, max_tokens=60, stop=["</think>"], return_token_ids=True))["choices"][
        0
    ]
    chunks, raw = await stream(
        client,
        prompt=THINK,
        max_tokens=60,
        stop=["</think>"],
        return_token_ids=True,
        stream_options={"include_usage": True},
    )
    assert raw[-1] == "data: [DONE]"
    *content, usage = chunks
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(whole["token_ids"])
    assert "".join(c["choices"][0]["text"] for c in content) == whole["text"]
    assert [t for c in content for t in c["choices"][0]["token_ids"]] == whole["token_ids"]
    assert content[0]["choices"][0]["prompt_token_ids"] == whole["prompt_token_ids"]
    assert all(c["choices"][0]["prompt_token_ids"] is None for c in content[1:])
    assert [c["choices"][0]["finish_reason"] for c in content][-1] == "stop"
    assert content[-1]["choices"][0]["stop_reason"] == "</think>"
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    # Text that could begin the stop string is held back (len("</think>") - 1 characters), as
    # vLLM's detokenizer does; the final chunk brings the rest.
    tok = sim_tokenizer()
    text, ids = "", []
    for c in content[:-1]:
        text += c["choices"][0]["text"]
        ids += c["choices"][0]["token_ids"]
        assert len(text) == max(0, len(tok.decode(ids)) - 7)


async def test_continuous_usage_and_options_only_when_streaming(client: httpx.AsyncClient) -> None:
    chunks, _ = await stream(client, prompt=THINK, max_tokens=3, stream_options={"continuous_usage_stats": True})
    assert [c["usage"]["completion_tokens"] for c in chunks] == [1, 2, 3]
    response = await client.post(
        "/v1/completions", json={"model": "sim-teacher", "prompt": THINK, "stream_options": {"include_usage": True}}
    )
    assert response.status_code == 400


async def test_prefix_cache_counts_whole_cached_blocks(client: httpx.AsyncClient) -> None:
    tok = sim_tokenizer()
    first = await complete(client, prompt=THINK, max_tokens=9, return_token_ids=True)
    prompt = first["choices"][0]["prompt_token_ids"] + first["choices"][0]["token_ids"]
    second = await complete(client, prompt=prompt, max_tokens=1)
    # The first request computed its prompt and all but its last token; full blocks are cached.
    computed = len(prompt) - 1
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == min(computed, len(prompt) - 1) // 16 * 16
    before = await stats(client)
    assert before["cached_tokens"] == second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert before["prefilled_tokens"] == before["prompt_tokens"] - before["cached_tokens"]
    assert (await client.post("/reset_prefix_cache")).status_code == 200
    again = await complete(client, prompt=prompt, max_tokens=1)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert len(tok.encode(THINK)) == first["usage"]["prompt_tokens"]


async def test_eviction_when_the_cache_is_full() -> None:
    params = FAST.with_overrides({"cache_blocks": 12})
    async with serving(params, Workload((30, 30), (5, 5))) as c:
        prompts = [list(range(100 + 40 * i, 100 + 40 * i + 64)) for i in range(4)]  # 4 blocks each
        for p in prompts:
            await complete(c, prompt=p, max_tokens=1)
        again = await complete(c, prompt=prompts[0], max_tokens=1)  # the oldest was evicted
        last = await complete(c, prompt=prompts[-1], max_tokens=1)  # the newest is still there
        s = await stats(c)
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert last["usage"]["prompt_tokens_details"]["cached_tokens"] == 48
    assert s["evicted_blocks"] > 0 and s["used_blocks"] <= 12


async def _until(predicate: Any, client: httpx.AsyncClient, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = await stats(client)
        if predicate(s) or time.monotonic() > deadline:
            return s
        await asyncio.sleep(0.02)


async def test_a_disconnected_stream_is_aborted(client: httpx.AsyncClient) -> None:
    body = {"model": "sim-teacher", "prompt": THINK, "max_tokens": 5000, "ignore_eos": True, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as response:
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                seen += 1
                if seen == 3:
                    break
    s = await _until(lambda s: s["aborted"] == 1 and s["running"] == 0, client)
    assert s["aborted"] == 1 and s["running"] == 0 and s["finished"] == 0
    decoded = s["decoded_tokens"]
    await asyncio.sleep(0.1)
    assert (await stats(client))["decoded_tokens"] == decoded < 100


async def test_a_client_that_gives_up_waiting_aborts_its_request(client: httpx.AsyncClient) -> None:
    base = str(client.base_url)
    async with httpx.AsyncClient(base_url=base, timeout=0.1) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(
                "/v1/completions",
                json={"model": "sim-teacher", "prompt": THINK, "max_tokens": 5000, "ignore_eos": True},
            )
    s = await _until(lambda s: s["aborted"] == 1, client)
    assert s["aborted"] == 1 and s["running"] == 0


async def test_sixteen_concurrent_requests_share_steps() -> None:
    params = SimParams(decode_step_s=0.01, decode_s_per_seq=0.0002, prefill_s_per_token=0.0, request_overhead_s=0.0005)
    async with serving(params, Workload((400, 400), (5, 5)), timeout=30) as c:

        async def one(i: int) -> None:
            prompt = QWEN.render_think([{"role": "user", "content": f"question {i}"}])
            await complete(c, prompt=prompt, max_tokens=30)

        t0 = time.perf_counter()
        await one(0)
        single = time.perf_counter() - t0
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(1, 17)))
        sixteen = time.perf_counter() - t0
        s = await stats(c)
    assert single >= 30 * 0.01
    assert sixteen < 3 * single  # sixteen turns would take 16 times as long
    assert s["max_running"] >= 8


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": "sim-teacher"}, 400, "prompt"),
        ({"model": "sim-teacher", "prompt": []}, 400, "prompt"),
        ({"model": "sim-teacher", "prompt": ["a", "b"]}, 400, "prompt"),
        ({"model": "sim-teacher", "prompt": "x", "n": 2}, 400, "n"),
        ({"model": "sim-teacher", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "sim-teacher", "prompt": "x", "max_tokens": 10**6}, 400, "prompt"),
        ({"model": "sim-teacher", "prompt": [10**7]}, 400, "prompt"),
        ({"model": "sim-teacher", "prompt": "x", "stop": 3}, 400, "stop"),
    ],
)
async def test_bad_requests_get_openai_style_errors(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str
) -> None:
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and error["param"] == param and error["message"]


async def test_malformed_json_and_unknown_routes(client: httpx.AsyncClient) -> None:
    bad = await client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]
    assert (await client.get("/v1/nothing")).status_code == 404
    assert (await client.get("/v1/completions")).status_code == 405
    # The connection survives errors: the next request on it works.
    assert (await complete(client, prompt="hello", max_tokens=2))["usage"]["completion_tokens"] == 2


async def test_reset_stats(client: httpx.AsyncClient) -> None:
    await complete(client, prompt="hello", max_tokens=2)
    assert (await stats(client))["requests"] == 1
    await client.post("/reset_stats")
    assert (await stats(client))["requests"] == 0


@pytest.mark.slow
async def test_the_server_runs_as_its_own_process() -> None:
    """The benchmark's http transport starts the server in a subprocess and reads its address."""
    from tessy.bench.settings import QUICK
    from tessy.bench.targets import server_process

    async with server_process(QUICK) as url, httpx.AsyncClient(base_url=url.removesuffix("/v1"), timeout=10) as c:
        assert (await c.get("/health")).status_code == 200
        body = await complete(c, prompt=THINK, max_tokens=3)
        assert body["usage"]["completion_tokens"] == 3
        config = (await c.get("/stats")).json()
        assert config["workload"]["think_tokens"] == list(QUICK.workload.think_tokens)
        assert config["params"]["decode_step_s"] == QUICK.params.decode_step_s


@pytest.mark.slow
def test_cli_serve_announces_its_address_and_stops_on_sigterm() -> None:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tessy.cli", "bench", "--serve", "--quick"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("tessy-sim listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].removesuffix("/v1")
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
