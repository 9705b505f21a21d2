"""The student's view of the data: token ranks, the Rank-Surprisal Ratio and the share of tokens
outside the student's top-k, pinned on hand-built scores; exact ranks from a real model."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from tessy.backends import Prompt, ScoreRequest, TokenScores
from tessy.backends.wire import echo_scores
from tessy.formats import get_format
from tessy.report import load_run
from tessy.report.nll import run_nll, sample_ranks


def test_ranks_are_clipped_at_the_papers_r_and_counted_outside_the_top_k() -> None:
    summed = sample_ranks([1, 3, 150, 21], None, top_k=20, clip=100)
    assert summed.mean == pytest.approx((1 + 3 + 100 + 21) / 4)
    assert summed.mean_low == summed.mean  # exact ranks: no bounds
    assert (summed.outside_top_k, summed.censored, summed.tokens) == (2, 0, 4)


def test_a_censored_rank_counts_as_the_clip_with_its_lower_bound_just_past_k() -> None:
    # With a top-20 list, 21 means "beyond the 20 the server listed".
    summed = sample_ranks([1, 21, 2], 20, top_k=20, clip=100)
    assert summed.mean == pytest.approx((1 + 100 + 2) / 3)
    assert summed.mean_low == pytest.approx((1 + 21 + 2) / 3)
    assert (summed.outside_top_k, summed.censored) == (1, 1)


class HandScorer:
    """Scores each sample with the scores given for its id, and keeps the requests."""

    def __init__(self, scores: dict[str, TokenScores]) -> None:
        self.scores = scores
        self.requests: list[ScoreRequest] = []

    async def score(self, request: ScoreRequest) -> TokenScores:
        self.requests.append(request)
        return self.scores[request.sample_id]

    async def aclose(self) -> None:
        pass


def write_run(path: Path, thinking: dict[str, str], mode: str = "tessy") -> Path:
    rows: list[dict[str, Any]] = []
    for sample_id, think in thinking.items():
        rows.append(
            {
                "id": sample_id,
                "messages": [
                    {"role": "user", "content": f"question {sample_id}"},
                    {"role": "assistant", "content": f"<think>\n{think}\n</think>\n\nok"},
                ],
                "mode": mode,
                "spans": [
                    {"source": "teacher", "phase": "think", "text": think, "tokens": 2},
                    {"source": "student", "phase": "answer", "text": "ok", "tokens": 1},
                ],
                "stats": {"teacher_tokens": 2, "student_tokens": 1, "switches": 1, "requests": 2},
                "config_hash": "h",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_runs_rsr_is_its_mean_sample_rank_over_its_mean_sample_nll(tmp_path: Path) -> None:
    """The paper's run-level ratio (its released code): mean over samples of each sample's mean
    rank, over the mean of their mean NLL; not a ratio of token sums."""
    run = load_run(write_run(tmp_path / "r.jsonl", {"a": "two tokens", "b": "one"}))
    scorer = HandScorer(
        {
            "a": TokenScores(["two", " tokens"], [-1.0, -3.0], ranks=[1, 5]),  # rank 3, NLL 2
            "b": TokenScores(["one"], [-0.5], ranks=[2]),  # rank 2, NLL 0.5
        }
    )
    [scored] = asyncio.run(run_nll([run], scorer, get_format("qwen3"), top_k=4))
    assert scored.rank == pytest.approx(2.5)
    assert scored.rsr == pytest.approx(2.5 / 1.25)  # 2.0; the token-sum ratio would be 8 / 4.5
    assert scored.nll == pytest.approx(4.5 / 3) and scored.sample_mean == pytest.approx(1.25)
    assert scored.outside_top_k == pytest.approx(1 / 3)  # rank 5 > 4
    assert (scored.ranked, scored.ranked_tokens, scored.censored) == (2, 3, 0.0)
    # One scoring request per sample asks for the log-probabilities and the ranks together.
    assert [r.top_k for r in scorer.requests] == [4, 4]
    assert all(r.prompt.text.endswith("<think>\n") for r in scorer.requests)


def test_a_scorer_without_ranks_leaves_rank_and_rsr_out(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "r.jsonl", {"a": "x"}))
    [scored] = asyncio.run(run_nll([run], HandScorer({"a": TokenScores(["x"], [-1.0])}), get_format("qwen3")))
    assert scored.nll == pytest.approx(1.0)
    assert math.isnan(scored.rank) and math.isnan(scored.rsr) and math.isnan(scored.outside_top_k)
    assert scored.ranked == 0


def echoed(top: list[Any]) -> dict[str, Any]:
    # The prompt "p" then the continuation "abc" as three tokens.
    return {
        "tokens": ["p", "a", "b", "c"],
        "token_logprobs": [None, -0.1, -2.0, -5.0],
        "text_offset": [0, 1, 2, 3],
        "top_logprobs": top,
    }


def test_a_servers_top_logprobs_rank_each_token_and_censor_past_k() -> None:
    top = [None, {"a": -0.1, "x": -1.0}, {"x": -0.5, "y": -1.0, "b": -2.0}, {"x": -0.1, "y": -0.2, "z": -0.3}]
    scores = echo_scores(echoed(top), 1, 4, where="s", top_k=2)
    assert scores.pieces == ["a", "b", "c"]
    # a: first; b: two alternatives above it, beyond a top-2 (vLLM adds the token itself to the
    # list); c: not listed, beyond the top 2.
    assert (scores.ranks, scores.rank_limit, scores.censored) == ([1, 3, 3], 2, 2)
    # With a top-3 list, b is ranked exactly and c is beyond it.
    three = echo_scores(echoed(top), 1, 4, where="s", top_k=3)
    assert (three.ranks, three.censored) == ([1, 3, 4], 1)


def test_a_server_without_top_logprobs_gives_scores_but_no_ranks() -> None:
    scores = echo_scores(echoed([None, None, None, None]), 1, 4, where="s", top_k=5)
    assert scores.logprobs == [-0.1, -2.0, -5.0] and scores.ranks is None and scores.rank_limit is None
    assert echo_scores(echoed([]), 1, 4, where="s").ranks is None  # not asked: none


def test_a_score_request_with_top_k_asks_the_server_for_that_many_alternatives() -> None:
    from fault_server import FaultServer
    from tessy.backends.openai import OpenAICompletionsBackend

    server = FaultServer()

    async def go() -> TokenScores:
        b = OpenAICompletionsBackend(model="m", endpoints=[server.url], server="vllm")
        try:
            return await b.score(ScoreRequest(Prompt.of("p\n"), "q r", "s1", top_k=20))
        finally:
            await b.aclose()

    try:
        scores = asyncio.run(go())
    finally:
        server.close()
    assert server.requests[0]["body"]["logprobs"] == 20
    assert scores.pieces == ["q", " r"] and scores.ranks is None  # this fake lists no alternatives


@pytest.mark.real
@pytest.mark.slow
def test_a_real_student_ranks_its_own_greedy_text_first_and_odd_text_low() -> None:
    """SmolLM2-135M through the in-process scorer: text it writes greedily is its top choice at
    (nearly) every token; a string of unrelated words is not."""
    pytest.importorskip("transformers")
    import torch

    from real_models import model_path
    from tessy.scoring import TransformersScorer

    path = model_path("smollm2-135m")
    scorer = TransformersScorer(path)
    tokenizer, model = scorer._load()
    prompt = "<|im_start|>user\nWhat is 17 + 25?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False)
    greedy = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    async def go() -> tuple[TokenScores, TokenScores]:
        try:
            own = await scorer.score(ScoreRequest(Prompt.of(prompt), greedy, "a", top_k=20))
            odd = await scorer.score(ScoreRequest(Prompt.of(prompt), "zebra quantum ladle marmalade", "b", top_k=20))
            return own, odd
        finally:
            await scorer.aclose()

    own, odd = asyncio.run(go())
    assert own.ranks is not None and odd.ranks is not None and own.rank_limit is None
    first = sum(r == 1 for r in own.ranks) / len(own.ranks)
    assert first >= 0.8, (greedy, own.ranks)
    mine, other = sample_ranks(own.ranks, None), sample_ranks(odd.ranks, None)
    assert other.mean > 5 * mine.mean and other.outside_top_k >= 2
    assert mine.mean / own.nll < other.mean / odd.nll or own.nll < odd.nll
