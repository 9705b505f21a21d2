"""The hf backend on a tiny random model with a byte-level tokenizer built here (no files needed).

The reference is always transformers' own ``generate()`` on the same ids: batching, cache reuse
and cut-backs must not change a single greedy token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from tessy.backends import GenerateRequest, Generation, Prompt, SamplingParams, ScoreRequest  # noqa: E402
from tessy.backends.hf import HFBackend  # noqa: E402
from tessy.errors import BackendError  # noqa: E402
from tessy.tokenizers import HFTokenizer  # noqa: E402

GREEDY = SamplingParams(temperature=0)


def tiny_tokenizer() -> Any:
    """A byte-level BPE without merges: one token per byte, plus ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>")
    hf.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return hf


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, HFTokenizer]:
    hf = tiny_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(hf),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=hf.eos_token_id,
        bos_token_id=hf.bos_token_id,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    return model, HFTokenizer(hf)


@pytest.fixture
def backend(tiny: tuple[Any, HFTokenizer]) -> Iterator[HFBackend]:
    model, tok = tiny
    b = HFBackend(model, tok, max_batch_size=4)
    b.eos_ids = frozenset()  # random weights: let generations run to max_tokens unless a test says otherwise
    yield b
    asyncio.run(b.aclose())


def request(ids: list[int], max_tokens: int, sample: str = "s", **kwargs: Any) -> GenerateRequest:
    prompt = Prompt.of("")
    return GenerateRequest(
        Prompt(prompt.view, ids),
        max_tokens,
        sample_id=sample,
        role="student",
        sampling=kwargs.pop("sampling", GREEDY),
        **kwargs,
    )


