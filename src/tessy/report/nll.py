"""The student's negative log-likelihood of each run's thinking.

Each thinking text is scored after the student's own prompt (its format, thinking opened), so
the number says how likely the student finds the data it would be fine-tuned on: lower is
closer to the student's own distribution. Runs are scored on the same prompts where they share
them.
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

__all__ = ["RunNLL", "pick_ids", "run_nll"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunNLL:
    """A run's thinking scored by the student: nats per token, over ``tokens`` tokens."""

    name: str
    samples: int
    tokens: int
    nll: float
    sample_mean: float
    truncated: int

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


async def run_nll(runs: Sequence[Run], scorer: Scorer, fmt: Format, *, max_samples: int = 32) -> list[RunNLL]:
    """Score up to ``max_samples`` thinking texts of each run with ``scorer``.

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
                scores = await scorer.score(ScoreRequest(Prompt.of(prompt), thinking, sample_id))
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
        nll = total / n_tokens if n_tokens else float("nan")
        mean = sum(per_sample) / len(per_sample) if per_sample else float("nan")
        results.append(RunNLL(run.name, len(per_sample), n_tokens, nll, mean, truncated))
    return results
