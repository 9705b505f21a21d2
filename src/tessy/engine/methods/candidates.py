"""The comparison methods made of whole responses of the basic modes.

- ``teacher-score`` (the paper's reject sampling): the student writes N candidates
  (student-only), the teacher scores each with :data:`~.templates.DEFAULT_SCORE_PROMPT`, and
  the first of the best is kept.
- ``student-select`` (GRAPE, arXiv 2502.04194): the teacher writes N candidates (teacher-only);
  the one with the highest mean log-probability per token under the student is kept.
- ``teacher-reference`` (self-distillation, Yang et al. 2024): the teacher writes a response;
  the student writes its own thinking and answer with the teacher's answer in its prompt.
- ``teacher-mix``: each sample is teacher-only or student-only, chosen by a hash of its id, so a
  resumed run chooses as the first did.

Every candidate not kept costs its tokens (``discarded_tokens``) and requests; the record's
spans, and the counters that describe them, are the kept candidate's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re

from ...backends.base import Prompt
from ...records import Failure, Mode, SampleResult
from .base import MethodRun, best

__all__ = ["ReferenceRun", "StudentSelectRun", "TeacherMixRun", "TeacherScoreRun", "mix_source", "parse_score"]

logger = logging.getLogger(__name__)

_SCORE = re.compile(r"score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_score(text: str) -> float | None:
    """The number of the last ``Score: N`` in ``text`` (``None`` where there is none)."""
    found = _SCORE.findall(text)
    return float(found[-1]) if found else None


def mix_source(sample_id: str, teacher_share: float) -> Mode:
    """teacher-mix's choice for a sample: teacher-only for a ``teacher_share`` of ids (by a
    stable hash of the id, so the choice survives a resume), student-only for the rest."""
    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return Mode.TEACHER_ONLY if u < teacher_share else Mode.STUDENT_ONLY


def _question(run: MethodRun) -> str:
    return run.sample.messages[-1]["content"]


def _first_failure(runs: list[SampleResult]) -> Failure:
    first = next((r.failure for r in runs if r.failure is not None), None)
    detail = f"no candidate finished; the first failed with {first}" if first else "no candidate finished"
    return Failure("candidates_failed", detail)


class _Select(MethodRun):
    """N candidates of one basic mode, each scored; the first of the best is kept."""

    writer: Mode

    async def method(self) -> SampleResult:
        n = self.settings.candidates
        runs = await self.candidates(self.writer, n)
        self.stats.candidates = n
        scores = list(await asyncio.gather(*(self._score_one(r) if r.ok else _none() for r in runs)))
        self.stats.candidate_scores = scores
        index = best(scores)
        if index is None:
            index = next((i for i, r in enumerate(runs) if r.ok), None)
            if index is None:
                return self.result_of(None, _first_failure(runs))
            self.stats.guards.append("unscored")  # no score to go by: the first that finished is kept
        self.stats.kept_candidate = index
        return self.result_of(runs[index])

    async def _score_one(self, run: SampleResult) -> float | None:
        raise NotImplementedError


async def _none() -> None:
    return None


class TeacherScoreRun(_Select):
    """teacher-score: the student writes the candidates, the teacher scores them."""

    writer = Mode.STUDENT_ONLY

    async def _score_one(self, run: SampleResult) -> float | None:
        teacher = self.roles["teacher"]
        text = self.settings.score_prompt.fill(question=_question(self), thinking=run.thinking, answer=run.answer)
        prompt = teacher.format.render_think([{"role": "user", "content": text}])
        # No stop string: the teacher may think, close its thinking and answer; the last
        # "Score: N" it writes is read, wherever it is.
        gen = await self._generate(teacher, Prompt.of(prompt), self.settings.score_max_tokens, (), phase="answer")
        self.stats.score_requests += 1
        self.stats.discarded_tokens += len(gen.pieces)
        score = parse_score(gen.text)
        if score is None:
            logger.info("sample %s: the teacher's grade holds no score: %r", self.sample.id, gen.text[-200:])
        return score


class StudentSelectRun(_Select):
    """student-select: the teacher writes the candidates, the student's likelihood picks one."""

    writer = Mode.TEACHER_ONLY

    async def _score_one(self, run: SampleResult) -> float | None:
        student = self.roles["student"]
        fmt = student.format
        prompt = fmt.render_think(self.sample.messages)
        # The response as it is stored, after the part the prompt already holds.
        continuation = run.thinking + fmt.answer_suffix() + run.answer
        scores = await self.score(student, Prompt.of(prompt), continuation)
        return -scores.nll if len(scores) else None


class ReferenceRun(MethodRun):
    """teacher-reference: the teacher's response becomes a reference in the student's prompt."""

    async def method(self) -> SampleResult:
        (reference,) = await self.candidates(Mode.TEACHER_ONLY, 1, tag="reference")
        self.stats.candidates = 1
        if not reference.ok:
            return self.result_of(None, Failure("reference_failed", str(reference.failure)))
        text = self.settings.reference_prompt.fill(question=_question(self), reference=reference.answer.strip())
        messages = [*self.sample.messages[:-1], {"role": "user", "content": text}]
        (own,) = await self.candidates(Mode.STUDENT_ONLY, 1, messages=messages, tag="student")
        self.stats.reference_in_prompt = True
        return self.result_of(own, own.failure)


class TeacherMixRun(MethodRun):
    """teacher-mix: teacher-only or student-only, by the sample's id."""

    async def method(self) -> SampleResult:
        mode = mix_source(self.sample.id, self.settings.mix_teacher_share)
        (own,) = await self.candidates(mode, 1, tag="mix")
        return self.result_of(own, own.failure)