def reference(model: Any, ids: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return list(out[0, len(ids) :].tolist())


def ids_of(tok: HFTokenizer, text: str) -> list[int]:
    return tok.encode(text)


def assert_greedy(model: Any, prompt: list[int], gen: Generation, max_tokens: int) -> None:
    """The generation is what generate() gives for as many tokens: max_tokens, or up to three
    more when the last one left a character unfinished (random weights emit loose bytes)."""
    ids = gen.token_ids or []
    assert max_tokens <= len(ids) <= max_tokens + 3
    assert ids == reference(model, prompt, len(ids))


class TestBatching:
    def test_batched_greedy_decoding_equals_generate(self, tiny: tuple[Any, HFTokenizer], backend: HFBackend) -> None:
        model, tok = tiny
        prompts = [ids_of(tok, t) for t in ("Hello there", "A much longer prompt than the first", "x", "2+2=")]

        async def go() -> list[Generation]:
            return await asyncio.gather(*(backend.generate(request(p, 10, f"s{i}")) for i, p in enumerate(prompts)))

        gens = asyncio.run(go())
        for p, gen in zip(prompts, gens, strict=True):
            assert_greedy(model, p, gen, 10)
            assert gen.finish_reason == "length"
            assert len(gen.pieces) == len(gen.token_ids)
        assert backend.stats.mean_batch > 1.5  # the samples were decoded together
        assert backend.stats.prefill_tokens == sum(map(len, prompts))

    def test_more_requests_than_the_batch_holds_all_finish(self, tiny: tuple[Any, HFTokenizer]) -> None:
        model, tok = tiny
        b = HFBackend(model, tok, max_batch_size=2)
        b.eos_ids = frozenset()

        async def go() -> list[Generation]:
            try:
                return await asyncio.gather(
                    *(b.generate(request(ids_of(tok, f"p{i}"), 4 + i, f"s{i}")) for i in range(5))
                )
            finally:
                await b.aclose()

        gens = asyncio.run(go())
        for i, gen in enumerate(gens):
            assert_greedy(model, ids_of(tok, f"p{i}"), gen, 4 + i)


class TestCache:
    def test_a_continued_prompt_feeds_only_its_new_tokens(
        self, tiny: tuple[Any, HFTokenizer], backend: HFBackend
    ) -> None:
        model, tok = tiny
        prompt = ids_of(tok, "The prompt")

        async def go() -> tuple[Generation, Generation]:
            first = await backend.generate(request(prompt, 8))
            assert first.token_ids is not None
            # Keep 3 generated tokens, add the other role's text (2 tokens), ask again.
            second_prompt = prompt + first.token_ids[:3] + ids_of(tok, "ok")
            before = backend.stats.prefill_tokens
            second = await backend.generate(request(second_prompt, 6))
            assert backend.stats.prefill_tokens - before == 2
            assert_greedy(model, second_prompt, second, 6)
            return first, second

        asyncio.run(go())
        assert backend.stats.cache_misses == 0

    def test_a_prompt_that_does_not_extend_the_last_one_is_a_counted_miss(
        self, tiny: tuple[Any, HFTokenizer], backend: HFBackend
    ) -> None:
        model, tok = tiny

        async def go() -> Generation:
            await backend.generate(request(ids_of(tok, "abcdef"), 4))
            return await backend.generate(request(ids_of(tok, "abcXYZ"), 4))

        gen = asyncio.run(go())
        assert backend.stats.cache_misses == 1
        assert_greedy(model, ids_of(tok, "abcXYZ"), gen, 4)

    def test_old_caches_are_evicted_and_a_released_sample_holds_none(self, tiny: tuple[Any, HFTokenizer]) -> None:
        model, tok = tiny
        b = HFBackend(model, tok, cache_tokens=40)
        b.eos_ids = frozenset()

        async def go() -> None:
            await b.generate(request(ids_of(tok, "a" * 20), 4, "one"))
            await b.generate(request(ids_of(tok, "b" * 20), 4, "two"))  # 46 tokens > 40: "one" goes
            assert b.stats.evictions == 1
            assert (b.stats.cached_sequences, b.stats.cached_tokens) == (1, 23)  # 20 + 3 fed
            await b.generate(request(ids_of(tok, "b" * 20), 4, "two", phase="answer"))
            assert b.stats.cached_sequences == 1  # a request's phase says nothing about the sample's end
            await b.release("two")
            assert (b.stats.cached_sequences, b.stats.cached_tokens) == (0, 0)
            await b.aclose()

        asyncio.run(go())
        assert b.stats.evictions == 1

    def test_release_drops_every_role_of_that_sample_only(
        self, tiny: tuple[Any, HFTokenizer], backend: HFBackend
    ) -> None:
        _, tok = tiny

        async def go() -> None:
            await backend.release("x")  # nothing started yet: a no-op
            for sample in ("x", "y"):
                for role in ("student", "teacher"):
                    req = request(ids_of(tok, f"{sample} {role}"), 3, sample)
                    await backend.generate(GenerateRequest(req.prompt, 3, sample_id=sample, role=role, sampling=GREEDY))
            assert backend.stats.cached_sequences == 4
            await backend.release("x")
            assert backend.stats.cached_sequences == 2
            await backend.release("x")  # twice: still a no-op
            assert backend.stats.cached_sequences == 2

        asyncio.run(go())

    def test_a_request_running_when_its_sample_is_released_keeps_no_cache(
        self, tiny: tuple[Any, HFTokenizer], backend: HFBackend
    ) -> None:
        _, tok = tiny

        async def go() -> None:
            stream = backend.stream(request(ids_of(tok, "hello"), 40, "x"))
            await anext(stream)  # decoding has begun
            await backend.release("x")
            async for _ in stream:
                pass
            assert backend.stats.cached_sequences == 0

        asyncio.run(go())


class TestStops:
    def test_stop_string_cuts_where_it_starts(self, tiny: tuple[Any, HFTokenizer], backend: HFBackend) -> None:
        _, tok = tiny
        prompt = ids_of(tok, "Say something")
        full = asyncio.run(backend.generate(request(prompt, 12, "a")))
        text = full.text
        stop = text[5:7]
        gen = asyncio.run(backend.generate(request(prompt, 12, "b", stop=(stop,))))
        assert gen.finish_reason == "stop" and gen.stop_reason == stop
        assert gen.text == text[: text.find(stop)]
        assert gen.token_ids == (full.token_ids or [])[: len(gen.token_ids or [])]
        assert len(gen.pieces) - len(gen.token_ids or []) in (0, 1)

    def test_end_of_sequence_is_neither_text_nor_id(self, tiny: tuple[Any, HFTokenizer], backend: HFBackend) -> None:
        _, tok = tiny
        prompt = ids_of(tok, "Say something")
        full = asyncio.run(backend.generate(request(prompt, 8, "a")))
        assert full.token_ids is not None
        backend.eos_ids = frozenset({full.token_ids[3]})
        gen = asyncio.run(backend.generate(request(prompt, 8, "b")))
        first_eos = full.token_ids.index(full.token_ids[3])
        assert gen.finish_reason == "stop" and gen.stop_reason is None
        assert gen.token_ids == full.token_ids[:first_eos]

    def test_a_prompt_longer_than_the_model_is_refused(self, tiny: tuple[Any, HFTokenizer], backend: HFBackend) -> None:
        with pytest.raises(BackendError, match="at most") as info:
            asyncio.run(backend.generate(request([1] * 300, 4)))
        assert not info.value.retryable


class TestStreamingAndSampling:
    def test_stream_gives_the_same_tokens_as_generate(self, tiny: tuple[Any, HFTokenizer], backend: HFBackend) -> None:
        _, tok = tiny
        prompt = ids_of(tok, "Stream me")

        async def go() -> tuple[Generation, list[Any]]:
            gen = await backend.generate(request(prompt, 9, "a"))
            deltas = [d async for d in backend.stream(request(prompt, 9, "b"))]
            return gen, deltas

        gen, deltas = asyncio.run(go())
        assert [p for d in deltas for p in d.pieces] == gen.pieces
        assert [i for d in deltas for i in d.token_ids or []] == gen.token_ids
        assert deltas[-1].finish_reason == "length" and all(d.finish_reason is None for d in deltas[:-1])

    def test_closing_a_stream_early_stops_it(self, tiny: tuple[Any, HFTokenizer], backend: HFBackend) -> None:
        _, tok = tiny

        async def go() -> Generation:
            stream = backend.stream(request(ids_of(tok, "Stream me"), 200, "a"))
            async for _ in stream:
                break
            await stream.aclose()
            return await backend.generate(request(ids_of(tok, "next"), 3, "b"))

        assert 3 <= len(asyncio.run(go()).pieces) <= 6
        assert backend.stats.generated_tokens < 50

    def test_a_seed_makes_sampling_reproducible(self, tiny: tuple[Any, HFTokenizer], backend: HFBackend) -> None:
        _, tok = tiny
        prompt = ids_of(tok, "Sample")

        def sample(seed: int, sample_id: str) -> list[int]:
            params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=seed)
            gen = asyncio.run(backend.generate(request(prompt, 12, sample_id, sampling=params)))
            return gen.token_ids or []

        assert sample(1, "a") == sample(1, "a")
        assert sample(1, "a") != sample(2, "a")

    def test_closed_backend_refuses_requests(self, tiny: tuple[Any, HFTokenizer]) -> None:
        model, tok = tiny
        b = HFBackend(model, tok)
        asyncio.run(b.aclose())
        with pytest.raises(BackendError, match="closed"):
            asyncio.run(b.generate(request([1, 2], 2)))


