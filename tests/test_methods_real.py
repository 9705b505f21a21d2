"""Every comparison mode on a real model: SmolLM2-135M-Instruct in process (``backend: hf``),
which can score text as well as write it. Short budgets: each mode runs in seconds on a CPU.

RSD is also run across two tokenizers: a teacher with a byte-level tokenizer of its own (a tiny
random model) and SmolLM2 as the student, judged through the character spans of the student's
own tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from real_models import model_path
from tessy import Engine, Limits, Role, Sample, get_format
from tessy.backends import SamplingParams
from tessy.boundary import LexiconPredictor
from tessy.check import check_record
from tessy.engine.methods import MethodSettings
from tessy.records import Record, SampleResult

pytestmark = pytest.mark.real
torch = pytest.importorskip("torch")

SAMPLING = SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=7)
LIMITS = Limits(max_total_tokens=48, max_thinking_tokens=16, repetition=None)
#: One short question a mode: a one-word answer ends well within the budget.
PROMPTS = ["Answer in one word: what colour is the sky on a clear day?"]


@pytest.fixture(scope="module")
def smol() -> Iterator[Any]:
    from tessy.backends.hf import HFBackend

    # One thread: on a busy shared CPU, torch's threads wait on each other and decoding runs
    # ten times slower (measured here: 16 tokens in 106 s with the default, 7 s with one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    backend = HFBackend.load(model_path("smollm2-135m"), device="cpu", max_batch_size=8)
    yield backend
    asyncio.run(backend.aclose())
    torch.set_num_threads(threads)


def roles(teacher: Any, student: Any) -> tuple[Role, Role]:
    def one(name: Any, backend: Any) -> Role:
        fmt = get_format("chatml", tokenizer=backend.tokenizer)
        return Role(name, backend, fmt, LexiconPredictor(), 8, SAMPLING, backend.tokenizer)

    return one("teacher", teacher), one("student", student)


def synthesize(mode: str, teacher: Any, student: Any, **settings: Any) -> list[SampleResult]:
    t, s = roles(teacher, student)
    engine = Engine(t, s, mode=mode, limits=LIMITS, methods=MethodSettings(**settings))
    samples = [Sample.from_prompt(f"{mode}-{i}", q) for i, q in enumerate(PROMPTS)]

    async def go() -> list[SampleResult]:
        return [r async for r in engine.run(samples)]

    return asyncio.run(go())


def finished(results: list[SampleResult], mode: str) -> list[SampleResult]:
    """The results that finished, each checked against every invariant (some may run out of
    budget: the model is small and the budget tiny)."""
    done = [r for r in results if r.ok]
    assert done, [str(r.failure) for r in results]
    fmt = get_format("chatml")
    for r in done:
        record = Record.from_result(r, "h", mode)
        assert check_record(record, markers=fmt.think_stop) == [], (r.spans, r.stats)
        assert r.response and r.stats.requests > 0
    return done


def test_rsd_on_a_real_model_keeps_likely_teacher_tokens_and_replaces_the_rest(smol: Any) -> None:
    results = synthesize("rsd", smol, smol, rsd_threshold=0.05, rsd_propose_tokens=8)
    for r in finished(results, "rsd"):
        s = r.stats
        assert s.proposed_tokens >= s.teacher_tokens > 0
        assert s.student_tokens <= s.replaced_tokens
        # One scoring request per proposal, never one per token.
        assert s.score_requests < s.proposed_tokens
        print(f"rsd {r.sample.id}: {s.requests / s.total_tokens:.3f} requests per kept token, "
              f"{s.replaced_tokens}/{s.proposed_tokens} proposed tokens replaced")  # fmt: skip


def test_rsd_judges_a_teacher_with_another_tokenizer_through_the_students_own_tokens(smol: Any) -> None:
    import transformers

    from tessy.backends.hf import HFBackend
    from tessy.tokenizers import HFTokenizer
    from tiny_models import tiny_tokenizer

    hf = tiny_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(hf), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=hf.eos_token_id,
    )  # fmt: skip
    teacher = HFBackend(transformers.LlamaForCausalLM(config).eval(), HFTokenizer(hf))
    try:
        t = Role("teacher", teacher, get_format("qwen3"), LexiconPredictor(), 8, SAMPLING, teacher.tokenizer)
        _, s = roles(smol, smol)
        engine = Engine(t, s, mode="rsd", limits=LIMITS, methods=MethodSettings(rsd_threshold=0.05))
        sample = Sample.from_prompt("cross", "What is 17 + 25?")
        result = asyncio.run(engine.run_sample(sample))
    finally:
        asyncio.run(teacher.aclose())
    # A random teacher's tokens are mostly unlikely to the student: it replaces most of them,
    # each judged by the student's own tokens' spans.
    stats = result.stats
    assert stats.proposed_tokens > 0 and stats.replaced_tokens > 0
    assert stats.student_tokens <= stats.replaced_tokens
    if result.ok:
        assert check_record(Record.from_result(result, "h", "rsd"), markers=("</think>", "<|im_end|>")) == []


def test_teacher_score_on_a_real_model_keeps_the_first_best_graded_candidate(smol: Any) -> None:
    results = synthesize("teacher-score", smol, smol, candidates=2, score_max_tokens=16)
    for r in finished(results, "teacher-score"):
        assert r.stats.candidates == 2 and r.stats.kept_candidate is not None
        assert 1 <= r.stats.score_requests <= 2  # one grade per candidate that finished
        assert {s.source for s in r.spans} == {"student"}


def test_student_select_on_a_real_model_keeps_the_candidate_the_student_finds_likeliest(smol: Any) -> None:
    results = synthesize("student-select", smol, smol, candidates=2)
    for r in finished(results, "student-select"):
        scores = r.stats.candidate_scores
        assert r.stats.kept_candidate == scores.index(max(x for x in scores if x is not None))
        assert all(x is None or x < 0 for x in scores)  # mean log-probabilities
        assert {s.source for s in r.spans} == {"teacher"}


def test_teacher_reference_on_a_real_model_stores_the_users_prompt(smol: Any) -> None:
    results = synthesize("teacher-reference", smol, smol)
    for r in finished(results, "teacher-reference"):
        assert r.stats.reference_in_prompt and r.sample.messages[-1]["content"] in PROMPTS
        assert {s.source for s in r.spans} == {"student"}


def test_teacher_mix_on_a_real_model_writes_each_sample_with_one_role(smol: Any) -> None:
    results = synthesize("teacher-mix", smol, smol)
    for r in finished(results, "teacher-mix"):
        assert len({s.source for s in r.spans}) == 1
