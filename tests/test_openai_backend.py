"""The OpenAI-compatible backend against a local server that misbehaves on cue."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tessy
from fault_server import FaultServer, dead_url
from tessy import BackendError, ConfigError, get_format
from tessy.backends import GenerateRequest, Prompt, ScoreRequest
from tessy.backends.openai import OpenAICompletionsBackend
from tessy.backends.wire import align

pytestmark = pytest.mark.contract


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer(hang_s=2.0)
    yield srv
    srv.close()


def backend(*urls: str, **kw: object) -> OpenAICompletionsBackend:
    options: dict[str, object] = {"model": "m", "server": "vllm", "max_retries": 3, "backoff_s": 0.0, "timeout_s": 0.5}
    options.update(kw)
    return OpenAICompletionsBackend(endpoints=list(urls), **options)  # type: ignore[arg-type]


def request(sample: str = "s1", max_tokens: int = 4, stop: tuple[str, ...] = ()) -> GenerateRequest:
    return GenerateRequest(
        Prompt.of("<|im_start|>user\nhi<|im_end|>\n"), max_tokens, stop, sample_id=sample, role="teacher"
    )


async def generate(b: OpenAICompletionsBackend, req: GenerateRequest | None = None) -> tessy.Generation:
    try:
        return await b.generate(req or request())
    finally:
        await b.aclose()


def test_request_fields_and_parsed_completion(server):
    gen = asyncio.run(generate(backend(server.url), request(max_tokens=4, stop=("</think>",))))
    assert gen.pieces == ["The", " answer", " is", " forty"]
    assert (gen.finish_reason, gen.prompt_tokens, gen.cached_tokens) == ("length", 7, 3)
    body = server.requests[0]["body"]
    assert body["prompt"].startswith("<|im_start|>user") and body["max_tokens"] == 4
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.7, 0.8, 20)  # the paper's defaults
    assert body["stop"] == ["</think>"] and body["logprobs"] == 1 and body["return_token_ids"] is True
    assert body["add_special_tokens"] is False and body["stream"] is False


def test_token_id_prompts_are_sent_where_the_server_takes_them(server):
    req = GenerateRequest(Prompt(Prompt.of("x").view, token_ids=[1, 2, 3]), 2)
    asyncio.run(generate(backend(server.url), req))
    assert server.requests[0]["body"]["prompt"] == [1, 2, 3]
    asyncio.run(generate(backend(server.url, server="openai"), req))
    assert server.requests[1]["body"]["prompt"] == "x"
    assert "top_k" not in server.requests[1]["body"]


@pytest.mark.parametrize("fault", ["500", "429", "empty", "malformed", "reset", "hang"])
def test_retryable_faults_are_retried(server, fault):
    server.queue(fault, fault)
    gen = asyncio.run(generate(backend(server.url)))
    assert gen.text == "The answer is forty"
    assert len(server.requests) == 3


def test_retries_run_out_with_a_reason(server):
    server.default = "500"
    with pytest.raises(BackendError) as err:
        asyncio.run(generate(backend(server.url, max_retries=2)))
    assert err.value.retryable and "3 attempts failed" in str(err.value) and "HTTP 500" in str(err.value)
    assert len(server.requests) == 3


def test_a_bad_request_fails_at_once_with_the_server_message(server):
    server.queue("400")
    with pytest.raises(BackendError) as err:
        asyncio.run(generate(backend(server.url)))
    assert not err.value.retryable and err.value.status == 400
    assert "prompt is too long (9000 > 8192)" in str(err.value)
    assert len(server.requests) == 1


def test_a_dead_replica_fails_over_and_samples_stay_sticky(server):
    b = backend(dead_url(), server.url)

    async def go() -> list[str]:
        try:
            out = []
            for sample in ("a", "b", "c", "a", "b", "c"):
                out.append((await b.generate(request(sample))).text)
            return out
        finally:
            await b.aclose()

    assert asyncio.run(go()) == ["The answer is forty"] * 6
    assert len(server.requests) == 6  # every request ended on the live replica


def test_sticky_routing_spreads_samples_and_keeps_each_on_one_replica():
    servers = [FaultServer(), FaultServer()]
    try:
        b = backend(*(s.url for s in servers))

        async def go() -> None:
            try:
                for sample in [f"s{i}" for i in range(12)] * 2:
                    await b.generate(request(sample))
            finally:
                await b.aclose()

        asyncio.run(go())
        # The prompt is the same for all; which replica saw a sample is told by request order.
        seen = [len(s.requests) for s in servers]
        assert sum(seen) == 24 and min(seen) >= 4  # both replicas serve
        ranking = {f"s{i}": b.pool.ranking(f"s{i}|teacher")[0].url for i in range(12)}
        for s in servers:
            assert len(s.requests) == 2 * sum(1 for url in ranking.values() if url == s.url.rstrip("/"))
    finally:
        for s in servers:
            s.close()


def test_streaming_yields_tokens_and_a_broken_stream_raises(server):
    async def collect(b: OpenAICompletionsBackend) -> list[tessy.StreamDelta]:
        try:
            return [d async for d in b.stream(request(max_tokens=5))]
        finally:
            await b.aclose()

    deltas = asyncio.run(collect(backend(server.url)))
    assert [p for d in deltas for p in d.pieces] == ["The", " answer", " is", " forty", "-two"]
    assert deltas[-1].finish_reason == "length"
    assert server.requests[0]["body"]["stream_options"] == {"include_usage": True}
    server.queue("midstream")
    with pytest.raises(BackendError, match="connection lost in the middle of a stream"):
        asyncio.run(collect(backend(server.url)))
    # An empty stream that says "stop" but counts no end-of-sequence token is a fault, not an end.
    server.queue("empty")
    with pytest.raises(BackendError, match="said it stopped") as err:
        asyncio.run(collect(backend(server.url)))
    assert err.value.retryable


def test_api_key_is_sent_and_never_logged(server, monkeypatch, caplog):
    monkeypatch.setenv("TESSY_TEST_KEY", "sk-secret-123")
    server.default = "500"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError) as err:
        asyncio.run(generate(backend(server.url, api_key_env="TESSY_TEST_KEY", max_retries=1)))
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert "sk-secret-123" not in caplog.text and "sk-secret-123" not in str(err.value)
    monkeypatch.delenv("TESSY_TEST_KEY")
    with pytest.raises(ConfigError, match="TESSY_TEST_KEY is not set"):
        backend(server.url, api_key_env="TESSY_TEST_KEY")


def test_streams_send_the_api_key_and_an_echoed_key_is_redacted(server, monkeypatch):
    monkeypatch.setenv("TESSY_TEST_KEY", "sk-secret-456")

    async def collect() -> list[tessy.StreamDelta]:
        b = backend(server.url, api_key_env="TESSY_TEST_KEY", max_retries=0)
        try:
            return [d async for d in b.stream(request(max_tokens=2))]
        finally:
            await b.aclose()

    assert [p for d in asyncio.run(collect()) for p in d.pieces] == ["The", " answer"]
    headers = server.requests[0]["headers"]
    assert headers["Authorization"] == "Bearer sk-secret-456" and headers["Accept"] == "text/event-stream"
    server.queue("echo-key")
    with pytest.raises(BackendError) as err:
        asyncio.run(collect())
    assert "sk-secret-456" not in str(err.value) and "[redacted]" in str(err.value)


def test_pieces_always_concatenate_to_the_text():
    assert align("The answer", ["The", " answer"], None) == ["The", " answer"]
    # A stop string cut the last token short; a mismatch falls back to word pieces.
    assert align("The ans", ["The", " answer"], None) == ["The", " ans"]
    assert align("héllo world", ["h", "\ufffd", "llo"], None) == ["h", "éllo", " world"]
    assert align("a b", None, None) == ["a", " b"]


def _write_run(tmp_path: Path, url: str, n: int) -> Path:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"q{i}"}) + "\n" for i in range(n)))
    role = {"backend": "openai", "model": "m", "endpoints": [url], "max_retries": 1, "backoff_s": 0, "timeout_s": 0.5}
    config = {
        "teacher": role,
        "student": role,
        "guards": {"max_request_failures": 1},
        "data": {"input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "out.jsonl")},
    }
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config))
    return path


def test_a_dead_server_ends_the_run_before_the_first_sample_naming_it(tmp_path):
    url = dead_url()
    with pytest.raises(BackendError, match=rf"{url}/models does not answer \(ConnectError"):
        tessy.synthesize(tessy.load_config(_write_run(tmp_path, url, 5)))
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.failed.jsonl").exists()


@pytest.mark.parametrize(
    ("models", "error", "said"),
    [
        (("other-model",), None, "serves 'other-model', not 'm'"),
        ((), (401, "invalid API key"), "answered HTTP 401: invalid API key"),
        ((), (404, "Not Found"), "answered HTTP 404: Not Found"),
    ],
)
def test_a_server_that_serves_another_model_or_refuses_ends_the_run_at_once(tmp_path, server, models, error, said):
    server.models, server.models_error = models, error
    with pytest.raises(BackendError, match=said):
        tessy.synthesize(tessy.load_config(_write_run(tmp_path, server.url, 5)))
    assert server.requests == []  # not one completion was asked for


def test_every_replica_is_checked(tmp_path, server):
    path = _write_run(tmp_path, server.url, 2)
    dead = dead_url()
    with pytest.raises(BackendError, match=dead):
        tessy.synthesize(tessy.load_config(path, [f"teacher.endpoints=[{server.url}, {dead}]"]))


def test_a_server_that_dies_after_the_check_fails_samples_and_nothing_is_lost(tmp_path, server):
    server.default = "reset"
    summary = tessy.synthesize(tessy.load_config(_write_run(tmp_path, server.url, 5)))
    assert summary.written == 0 and summary.failed == {"request_failures": 5}
    failed = [json.loads(line) for line in (tmp_path / "out.failed.jsonl").read_text().splitlines()]
    assert sorted(f["id"] for f in failed) == [f"p{i}" for i in range(5)]


def test_an_api_key_echoed_in_a_servers_error_is_redacted_from_logs_and_the_failure_file(
    tmp_path, server, monkeypatch, caplog
):
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("TESSY_TEST_KEY", key)
    server.default = "echo-key"
    path = _write_run(tmp_path, server.url, 2)
    with caplog.at_level(logging.DEBUG):
        summary = tessy.synthesize(
            tessy.load_config(path, ["teacher.api_key_env=TESSY_TEST_KEY", "student.api_key_env=TESSY_TEST_KEY"])
        )
    assert summary.n_failed == 2
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {key}"  # it was sent
    failures = (tmp_path / "out.failed.jsonl").read_text()
    assert "[redacted]" in failures and "Incorrect API key provided" in failures
    assert key not in failures and key not in caplog.text
    assert key[:12] not in failures


def test_an_odd_usage_field_is_ignored_and_the_cache_hit_rate_counts_only_what_servers_reported(tmp_path, server):
    """``prompt_tokens_details: 7`` (no object) says nothing about the prefix cache: the sample is
    written, and the hit rate counts only the completions that reported ``cached_tokens``."""
    server.queue("odd-usage")
    summary = tessy.synthesize(
        tessy.load_config(_write_run(tmp_path, server.url, 3), ["max_in_flight=1", "mode=teacher-only"])
    )
    assert summary.written == 3 and not summary.failed
    # Two requests a sample (thinking, answer); each reports 7 prompt tokens, 3 cached, but one.
    assert summary.reported_prompt_tokens == 5 * 7 and summary.cached_prompt_tokens == 5 * 3
    assert summary.to_dict()["prefix_cache_hit_rate"] == round(3 / 7, 4)


def test_a_server_that_dies_after_the_check_is_an_outage_and_nothing_is_lost(tmp_path, capsys, monkeypatch):
    """A server that stops answering once the run has begun is an outage: samples wait for it
    (none is failed) until outage_timeout_s, then the run ends with a clear error and a non-zero exit."""
    from tessy.backends.openai import OpenAICompletionsBackend
    from tessy.cli import main

    async def passed(self: OpenAICompletionsBackend) -> None:  # the pre-flight check saw it alive
        return None

    monkeypatch.setattr(OpenAICompletionsBackend, "check", passed)
    path = _write_run(tmp_path, dead_url(), 5)
    started = time.monotonic()
    assert main(["synth", "--config", str(path), "teacher.outage_timeout_s=0.5", "student.outage_timeout_s=0.5"]) == 1
    assert time.monotonic() - started < 30
    assert "no replica of m has answered for 0.5 s (outage_timeout_s)" in " ".join(capsys.readouterr().err.split())
    # Nothing was lost: no sample was written or failed, so a rerun does them all.
    assert not (tmp_path / "out.failed.jsonl").exists() or not (tmp_path / "out.failed.jsonl").read_text().strip()


def test_a_flaky_server_still_gives_every_sample(tmp_path, server):
    server.queue("500", "reset", "429", "malformed", "empty", "500")
    summary = tessy.synthesize(tessy.load_config(_write_run(tmp_path, server.url, 4), ["mode=teacher-only"]))
    assert summary.written == 4 and not summary.failed


def test_streams_end_at_stop_strings_found_by_the_client(server):
    async def collect(stop: str) -> list[tessy.StreamDelta]:
        b = backend(server.url)
        try:
            return [d async for d in b.stream(request(max_tokens=8, stop=(stop,)))]
        finally:
            await b.aclose()

    deltas = asyncio.run(collect(" answ"))
    # The server is not asked to stop (it would hold text back and merge tokens in its chunks).
    assert "stop" not in server.requests[0]["body"]
    assert [p for d in deltas for p in d.pieces] == ["The"]
    assert (deltas[-1].finish_reason, deltas[-1].stop_reason) == ("stop", " answ")
    # A stop string split over chunks: the piece that might begin it is held back until the
    # next one decides, so none of it is ever yielded.
    deltas = asyncio.run(collect(" is fo"))
    assert [p for d in deltas for p in d.pieces] == ["The", " answer"]
    assert (deltas[-1].finish_reason, deltas[-1].stop_reason) == ("stop", " is fo")
    # A piece held back that turns out not to begin the stop string is text after all.
    deltas = asyncio.run(collect(" is all!"))
    assert "".join(p for d in deltas for p in d.pieces) == "The answer is forty-two and that is"
    assert deltas[-1].finish_reason == "length"


#: Every format's end-of-thinking markers (``template`` ends at its ``think_close``, ``</think>`` by default).
END_MARKERS = sorted({m for name in ("qwen3", "deepseek-r1", "chatml", "gpt-oss") for m in get_format(name).think_stop})


@pytest.mark.parametrize("marker", END_MARKERS)
def test_a_stream_never_yields_any_of_an_end_marker_split_anywhere(server, marker):
    """vLLM strips special tokens, so gpt-oss's end of analysis streams as `assistant` then `final`."""
    splits = [[marker[:i], marker[i:]] for i in range(1, len(marker))] + [list(marker)]

    async def collect(b: OpenAICompletionsBackend) -> list[tessy.StreamDelta]:
        return [d async for d in b.stream(request(max_tokens=20, stop=tuple(END_MARKERS)))]

    async def go() -> None:
        b = backend(server.url)
        try:
            for parts in splits:
                server.words = ["that", " is", " it", ".", *parts, "The", " answer"]
                deltas = await collect(b)
                assert "".join(p for d in deltas for p in d.pieces) == "that is it.", parts
                assert (deltas[-1].finish_reason, deltas[-1].stop_reason) == ("stop", marker)
                ids_ok = all(d.token_ids is None or len(d.token_ids) == len(d.pieces) for d in deltas)
                assert ids_ok
        finally:
            await b.aclose()

    asyncio.run(go())


