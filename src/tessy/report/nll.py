"""The student's view of each run's thinking, in one scoring pass: negative log-likelihood, token
ranks, the Rank-Surprisal Ratio and the share of tokens outside the student's top-k.

Each thinking text is scored after the student's own prompt (its format, thinking opened), so
the numbers say how the student sees the data it would be fine-tuned on. Runs are scored on the
same prompts where they share them.

- **NLL**: nats per token; lower is closer to the student's own distribution.
- **Rank**: a token's 1-based rank among the student's predictions at its position (1: the
  student's most likely token), clipped at :data:`RANK_CLIP` = 100.
- **Rank-Surprisal Ratio** (Yang et al., arXiv 2601.14249, "Which Reasoning Trajectories Teach
  Students to Reason Better?"), as its authors' released code computes it: per sample, the mean
  clipped rank and the mean NLL of its tokens; for a run, ``RSR = mean over samples of the mean
  clipped rank / mean over samples of the mean NLL``. Lower is better: the paper finds data that
  is surprising (high NLL) yet made of tokens the student ranks high teaches it most.
- **Outside top-k**: the share of tokens (over all scored tokens) the student ranks beyond
  :data:`TOP_K`.

A server gives ranks only within the top-K alternatives it returns per position (K = ``top_k``):
a token beyond them is censored, its rank known only to exceed K. It counts as the clip (100)
in the mean rank and the RSR, an upper bound, exact when K >= 99; and as outside the top-k. The
share of censored tokens is reported beside the numbers. The in-process ``hf`` scorer ranks
exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..backends.base import Prompt, Scorer, ScoreRequest
from ..errors import BackendError, FormatError, TessyError
from ..formats import Format
from .runs import Run

__all__ = ["RANK_CLIP", "TOP_K", "RunNLL", "SampleRanks", "pick_ids", "run_nll", "sample_ranks"]

#: Ranks are clipped here (the Rank-Surprisal Ratio paper's released code: r = 100).
RANK_CLIP = 100
#: Tokens ranked beyond this are outside the student's top-k; servers are asked for this many
#: alternatives per token (vLLM answers up to 20 unless started with a higher --max-logprobs).
TOP_K = 20

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleRanks:
    """The ranks of one sample's tokens, summed up (see :func:`sample_ranks`)."""

    #: Mean clipped rank, a censored token counted as the clip (an upper bound).
    mean: float
    #: The same with a censored token counted as just past the server's top-K (a lower bound).
    mean_low: float
    outside_top_k: int
    censored: int
    tokens: int


def sample_ranks(
    ranks: Sequence[int], rank_limit: int | None, *, top_k: int = TOP_K, clip: int = RANK_CLIP
) -> SampleRanks:
    """Sum up one sample's token ranks (1-based; with ``rank_limit``, ``rank_limit + 1`` marks a
    censored rank, see :class:`~tessy.backends.TokenScores`)."""
    if not ranks:
        return SampleRanks(float("nan"), float("nan"), 0, 0, 0)
    high = low = 0
    outside = censored = 0
    for r in ranks:
        if rank_limit is not None and r > rank_limit:
            censored += 1
            high += clip
            low += min(rank_limit + 1, clip)
            outside += 1  # more than K, and K is top_k where the server gave what was asked
        else:
            high += min(r, clip)
            low += min(r, clip)
            outside += r > top_k
    n = len(ranks)
    return SampleRanks(high / n, low / n, outside, censored, n)


@dataclass(frozen=True)
class RunNLL:
    """A run's thinking scored by the student: nats per token, over ``tokens`` tokens; and where
    the scorer ranks tokens, the rank measures (see the module docstring), over ``ranked``
    samples and ``ranked_tokens`` tokens (``nan`` where none was ranked)."""

    name: str
    samples: int
    tokens: int
    nll: float
    sample_mean: float
    truncated: int
    #: Mean over samples of each sample's mean clipped rank.
    rank: float = float("nan")
    #: :attr:`rank` with censored tokens at their lowest possible rank.
    rank_low: float = float("nan")
    #: Rank-Surprisal Ratio: :attr:`rank` over the mean of the same samples' mean NLL.
    rsr: float = float("nan")
    #: Share of ranked tokens beyond the student's top ``top_k``.
    outside_top_k: float = float("nan")
    #: Share of ranked tokens whose rank is censored (beyond the server's top-K).
    censored: float = 0.0
    ranked: int = 0
    ranked_tokens: int = 0
    top_k: int = TOP_K
    rank_clip: int = RANK_CLIP

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll) if math.isfinite(self.nll) else float("nan")


