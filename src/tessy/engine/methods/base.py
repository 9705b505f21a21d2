"""What every comparison method shares: its settings, and a sample's run that can also score
text and run whole candidate responses of the basic modes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from ...backends.base import Prompt, ScoreRequest, TokenScores
from ...errors import OutageError, TessyError
from ...records import Failure, Message, Mode, Sample, SampleResult, SampleStats, Source, Span, add_costs
from ..policy import Role
from ..sample import SampleRun, _Failed
from .templates import DEFAULT_REFERENCE_PROMPT, DEFAULT_SCORE_PROMPT, PromptTemplate

__all__ = ["REFERENCE_PLACEHOLDERS", "SCORE_PLACEHOLDERS", "MethodRun", "MethodSettings", "Session", "best"]

#: Opens a sample's session on both roles (:meth:`tessy.engine.Engine.session`).
Session = Callable[[str], AbstractAsyncContextManager[None]]

logger = logging.getLogger(__name__)

SCORE_PLACEHOLDERS = ("question", "thinking", "answer")
REFERENCE_PLACEHOLDERS = ("question", "reference")


def _default_score_prompt() -> PromptTemplate:
    return PromptTemplate.load(DEFAULT_SCORE_PROMPT, placeholders=SCORE_PLACEHOLDERS, required=("answer",))


def _default_reference_prompt() -> PromptTemplate:
    return PromptTemplate.load(DEFAULT_REFERENCE_PROMPT, placeholders=REFERENCE_PLACEHOLDERS, required=("reference",))


@dataclass(frozen=True)
class MethodSettings:
    """The comparison methods' parameters (the run config's ``methods:`` section)."""

    #: Candidates per sample (teacher-score: the student's; student-select: the teacher's).
    candidates: int = 5
    #: teacher-score: what the teacher is asked, and how many tokens it may write to answer.
    score_prompt: PromptTemplate = field(default_factory=_default_score_prompt)
    score_max_tokens: int = 1024
    #: teacher-reference: the student's prompt with the teacher's answer in it.
    reference_prompt: PromptTemplate = field(default_factory=_default_reference_prompt)
    #: rsd: a teacher token is kept when the student gives it at least this probability.
    rsd_threshold: float = 0.1
    #: rsd: teacher tokens proposed (and scored in one request) at a time.
    rsd_propose_tokens: int = 16
    #: teacher-mix: the share of samples that are teacher-only (the rest are student-only).
    mix_teacher_share: float = 0.5

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.score_max_tokens < 1 or self.rsd_propose_tokens < 1:
            raise ValueError("methods: candidates, score_max_tokens and rsd_propose_tokens must be at least 1")
        if not 0 < self.rsd_threshold <= 1:
            raise ValueError(f"methods: rsd_threshold must be in (0, 1], got {self.rsd_threshold}")
        if not 0 <= self.mix_teacher_share <= 1:
            raise ValueError(f"methods: mix_teacher_share must be in [0, 1], got {self.mix_teacher_share}")


class MethodRun(SampleRun):
    """A sample's run under a comparison method: :class:`SampleRun`'s requests, budgets and
    counters, plus scoring requests and whole candidate runs of the basic modes.

    Subclasses write :meth:`method`; :meth:`run` turns what it raises into the sample's failure,
    as :meth:`SampleRun.run` does, with the cost of every candidate run so far counted.
    """

    def __init__(
        self, sample: Sample, roles: dict[Source, Role], *, settings: MethodSettings, session: Session, **kwargs: Any
    ) -> None:
        super().__init__(sample, roles, **kwargs)
        self.settings = settings
        self.session = session
        self.runs: list[SampleResult] = []  # every candidate run, in order of starting

    async def method(self) -> SampleResult:
        raise NotImplementedError

    async def run(self) -> SampleResult:
        started = time.perf_counter()
        try:
            result = await self.method()
        except _Failed as exc:
            result = self.result_of(None, exc.failure)
        except OutageError:
            raise
        except TessyError as exc:
            result = self.result_of(None, Failure(type(exc).__name__, str(exc)))
        self.stats.wall_s = time.perf_counter() - started
        if result.failure:
            logger.info("sample %s failed: %s", self.sample.id, result.failure)
        return result

    async def score(self, role: Role, prompt: Prompt, continuation: str) -> TokenScores:
        """``role``'s log-probabilities of ``continuation`` after ``prompt``: one request, tried
        again like a generation, charged to the sample's failure budget (the attempts count as
        requests, the request once as a scoring one)."""
        request = ScoreRequest(prompt, continuation, self.sample.id)
        self.stats.score_requests += 1
        return await self._call(role, lambda: role.backend.score(request), "score")

    async def candidates(
        self, mode: Mode, n: int, *, messages: list[Message] | None = None, tag: str = "c"
    ) -> list[SampleResult]:
        """``n`` whole responses of basic ``mode``, run at once, each as a sample of its own
        (``ID#c0``, ``ID#c1``...: its own session, so backends keep its caches apart). With a
        sampling seed, candidate ``i`` samples with seed + ``i`` (else all would be alike)."""

        async def one(i: int) -> SampleResult:
            cid = f"{self.sample.id}#{tag}{i}"
            sample = Sample(cid, messages or self.sample.messages, self.sample.fields)
            roles = {name: _reseeded(role, i) for name, role in self.roles.items()}
            async with self.session(cid):
                run = SampleRun(sample, roles, mode=mode, limits=self.limits, streaming=self.streaming, slot=self.slot)
                return await run.run()

        out = list(await asyncio.gather(*(one(i) for i in range(n))))
        self.runs.extend(out)
        return out

    def result_of(self, kept: SampleResult | None, failure: Failure | None = None) -> SampleResult:
        """The sample's result: ``kept``'s spans (under the user's own prompt), and the cost of
        every candidate run: requests add up, and the tokens of runs not kept are discarded."""
        stats = self.stats
        for run in self.runs:
            add_costs(stats, run.stats)
            if run is not kept:
                stats.discarded_tokens += run.stats.total_tokens
        self.runs = []  # counted once
        spans: list[Span] = []
        response: str | None = None
        if kept is not None:
            _take_span_counters(stats, kept.stats)
            spans = list(kept.spans)
            response = kept.response if failure is None else None
        return SampleResult(self.sample, spans, stats, response, failure)


def best(scores: Sequence[float | None]) -> int | None:
    """The index of the highest score, the first of equal ones; ``None`` when none is a number."""
    found: int | None = None
    for i, s in enumerate(scores):
        if s is not None and math.isfinite(s) and (found is None or s > scores[found]):  # type: ignore[operator]
            found = i
    return found


def _reseeded(role: Role, i: int) -> Role:
    seed = role.sampling.seed
    if seed is None or i == 0:
        return role
    return dataclasses.replace(role, sampling=dataclasses.replace(role.sampling, seed=seed + i))


def _take_span_counters(stats: SampleStats, kept: SampleStats) -> None:
    """The counters that describe the spans come from the run kept (``tessy check`` holds them to the spans)."""
    stats.teacher_tokens = kept.teacher_tokens
    stats.student_tokens = kept.student_tokens
    stats.think_tokens = kept.think_tokens
    stats.answer_tokens = kept.answer_tokens
    stats.switches = kept.switches
    stats.guards.extend(g for g in kept.guards if g not in stats.guards)