class TestWithTheEngine:
    @pytest.mark.parametrize("streaming", [False, True])
    def test_cooperating_models_prefill_only_what_the_other_wrote(
        self, tiny: tuple[Any, HFTokenizer], streaming: bool
    ) -> None:
        from tessy import Engine, Limits, Role, Sample, get_format
        from tessy.fakes import ScriptedPredictor

        model, tok = tiny
        student, teacher = HFBackend(model, tok), HFBackend(model, tok)
        for b in (student, teacher):
            b.eos_ids = frozenset()

        def every_third(query: Any) -> int | None:
            return min(2, query.max_position)

        engine = Engine(
            Role("teacher", teacher, get_format("chatml"), ScriptedPredictor(responder=every_third), 6, GREEDY, tok),
            Role("student", student, get_format("chatml"), ScriptedPredictor(responder=every_third), 6, GREEDY, tok),
            limits=Limits(max_total_tokens=80, max_thinking_tokens=60, repetition=None),
            streaming=streaming,
        )

        async def go() -> Any:
            try:
                return await engine.run_sample(Sample.from_prompt("s", "What is 2+2?"))
            finally:
                await student.aclose()
                await teacher.aclose()

        result = asyncio.run(go())
        # Random weights never end their answer: the sample fails on its budget, after the thinking.
        assert result.failure is not None and result.failure.startswith("token_budget")
        assert result.stats.switches >= 2  # random text: a long "word" keeps the turn
        assert result.stats.prefix_misses == 0
        header = len(tok.encode(get_format("chatml").render_think([{"role": "user", "content": "What is 2+2?"}])))
        suffix = len(tok.encode(get_format("chatml").answer_suffix()))
        for name, b in (("student", student), ("teacher", teacher)):
            assert b.stats.cache_misses == 0
            # A role prefills its header once, then only what the other role wrote (plus, when it
            # goes on after itself, the last token it generated, never fed), and the answer's suffix.
            foreign = sum(len(tok.encode(s.text)) for s in result.spans if s.phase == "think" and s.source != name)
            assert header < b.stats.prefill_tokens <= header + foreign + b.stats.requests + suffix

    def test_a_sample_that_fails_while_thinking_releases_its_kv_caches_and_classifier_windows(
        self, tiny: tuple[Any, HFTokenizer], tmp_path: Any
    ) -> None:
        from tessy import Engine, Limits, Role, Sample, get_format
        from tessy.boundary.classifier import ClassifierPredictor
        from tiny_models import save_tiny_backbone

        model, tok = tiny
        backend = HFBackend(model, tok)  # both roles on one model, as a self-cooperation run would be
        backend.eos_ids = frozenset()
        classifier = ClassifierPredictor.load(save_tiny_backbone(tmp_path / "ckpt"), device="cpu")
        fmt = get_format("chatml")
        engine = Engine(
            Role("teacher", backend, fmt, classifier, 6, GREEDY, tok),
            Role("student", backend, fmt, classifier, 6, GREEDY, tok),
            # Thinking never ends and no budget stops it: the prompt outgrows the model's 256
            # positions, and the request that finds it too long fails the sample (not retryable).
            limits=Limits(max_total_tokens=4000, max_thinking_tokens=3000, repetition=None),
        )

        async def go() -> Any:
            async with engine:
                result = await engine.run_sample(Sample.from_prompt("s", "What is 2+2?"))
                # Checked before closing: the session, not the close, let go of the sample.
                assert (backend.stats.cached_sequences, backend.stats.cached_tokens) == (0, 0)
                assert classifier.held == []
                return result

        result = asyncio.run(go())
        assert result.failure is not None and result.failure.kind == "request_failed"
        assert "256" in result.failure.detail and not any(s.phase == "answer" for s in result.spans)
        # While it ran, the sample's caches were held and reused.
        assert backend.stats.requests > 10 and backend.stats.cache_misses == 0
        assert backend.stats.prefill_tokens < backend.stats.prompt_tokens / 4
        assert classifier.stats.reused > 0


