"""The simulated engine behind ``tessy bench``: tokenizer, fake model, KV blocks, scheduling,
the virtual clock, the in-process backend and the benchmark harness."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tessy import GenerateRequest, Prompt, get_format
from tessy.bench import QUICK, BenchConfig, SimEngine, SimParams, Workload, make_engines, ratio_lines, run_bench
from tessy.bench.backend import SimBackend
from tessy.bench.cache import BlockPool, block_hashes
from tessy.bench.clock import run_virtual
from tessy.bench.model import STUDENT, TEACHER, FakeModel, sim_tokenizer
from tessy.bench.tokenizer import SimTokenizer
from tessy.boundary import LexiconPredictor, TokenType
from tessy.cli import main
from tessy.text import TextView

SRC = str(Path(__file__).resolve().parents[1] / "src")
QWEN = get_format("qwen3")
MSGS = [{"role": "user", "content": "What is 17 + 25? Show your working."}]


async def drain(r):  # type: ignore[no-untyped-def]
    while not r.done:
        await r.updated.wait()
        r.updated.clear()
    return r


# -- tokenizer and model --------------------------------------------------------------------


def test_token_ids_do_not_depend_on_the_process() -> None:
    """Ids (and so the fake model's text) are the same whatever Python's string-hash seed."""
    code = "from tessy.bench.model import sim_tokenizer as t; print(t().encode(' Sum of 17, Okay so'))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": SRC},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {str(sim_tokenizer().encode(" Sum of 17, Okay so")) + "\n"}


def test_tokenizer_round_trips_any_text_with_the_same_ids_everywhere() -> None:
    tok = sim_tokenizer()
    text = "<|im_start|>user\nCafé — naïve 12345 x=y\t\t!<|im_end|>\n<think>\n Okay, so</think>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert SimTokenizer(["sum", "okay"]).encode(" Okay, so 17") == SimTokenizer(["okay", "sum"]).encode(" Okay, so 17")
    assert tok.encode("</think>") == [tok.think_end_id]
    assert tok.decode([tok.eos_id, tok.think_end_id], skip_special=True) == "</think>"


def test_model_ends_thinking_at_the_same_length_for_every_model_and_format() -> None:
    tok = sim_tokenizer()
    w = Workload((50, 90), (5, 9))
    teacher, student = FakeModel("t", TEACHER, w, tok), FakeModel("s", STUDENT, w, tok)
    q = tok.encode(QWEN.render_think(MSGS))
    d = tok.encode(get_format("deepseek-r1").render_think(MSGS))
    assert teacher.read(q).sample_seed == student.read(d).sample_seed
    info = teacher.read(q)
    assert info.phase == "think" and info.position == 1  # the newline after <think>
    out = list(teacher.continuation(info))
    think_len, answer_len = w.lengths(info.sample_seed)
    left = think_len - info.position
    assert out[left] == tok.think_end_id
    assert out[-1] == tok.eos_id and len(out) == left + 3 + answer_len + 1
    # Halfway through, written by the other model, the end comes at the same place.
    half = q + out[:20]
    rest = list(student.continuation(student.read(half)))
    assert rest.index(tok.think_end_id) == left - 20


def test_capability_text_holds_no_style_phrase_and_the_student_writes_style() -> None:
    tok = sim_tokenizer()
    model = FakeModel("t", replace(TEACHER, first_style=0.0, style_rate=0.0), Workload((400, 400)), tok)
    ids = list(model.continuation(model.read(tok.encode(QWEN.render_think(MSGS)))))[:400]
    pieces = [tok.piece(i) for i in ids]
    types = LexiconPredictor().token_types(TextView.of(""), pieces)
    assert set(types) == {TokenType.CAPABILITY}
    student = FakeModel("s", STUDENT, Workload((400, 400)), tok)
    opening = [tok.piece(i) for i in list(student.continuation(student.read(tok.encode(QWEN.render_think(MSGS)))))[:6]]
    assert TokenType.STYLE in LexiconPredictor().token_types(TextView.of(""), opening)


# -- KV blocks ----------------------------------------------------------------------------------


def test_block_pool_caches_full_blocks_and_evicts_the_least_recently_used() -> None:
    pool = BlockPool(capacity=4, block_size=2)
    a = block_hashes([1, 2, 3, 4], 2, 2)
    assert pool.allocate(2)
    for h in a:
        pool.register(h)
    assert pool.lookup(a) == 2 and pool.used == 2
    pool.release(a, 0)  # done: cached and free
    b = block_hashes([9, 9, 8, 8], 2, 2)
    assert pool.allocate(2)  # fits without eviction
    for h in b:
        pool.register(h)
    pool.release(b, 0)
    assert pool.allocate(1) and pool.evicted == 1  # the oldest free block (a's first) goes
    assert pool.lookup(a) == 0 and pool.lookup(b) == 2
    pool.acquire(b)
    assert not pool.allocate(3)  # b is held and one private block: only a[1] could go
    assert pool.reset() == 1 and pool.cached == 2


# -- the virtual clock and the engine -------------------------------------------------------------


def test_virtual_clock_jumps_over_sleeps() -> None:
    async def sleepy() -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(asyncio.sleep(3600), asyncio.sleep(1800))
        return loop.time() - t0

    started = time.perf_counter()
    assert run_virtual(sleepy()) == pytest.approx(3600)
    assert time.perf_counter() - started < 1


def _engine(params: SimParams | None = None, workload: Workload | None = None) -> SimEngine:
    return make_engines(params, workload or Workload((40, 40), (4, 4)))["sim-teacher"]


def test_steps_cost_what_the_model_says_and_batching_shares_them() -> None:
    params = SimParams(decode_step_s=0.01, decode_s_per_seq=0.001, prefill_s_per_token=0.0, request_overhead_s=0.0)

    async def timed(n: int) -> float:
        engine = _engine(params)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        prompts = [QWEN.render_think([{"role": "user", "content": f"q{i}"}]) for i in range(n)]
        requests = [await engine.submit(p, max_tokens=30) for p in prompts]
        await asyncio.gather(*(drain(r) for r in requests))
        await engine.aclose()
        return loop.time() - t0

    one = run_virtual(timed(1))
    sixteen = run_virtual(timed(16))
    assert one == pytest.approx(30 * 0.011)
    # One batch (the later arrivals join a step late), not 16 turns.
    assert sixteen == pytest.approx(30 * (0.01 + 16 * 0.001), abs=0.03)
    assert sixteen < 3 * one


def test_prefix_cache_hits_whole_blocks_only() -> None:
    async def scenario() -> list[int]:
        engine = _engine()
        tok = engine.tok
        base = tok.encode(QWEN.render_think(MSGS))
        out = []
        r = await drain(await engine.submit(base, max_tokens=5))
        out.append(r.cached_tokens)
        # The same prompt plus what was written: every full block of the first prompt hits.
        r2 = await drain(await engine.submit(base + r.output_ids, max_tokens=5))
        out.append(r2.cached_tokens)
        # A prompt of exactly whole blocks, twice: the last block is computed again.
        exact = list(range(300, 348))
        await drain(await engine.submit(exact, max_tokens=1))
        out.append((await drain(await engine.submit(exact, max_tokens=1))).cached_tokens)
        engine.reset_prefix_cache()
        out.append((await drain(await engine.submit(exact, max_tokens=1))).cached_tokens)
        out.append(len(base))
        await engine.aclose()
        return out

    first, second, exact_again, after_reset, n = run_virtual(scenario())
    assert first == 0
    assert second == ((n + 5 - 1) // 16) * 16
    assert exact_again == 32 and after_reset == 0


def test_preemption_under_memory_pressure_changes_timing_not_output() -> None:
    async def outputs(blocks: int) -> tuple[list[list[int]], int]:
        engine = _engine(SimParams(cache_blocks=blocks), Workload((120, 120), (4, 4)))
        prompts = [QWEN.render_think([{"role": "user", "content": f"question {i}"}]) for i in range(8)]
        requests = [await engine.submit(p, max_tokens=200) for p in prompts]
        await asyncio.gather(*(drain(r) for r in requests))
        await engine.aclose()
        return [r.output_ids for r in requests], engine.stats.preempted

    roomy, none = run_virtual(outputs(4096))
    tight, preempted = run_virtual(outputs(40))
    assert none == 0 and preempted > 0
    assert tight == roomy


def test_stop_strings_eos_and_length() -> None:
    async def scenario() -> list[tuple[str | None, object, str]]:
        engine = _engine()
        think = QWEN.render_think(MSGS)
        out = []
        for prompt, kwargs in (
            (think, {"max_tokens": 500, "stop": ["</think>"]}),
            (think, {"max_tokens": 500, "stop": ["</think>"], "include_stop_str_in_output": True}),
            (QWEN.render_answer(MSGS, "done"), {"max_tokens": 500}),
            (think, {"max_tokens": 3}),
        ):
            r = await drain(await engine.submit(prompt, **kwargs))  # type: ignore[arg-type]
            out.append((r.finish_reason, r.stop_reason, r.text))
        await engine.aclose()
        return out

    stopped, included, answered, short = run_virtual(scenario())
    assert stopped[:2] == ("stop", "</think>") and "</think>" not in stopped[2]
    assert included[2] == stopped[2] + "</think>"
    assert answered[:2] == ("stop", None) and "<|im_end|>" not in answered[2]
    assert short[0] == "length"


async def _stream_and_close(backend: SimBackend) -> int:
    request = GenerateRequest(Prompt.of(QWEN.render_think(MSGS)), max_tokens=30)
    seen = 0
    deltas = backend.stream(request)
    async for delta in deltas:
        seen += len(delta.pieces)
        if seen >= 3:
            break
    await deltas.aclose()
    await asyncio.sleep(0.1)  # the engine notices at its next step
    return seen


def test_in_process_backend_aborts_a_closed_stream() -> None:
    async def scenario() -> tuple[int, int, int]:
        engine = _engine()
        backend = SimBackend(engine)
        seen = await _stream_and_close(backend)
        gen = await backend.generate(GenerateRequest(Prompt.of(QWEN.render_think(MSGS)), max_tokens=7))
        stats = engine.stats
        await engine.aclose()
        return seen, stats.aborted, len(gen.pieces)

    seen, aborted, n = run_virtual(scenario())
    assert seen >= 3 and aborted == 1 and n == 7


# -- the harness ----------------------------------------------------------------------------------

TINY = BenchConfig(
    concurrency=(1, 4), waves=1, min_samples=2, workload=Workload((60, 120), (8, 12)), transport="in-process"
)


def test_bench_in_process_measures_every_setup() -> None:
    result = run_bench(TINY)
    assert [(r.setup, r.concurrency) for r in result.rows] == [
        (s, c) for c in (1, 4) for s in ("lower", "chunked", "streaming")
    ]
    for c in (1, 4):
        lower, chunked, streaming = (result.row(s, c) for s in ("lower", "chunked", "streaming"))
        assert lower.ratio == 1.0 and lower.requests_per_sample == 1.0 and lower.discarded_per_sample == 0
        assert chunked.failed == streaming.failed == 0
        # The same prompts make about as many tokens whoever writes them.
        assert chunked.tokens_per_sample == pytest.approx(lower.tokens_per_sample, rel=0.05)
        # Cooperation costs requests, discarded tokens and re-prefill; streaming needs fewer requests.
        assert chunked.ratio > 1 and streaming.ratio > 1
        assert streaming.requests_per_sample <= chunked.requests_per_sample
        assert chunked.reprefill_per_sample > lower.reprefill_per_sample
        assert chunked.cache_hit > 0.5
    assert ratio_lines(result)[-1].startswith("ratio_streaming_4 ")
    # A smaller lookahead wastes fewer streamed tokens; the lexicon's own settling does as well as none.
    eager = run_bench(replace(TINY, concurrency=(4,), lookahead=0))
    patient = run_bench(replace(TINY, concurrency=(4,), lookahead=5))
    assert eager.row("streaming", 4).discarded_per_sample < patient.row("streaming", 4).discarded_per_sample
    assert result.row("streaming", 4).discarded_per_sample < patient.row("streaming", 4).discarded_per_sample


def test_both_transports_build_the_engine_from_one_run_config_with_the_lookahead_in_it() -> None:
    from tessy.bench.settings import synth_config
    from tessy.bench.targets import InProcess
    from tessy.build import build_engine

    synth = synth_config(replace(TINY, lookahead=0), InProcess.url, streaming=True, concurrency=4)
    assert synth.streaming and synth.max_in_flight == 4 and not synth.guards.repetition
    target = InProcess(make_engines(workload=TINY.workload))
    engine = build_engine(synth, backends={"teacher": target.backend(synth.teacher)})
    assert isinstance(engine.roles["teacher"].backend, SimBackend)
    assert engine.roles["teacher"].backend.max_concurrency == 4
    assert type(engine.roles["student"].backend).__name__ == "OpenAICompletionsBackend"  # not replaced: configured
    for role in engine.roles.values():
        assert isinstance(role.predictor, LexiconPredictor) and role.predictor.lookahead == 0
        assert role.chunk_tokens == TINY.chunk_tokens and role.sampling.seed == 0
    asyncio.run(engine.aclose())


def test_import_tessy_leaves_the_benchmark_unloaded() -> None:
    code = "import sys, tessy; print(sorted(m for m in sys.modules if m.startswith('tessy.bench')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert out.stdout.strip() == "[]"


def test_cli_bench_prints_the_table_and_the_ratio_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--quick", "--concurrency", "2", "--transport", "in-process"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any("TESSY streaming" in line for line in out)
    name, value = out[-1].split()
    assert name == "ratio_streaming_2" and float(value) > 1
    assert QUICK.samples_at(2) == 4 and QUICK.samples_at(1) == 3


@pytest.mark.slow
@pytest.mark.contract
def test_bench_over_http_through_the_openai_backend() -> None:
    """The http transport: the server in its own process, tessy through ``backend: openai``."""
    config = replace(TINY, concurrency=(2,), transport="http", workload=Workload((40, 80), (5, 10)))
    result = run_bench(config)
    assert result.transport == "http"
    lower, chunked, streaming = (result.row(s, 2) for s in ("lower", "chunked", "streaming"))
    assert chunked.failed == streaming.failed == 0
    assert chunked.tokens_per_sample == pytest.approx(lower.tokens_per_sample, rel=0.1)
    assert chunked.requests_per_sample > streaming.requests_per_sample > 1
    assert chunked.server["sim-teacher"]["requests"] > 0 and chunked.server["sim-student"]["requests"] > 0


def test_bench_counts_kept_and_generated_tokens_and_the_client_cpu_per_setup() -> None:
    from tessy.bench import client_lines, client_table

    result = run_bench(replace(TINY, concurrency=(4,)))
    lower, chunked, streaming = (result.row(s, 4) for s in ("lower", "chunked", "streaming"))
    for row in (lower, chunked, streaming):
        assert row.kept_tokens == pytest.approx(row.tokens_per_sample * row.samples, rel=0.01)
        assert row.requests == round(row.requests_per_sample * row.samples)
        assert row.client_cpu_s > 0 and row.client_us_per_kept > 0 and row.client_us_per_request > 0
    # The bound keeps all it asks for; chunks throw away what lies past each cut.
    assert lower.generated_per_kept == pytest.approx(1.0, abs=0.02)
    assert chunked.generated_per_kept > 1.05
    assert streaming.generated_tokens >= streaming.kept_tokens
    head, rows = client_table(result)
    assert len(rows) == 3 and "client us/kept token" in head
    lines = dict(line.split() for line in client_lines(result))
    assert float(lines["streaming_generated_per_kept_4"]) == pytest.approx(streaming.generated_per_kept, abs=1e-3)
    assert {"lower_kept_tokens_per_s_4", "chunked_client_us_per_request_4"} <= set(lines)