def score(b: OpenAICompletionsBackend, prompt: str, continuation: str) -> tessy.TokenScores:
    async def run() -> tessy.TokenScores:
        try:
            return await b.score(ScoreRequest(Prompt.of(prompt), continuation, "s1"))
        finally:
            await b.aclose()

    return asyncio.run(run())


def test_scoring_keeps_the_echoed_tokens_of_the_continuation(server):
    scores = score(backend(server.url), "<|im_start|>assistant\n<think>\n", "Okay so 17 + 25")
    # The fake scores each echoed word -len(word)/10; the prompt's words and the generated
    # token are left out.
    assert scores.pieces == ["Okay", " so", " 17", " +", " 25"]
    assert scores.logprobs == pytest.approx([-0.4, -0.3, -0.3, -0.2, -0.3])
    assert not scores.truncated
    body = server.requests[0]["body"]
    assert body["prompt"] == "<|im_start|>assistant\n<think>\nOkay so 17 + 25"
    assert (body["echo"], body["logprobs"], body["max_tokens"], body["temperature"]) == (True, 1, 1, 0.0)
    assert body["add_special_tokens"] is False


def test_a_token_across_the_seam_is_left_out(server):
    # "x" ends the prompt and "yz" starts the continuation: the fake's word "xyz" straddles.
    scores = score(backend(server.url), "a x", "yz b")
    assert scores.pieces == [" b"]


def test_scoring_on_a_server_that_ignores_echo_says_what_to_do(server):
    server.queue("noecho")
    with pytest.raises(BackendError, match="--score-model") as err:
        score(backend(server.url), "prompt ", "text")
    assert not err.value.retryable and len(server.requests) == 1


def test_llamacpp_servers_do_not_offer_scoring(server):
    b = backend(server.url, server="llamacpp")
    assert not b.supports_scoring and backend(server.url, server="sglang").supports_scoring
    with pytest.raises(BackendError, match="--score-model"):
        score(b, "p", "q")
    assert server.requests == []


def test_scoring_is_retried_like_generation(server):
    server.queue("500", "reset")
    assert score(backend(server.url), "p\n", "q r").pieces == ["q", " r"]
    assert len(server.requests) == 3