def pick_ids(runs: Sequence[Run], limit: int) -> list[list[str]]:
    """The ids to score in each run, from the runs' samples: ids that every run kept first (same
    prompts), in the first run's order, then each run's own, up to ``limit`` per run."""
    sets = [set(r.by_id) for r in runs]
    common = set.intersection(*sets) if sets else set()
    order = [rec.id for rec in runs[0].records] if runs else []
    shared = [i for i in order if i in common][:limit]
    out: list[list[str]] = []
    for run in runs:
        ids = list(shared)
        if len(ids) < limit:
            ids += [rec.id for rec in run.records if rec.id not in common][: limit - len(ids)]
        out.append(ids)
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


async def run_nll(
    runs: Sequence[Run],
    scorer: Scorer,
    fmt: Format,
    *,
    max_samples: int = 32,
    top_k: int = TOP_K,
    rank_clip: int = RANK_CLIP,
) -> list[RunNLL]:
    """Score up to ``max_samples`` thinking texts of each run with ``scorer``, one request per
    sample that asks for log-probabilities and ranks together (``top_k`` alternatives).

    A sample that fails is logged and left out; a scorer that fails for good (a non-retryable
    :class:`BackendError`) before it has scored anything raises it: it cannot score at all.
    """
    results: list[RunNLL] = []
    scored_any = False
    for run, ids in zip(runs, pick_ids(runs, max_samples), strict=True):
        by_id = run.by_id
        total = 0.0
        n_tokens = 0
        per_sample: list[float] = []
        truncated = 0
        ranked: list[tuple[SampleRanks, float]] = []  # each ranked sample's ranks and mean NLL
        for sample_id in ids:
            record = by_id[sample_id]
            thinking = record.thinking
            if not thinking.strip():
                continue
            try:
                prompt = fmt.render_think(record.prompt)
            except FormatError as exc:
                logger.warning("%s: sample %s cannot be rendered for scoring: %s", run.name, sample_id, exc)
                continue
            try:
                scores = await scorer.score(ScoreRequest(Prompt.of(prompt), thinking, sample_id, top_k=top_k))
            except TessyError as exc:
                if isinstance(exc, BackendError) and not exc.retryable and not scored_any:
                    raise
                logger.warning("%s: scoring sample %s failed: %s", run.name, sample_id, exc)
                continue
            scored_any = True
            if not len(scores):
                continue
            total += -sum(scores.logprobs)
            n_tokens += len(scores)
            per_sample.append(scores.nll)
            truncated += scores.truncated
            if scores.ranks is not None and len(scores.ranks) == len(scores):
                ranked.append((sample_ranks(scores.ranks, scores.rank_limit, top_k=top_k, clip=rank_clip), scores.nll))
        nll = total / n_tokens if n_tokens else float("nan")
        mean = _mean(per_sample)
        rank_tokens = sum(r.tokens for r, _ in ranked)
        rank = _mean([r.mean for r, _ in ranked])
        ranked_nll = _mean([n for _, n in ranked])
        results.append(
            RunNLL(
                run.name,
                len(per_sample),
                n_tokens,
                nll,
                mean,
                truncated,
                rank=rank,
                rank_low=_mean([r.mean_low for r, _ in ranked]),
                rsr=rank / ranked_nll if ranked and ranked_nll > 0 else float("nan"),
                outside_top_k=sum(r.outside_top_k for r, _ in ranked) / rank_tokens if rank_tokens else float("nan"),
                censored=sum(r.censored for r, _ in ranked) / rank_tokens if rank_tokens else 0.0,
                ranked=len(ranked),
                ranked_tokens=rank_tokens,
                top_k=top_k,
                rank_clip=rank_clip,
            )
        )
    return results