def test_scoring_gives_each_continuation_token_its_log_probability(
    tiny: tuple[Any, HFTokenizer], backend: HFBackend
) -> None:
    """One token per byte: the scores are the model's own log-softmax at each byte of the
    continuation, also while a generation shares the device."""
    model, tok = tiny
    prompt, continuation = "<|im_start|>assistant\n", "Okay, 7"

    async def go() -> Any:
        busy = asyncio.ensure_future(backend.generate(request(ids_of(tok, "Hello"), 12, sample="busy")))
        scores = await backend.score(ScoreRequest(Prompt.of(prompt), continuation, "s"))
        await busy
        return scores

    scores = asyncio.run(go())
    ids = ids_of(tok, prompt) + ids_of(tok, continuation)
    start = len(ids_of(tok, prompt))
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = [logprobs[i - 1, ids[i]].item() for i in range(start, len(ids))]
    assert len(scores) == len(continuation) and not scores.truncated
    assert scores.logprobs == pytest.approx(expected, abs=1e-5)
    assert "".join(tok.hf.convert_tokens_to_string([p]) for p in scores.pieces) == continuation


def test_scoring_with_top_k_ranks_each_token_exactly(tiny: tuple[Any, HFTokenizer], backend: HFBackend) -> None:
    """The hf backend ranks in the same pass as it scores: one plus the tokens with a higher
    logit, checked against a full sort of the model's predictions; nothing is censored."""
    model, tok = tiny
    prompt, continuation = "<|im_start|>assistant\n", "Okay, 7 + 5"
    scores = asyncio.run(backend.score(ScoreRequest(Prompt.of(prompt), continuation, "s", top_k=3)))
    ids = ids_of(tok, prompt) + ids_of(tok, continuation)
    start = len(ids_of(tok, prompt))
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].float()
    expected = []
    for i in range(start, len(ids)):
        order = sorted(range(logits.shape[1]), key=lambda j: (-float(logits[i - 1, j]), j != ids[i]))
        expected.append(order.index(ids[i]) + 1)
    assert scores.ranks == expected and scores.rank_limit is None and scores.censored == 0
    assert any(r > 3 for r in expected)  # ranks past the top-k are exact too
