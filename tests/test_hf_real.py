"""The hf backend with a real model (SmolLM2-135M-Instruct on the CPU), a few tokens at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from real_models import model_path
from tessy import Engine, Limits, Role, Sample, get_format
from tessy.backends import GenerateRequest, Prompt, SamplingParams
from tessy.boundary import LexiconPredictor

pytestmark = pytest.mark.real
torch = pytest.importorskip("torch")

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def smol() -> Iterator[Any]:
    from tessy.backends.hf import HFBackend

    backend = HFBackend.load(model_path("smollm2-135m"), device="cpu", max_batch_size=4)
    yield backend
    asyncio.run(backend.aclose())


def test_greedy_tokens_equal_generate(smol: Any) -> None:
    prompt = get_format("chatml", tokenizer=smol.tokenizer).render_think([{"role": "user", "content": "Hi!"}])
    ids = smol.tokenizer.encode(prompt)
    gen = asyncio.run(smol.generate(GenerateRequest(Prompt.of(prompt), 8, sampling=GREEDY, sample_id="g")))
    with torch.inference_mode():
        out = smol.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    expected = out[0, len(ids) :].tolist()
    eos = expected.index(2) if 2 in expected else len(expected)  # <|im_end|> ends a turn
    assert gen.token_ids == expected[:eos]
    assert gen.text == smol.tokenizer.decode(expected[:eos])


def test_two_roles_on_one_model_hand_off_token_exactly(smol: Any) -> None:
    tok = smol.tokenizer
    fmt = get_format("chatml", tokenizer=tok)
    predictor = LexiconPredictor()
    engine = Engine(
        Role("teacher", smol, fmt, predictor, 8, GREEDY, tok),
        Role("student", smol, fmt, predictor, 8, GREEDY, tok),
        limits=Limits(max_total_tokens=64, max_thinking_tokens=40, repetition=None),
    )
    before = smol.stats.prefill_tokens, smol.stats.prompt_tokens, smol.stats.cache_misses
    samples = [Sample.from_prompt(f"s{i}", q) for i, q in enumerate(["What is 17 + 25?", "Name a prime number."])]

    async def go() -> list[Any]:
        return [r async for r in engine.run(samples)]

    results = asyncio.run(go())
    for result in results:
        assert result.stats.prefix_misses == 0
        assert result.stats.requests > 2
        if result.ok:
            assert result.response is not None and result.response.startswith("<think>\n")
    prefilled = smol.stats.prefill_tokens - before[0]
    prompts = smol.stats.prompt_tokens - before[1]
    assert smol.stats.cache_misses == before[2]
    assert prefilled < prompts / 2  # only the new tokens of each turn are fed
