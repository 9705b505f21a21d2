"""Reverse speculative decoding (RSD, arXiv 2509.22230, "In Their Own Words").

The teacher proposes; the student decides. Each round the teacher writes up to
``rsd_propose_tokens`` tokens continuing the response in its own format, and the student scores
the whole proposal in **one** request (its log-probabilities of the given text: ``echo`` with
``logprobs`` on vLLM/SGLang, a forward pass in the in-process ``hf`` backend). The teacher's
tokens are kept up to the first one whose probability under the student is below
``rsd_threshold``; that one, and the rest of the proposal, are dropped, the student samples one
token of its own at that position, and the teacher proposes again from there. So a round costs
two requests (three with a replacement), never one per token; ``SampleStats`` counts them
(``score_requests``, ``proposed_tokens``, ``replaced_tokens``) and the run summary prints
requests per kept token.

Across tokenizers: the proposal is scored as text, in the student's own tokens, and each
teacher token is judged by the student tokens that *end* inside it (their log-probabilities
summed, from the character spans the scorer reports, :attr:`TokenScores.offsets`). With one
tokenizer for both this is the student's probability of exactly that token; with two, a student
token that straddles teacher tokens is charged to the one where it ends, so a teacher token is
judged by the student's probability of the text it completes. A teacher token in which no
student token ends is kept (the student's verdict on its text comes with the next token); so is
one covered only by a student token that a server scoring by ``echo`` leaves out because it
straddles the text kept and the proposal (the in-process ``hf`` backend scores the proposal's
own tokens, so it has no such seam).

Thinking and answer are both written this way (the answer after the thinking closes, each
role's prompt in its own format); the stored response is in the student's format.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

from ...backends.base import Generation, Prompt, TokenScores
from ...errors import BackendError
from ...records import Phase, SampleResult, Source
from ...records.sample import phase_text
from ..context import Chunk, RoleContext, open_tail, trim_at
from ..policy import Role
from ..sample import _Failed
from .base import MethodRun

__all__ = ["RsdRun", "judge"]


def judge(pieces: Sequence[str], scores: TokenScores) -> list[float]:
    """Each teacher piece's log-probability under the student: the sum of the scored student
    tokens whose last character lies in it (see the module's docstring)."""
    ends = list(accumulate(len(p) for p in pieces))
    out = [0.0] * len(pieces)
    if not pieces:
        return out
    spans = scores.offsets
    if spans is None:
        if "".join(scores.pieces) != "".join(pieces):
            raise BackendError(
                "the student's scorer gave no character offsets of its tokens, so they cannot be lined "
                "up with the teacher's",
                retryable=False,
            )
        stops = list(accumulate(len(p) for p in scores.pieces))
        spans = list(zip([0, *stops[:-1]], stops, strict=True))
    for (start, end), logprob in zip(spans, scores.logprobs, strict=True):
        last = max(end - 1, start)
        i = bisect_right(ends, last)
        out[min(i, len(pieces) - 1)] += logprob
    return out


class RsdRun(MethodRun):
    """One sample by reverse speculative decoding."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.answer_contexts: dict[Source, RoleContext] = {}
        self.last_think_source: Source | None = None

    async def method(self) -> SampleResult:
        teacher, student = self.roles["teacher"], self.roles["student"]
        await self._phase(teacher, student, "think")
        self.spans.strip_thinking_end()
        thinking = self.thinking.text().rstrip()
        for role in (teacher, student):
            header = role.format.render_answer(self.sample.messages, thinking)
            self.answer_contexts[role.name] = RoleContext(header, role.tokenizer if role.token_exact else None)
        await self._phase(teacher, student, "answer")
        spans = self.spans.spans()
        response = student.format.render_response(phase_text(spans, "think"), phase_text(spans, "answer"))
        return SampleResult(self.sample, spans, self.stats, response)

    # -- one phase ----------------------------------------------------------------------

    def _left(self, phase: Phase) -> int:
        if phase == "think":
            return self._thinking_left()
        return self.limits.max_total_tokens - self.stats.total_tokens

    def _prompt(self, role: Role, phase: Phase) -> Prompt:
        return self._context(role).prompt() if phase == "think" else self.answer_contexts[role.name].prompt()

    def _stop(self, role: Role, phase: Phase) -> tuple[str, ...]:
        return role.format.think_stop if phase == "think" else role.format.answer_stop

    def _markers(self, phase: Phase) -> tuple[str, ...]:
        """What ends the phase in either role's format: the text kept holds none of it, nor ends
        in a piece of it, so no marker can form where one role's text meets the other's."""
        formats = [r.format for r in self.roles.values()]
        found = (m for f in formats for m in (f.think_stop if phase == "think" else f.answer_stop))
        return tuple(dict.fromkeys(found))

    def _part(self, role: Role, gen: Generation, phase: Phase) -> tuple[Chunk, bool, int]:
        """What of a generation belongs to the phase, whether the phase ended, and how many
        pieces were dropped: from a marker of either format on, or, at the token limit, a tail
        that may be the start of one (the next request decides)."""
        chunk = Chunk.of(gen)
        markers = self._markers(phase)
        text = gen.text
        hits = [(i, i + len(m)) for m in markers if (i := text.find(m)) >= 0]
        if hits:
            start, end = min(hits)
            kept, after, whole = trim_at(chunk.pieces, start, end)
            return Chunk(kept, chunk.ids[:whole] if chunk.ids is not None else None), True, after
        if gen.finish_reason == "length":
            held = open_tail(chunk.pieces, markers)
            if held:
                return chunk.head(len(chunk) - held), False, held
        return chunk, gen.finish_reason == "stop", 0

    async def _write(self, role: Role, phase: Phase, max_tokens: int) -> tuple[Chunk, bool]:
        """Up to ``max_tokens`` tokens of ``role``; where they end in what may be the start of
        the end-of-thinking marker (nothing else), a few more are asked for to decide."""
        left = self._left(phase)
        gen = await self._generate(
            role, self._prompt(role, phase), min(max_tokens, left), self._stop(role, phase), phase
        )
        chunk, ended, after = self._part(role, gen, phase)
        self.stats.discarded_tokens += after
        if not chunk.pieces and not ended and after:
            more = min(left, max_tokens + max((len(s) for s in self._stop(role, phase)), default=1))
            gen = await self._generate(role, self._prompt(role, phase), more, self._stop(role, phase), phase)
            chunk, ended, after = self._part(role, gen, phase)
            self.stats.discarded_tokens += after
            if not chunk.pieces and not ended:
                self.stats.guards.append("unclear_end")
                ended = True  # nothing but a marker's start, again: end the phase here
        return chunk, ended

    async def _phase(self, teacher: Role, student: Role, phase: Phase) -> None:
        floor = math.log(self.settings.rsd_threshold)  # kept: probability >= threshold
        while True:
            if self._left(phase) <= 0:
                if phase == "answer":
                    raise _Failed(
                        "token_budget", f"the answer did not end within max_total_tokens={self.limits.max_total_tokens}"
                    )
                self.stats.guards.append("thinking_budget")
                return
            chunk, ended = await self._write(teacher, phase, self.settings.rsd_propose_tokens)
            pieces = chunk.pieces
            rejected: int | None = None
            if pieces:
                scores = await self.score(student, self._prompt(student, phase), "".join(pieces))
                self.stats.proposed_tokens += len(pieces)
                rejected = next((i for i, lp in enumerate(judge(pieces, scores)) if lp < floor), None)
            if rejected is None:
                self._take(teacher, chunk, phase)
                if ended:
                    return
                continue
            head = chunk.head(rejected)
            held = open_tail(head.pieces, self._markers(phase))  # the next proposal decides on it
            self._take(teacher, head.head(rejected - held), phase)
            self.stats.discarded_tokens += len(pieces) - rejected + held
            self.stats.replaced_tokens += 1
            own, ended = await self._write(student, phase, 1)
            self._take(student, own, phase)
            if ended:
                return

    def _take(self, role: Role, chunk: Chunk, phase: Phase) -> None:
        if not chunk.pieces:
            return
        if phase == "think":
            if self.last_think_source not in (None, role.name):
                self.stats.switches += 1
            self.last_think_source = role.name
        self._keep(role, chunk, phase)
        if phase == "answer":
            text = "".join(chunk.pieces)
            for name, ctx in self.answer_contexts.items():
                if name == role.name:
                    ctx.append_own(chunk)
                else:
                    ctx.append(text)
