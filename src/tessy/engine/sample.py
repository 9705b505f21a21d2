"""The state machine of one sample: design.md section 1, step by step.

1. Thinking starts with the student.
2. The active role writes up to ``k`` tokens continuing the shared text in its own format.
3. Its boundary predictor finds the first position whose next token is of the other role's
   type; the chunk's first token is always kept.
4. On a cut: keep through that token, complete the current word, drop the rest, switch role.
   Without one: keep the whole chunk and the same role goes on. The role that gives the turn
   has shown its word ends (its next token starts with whitespace); should the role taking it
   carry on that word anyway (``4`` | ``096``), its text is dropped, the whitespace the giver
   showed is kept, and it writes again (:meth:`SampleRun._glued`): no word spans two roles.
5. The end of thinking (in the active role's format) ends the thinking phase, whoever writes it.
6. The answer is written by the student (by the teacher in the ``*-teacher-answer`` modes).
7. Guards end a sample with a recorded reason: token budget, thinking budget (thinking is
   closed and the answer written), degenerate repetition, too many failed requests.

A step is either a chunk of at most ``k`` tokens (:meth:`SampleRun._chunk_step`) or, streaming,
one request read until the cut is final (:meth:`SampleRun._stream_step`); both end in the same
rule 4 (:meth:`SampleRun._apply_cut`).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import replace
from typing import Any, TypeVar

from ..backends.base import Backend, GenerateRequest, Generation, Prompt
from ..boundary.base import CutQuery
from ..errors import BackendError, BoundaryError, OutageError, TessyError
from ..records import Failure, Mode, Phase, Sample, SampleResult, SampleStats, Source
from ..retry import FailureBudget, call_with_retries
from ..text import TextBuffer, TextView
from .context import (
    Chunk,
    RoleContext,
    SpanBuilder,
    extends,
    first_boundary,
    open_tail,
    tail_of,
    thinking_part,
    trim_at,
    word_end,
)
from .policy import Limits, Role

__all__ = ["SampleRun"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Failed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.failure = Failure(kind, detail)


class _Step(enum.Enum):
    CONTINUE = "continue"
    SWITCH = "switch"
    ENDED = "ended"
    BUDGET = "budget"  # the thinking budget is spent (its last tokens may have been dropped)


class SampleRun:
    """The state machine of one sample; ``slot(backend)`` bounds the requests on a backend."""

    def __init__(
        self,
        sample: Sample,
        roles: dict[Source, Role],
        *,
        mode: Mode,
        limits: Limits,
        streaming: bool,
        slot: Callable[[Backend], AbstractAsyncContextManager[Any]],
    ) -> None:
        self.sample = sample
        self.roles = roles
        self.mode = mode
        self.limits = limits
        self.streaming = streaming
        self.slot = slot
        self.stats = SampleStats()
        self.budget = FailureBudget(limits.max_request_failures)  # shared by all the sample's requests
        self.spans = SpanBuilder()
        self.thinking = TextBuffer()
        self.contexts: dict[Source, RoleContext] = {}
        self.last_prompts: dict[Source, Prompt] = {}  # each role's previous request's prompt
        guard = self.limits.repetition
        self.recent: deque[str] | None = deque(maxlen=guard.window) if guard else None
        self.unchecked = 0  # tokens kept since the repetition guard last looked
        # The whitespace the role that last gave the turn showed after its last word (its next
        # token's start), until the role taking the turn has written its first text.
        self.handoff: tuple[Source, str] | None = None

    # -- top level ---------------------------------------------------------------------

    async def run(self) -> SampleResult:
        started = time.perf_counter()
        failure: Failure | None = None
        response: str | None = None
        try:
            mode = self.mode
            thinker = mode.thinker
            if thinker is None:
                await self._think_together()
            else:
                await self._think_alone(self.roles[thinker])
            self.spans.strip_thinking_end()
            answer = await self._answer(self.roles[mode.answerer])
            thinking = "".join(s.text for s in self.spans.spans() if s.phase == "think")
            student_format = self.roles["student"].format
            response = student_format.render_response(thinking, answer)
        except _Failed as exc:
            failure = exc.failure
        except OutageError:
            raise  # not this sample's failure: the run ends (see EndpointPool)
        except TessyError as exc:
            failure = Failure(type(exc).__name__, str(exc))
        self.stats.wall_s = time.perf_counter() - started
        if failure:
            logger.info("sample %s failed: %s", self.sample.id, failure)
        return SampleResult(self.sample, self.spans.spans(), self.stats, response, failure)

    # -- thinking ----------------------------------------------------------------------

    def _context(self, role: Role) -> RoleContext:
        ctx = self.contexts.get(role.name)
        if ctx is None:
            header = role.format.render_think(self.sample.messages)
            ctx = self.contexts[role.name] = RoleContext(header, role.tokenizer if role.token_exact else None)
            ctx.append(self.thinking.text())
        return ctx

    def _thinking_left(self) -> int:
        return min(
            self.limits.max_thinking_tokens - self.stats.think_tokens,
            self.limits.max_total_tokens - self.stats.total_tokens,
        )

    async def _think_together(self) -> None:
        role = self.roles["student"]
        other = self.roles["teacher"]
        while True:
            left = self._thinking_left()
            if left <= 0:
                self.stats.guards.append("thinking_budget")
                return
            if self.streaming:
                step = await self._stream_step(role, left)
            else:
                step = await self._chunk_step(role, left)
            if step is _Step.ENDED:
                return
            if step is _Step.BUDGET:
                self.stats.guards.append("thinking_budget")
                return
            if step is _Step.SWITCH:
                role, other = other, role
                self.stats.switches += 1

    async def _think_alone(self, role: Role) -> None:
        left = self._thinking_left()
        if left <= 0:
            self.stats.guards.append("thinking_budget")
            return
        gen = await self._generate(role, self._context(role).prompt(), left, role.format.think_stop)
        chunk, ended, after = thinking_part(role.format, gen)
        self.stats.discarded_tokens += after
        self._keep(role, chunk)
        if not ended:
            self.stats.guards.append("thinking_budget")

    async def _chunk_step(self, role: Role, left: int) -> _Step:
        """One chunk of at most ``role.chunk_tokens`` tokens (``left``: the thinking budget left)."""
        fmt = role.format
        max_tokens = min(role.chunk_tokens, left)
        gen = await self._generate(role, self._context(role).prompt(), max_tokens, fmt.think_stop)
        chunk, ended, after = thinking_part(fmt, gen)
        self.stats.discarded_tokens += after
        if not chunk and after and not ended:
            # The whole chunk may be the start of the end marker: ask for enough tokens to decide.
            if max_tokens >= left:
                return _Step.BUDGET
            more = min(left, max_tokens + max(len(x) for x in fmt.think_stop))
            gen = await self._generate(role, self._context(role).prompt(), more, fmt.think_stop)
            chunk, ended, after = thinking_part(fmt, gen)
            self.stats.discarded_tokens += after
            max_tokens = more
        if self._glued(role, chunk.pieces, len(gen.pieces)):
            return _Step.CONTINUE
        if after and not ended and max_tokens >= left:
            # The budget ran out on what may be the start of the end marker: keep the rest, end thinking.
            self._keep(role, chunk)
            return _Step.BUDGET
        # A cut needs a next token inside the thinking: before the end marker, none at the last piece.
        last = len(chunk) - (2 if ended else 1)
        cut = await self._find_cut(role, chunk.pieces, last) if last >= 0 else None
        return await self._apply_cut(role, chunk, cut, ended, gen.finish_reason == "length")

    async def _apply_cut(self, role: Role, chunk: Chunk, cut: int | None, ended: bool, at_limit: bool) -> _Step:
        """Rule 4 for a chunk the active role wrote (``ended``: thinking ended right after it;
        ``at_limit``: it stopped at its token limit, so the role can be asked for more)."""
        if cut is None:
            self._keep(role, chunk)
            return _Step.ENDED if ended else _Step.CONTINUE
        end = word_end(chunk.pieces, cut)
        if end is not None:
            self._keep(role, chunk.head(end + 1))
            self.stats.discarded_tokens += len(chunk) - end - 1
            self._hand_over(role, chunk.pieces, end + 1)
            return _Step.SWITCH
        # The word goes on past the chunk: it either runs into the end of thinking, or the
        # same role must write a little more to finish it.
        self._keep(role, chunk)
        if ended:
            return _Step.ENDED
        if at_limit:
            return await self._finish_word(role)
        return _Step.SWITCH

    async def _finish_word(self, role: Role) -> _Step:
        left = self._thinking_left()
        if left <= 0:
            return _Step.SWITCH  # the loop records the thinking budget
        max_tokens = min(self.limits.word_completion_tokens, left)
        gen = await self._generate(role, self._context(role).prompt(), max_tokens, role.format.think_stop)
        chunk, ended, after = thinking_part(role.format, gen)
        pieces = chunk.pieces
        self.stats.discarded_tokens += after
        keep = first_boundary(pieces)
        if keep is None:
            # No word boundary within the completion budget (a very long "word": a number, a
            # path): keep it all, and the role keeps the turn, since a word never spans two roles.
            self._keep(role, chunk)
            return _Step.ENDED if ended else _Step.CONTINUE
        self._keep(role, chunk.head(keep))
        self.stats.discarded_tokens += len(pieces) - keep
        self._hand_over(role, pieces, keep)
        return _Step.SWITCH

    def _hand_over(self, role: Role, pieces: Sequence[str], nxt: int) -> None:
        """Note the whitespace that starts ``pieces[nxt]``, the giving role's next token (none
        when its last kept piece ends in whitespace: the word is closed in the text itself)."""
        self.handoff = None
        if 0 < nxt < len(pieces) and not pieces[nxt - 1][-1:].isspace():
            piece = pieces[nxt]
            space = piece[: len(piece) - len(piece.lstrip())]
            if space:
                self.handoff = (role.name, space)

    def _glued(self, role: Role, pieces: Sequence[str], generated: int) -> bool:
        """Whether the role taking the turn carried on the giver's last word with ``pieces``
        (``generated`` tokens). Then they are dropped, the whitespace the giver showed is kept
        as the giver's, and the caller has the role write again from there."""
        handoff = self.handoff
        if handoff is None or handoff[0] == role.name or not pieces:
            return False
        self.handoff = None
        if not (pieces[0][:1].isalnum() and self.thinking.tail(1).isalnum()):
            return False
        giver, space = handoff
        self.stats.discarded_tokens += generated
        self.stats.glued_handoffs += 1
        self._keep(self.roles[giver], Chunk([space]))
        logger.debug("sample %s: the %s carried on the %s's word; writing again", self.sample.id, role.name, giver)
        return True

    async def _stream_step(self, role: Role, max_tokens: int) -> _Step:
        """One span by streaming (:meth:`_stream_once`). A stream that breaks is tried again from
        the text kept (nothing of it is kept), as often as its backend retries a request; only
        then is the failure charged to the sample's budget, and the step redone."""
        tries = FailureBudget(role.backend.max_retries)
        while True:
            try:
                return await self._stream_once(role, max_tokens)
            except BackendError as exc:
                if tries.spend(exc):
                    self.stats.retried_requests += 1
                    logger.debug("sample %s: a stream failed (%s), trying again", self.sample.id, exc)
                    continue
                self._charge(exc)
                self.stats.retried_requests += 1
                return _Step.CONTINUE  # the step is redone

    async def _stream_once(self, role: Role, max_tokens: int) -> _Step:
        """One span by streaming: read tokens until a final cut plus its word end, then stop."""
        fmt = role.format
        predictor = role.predictor
        # A stream asks for at most the role's cap: one the client stops late (a busy event loop)
        # runs on for no more than that. Reaching the cap is no end of anything (a "seam").
        capped = role.stream_cap < max_tokens
        max_tokens = min(max_tokens, role.stream_cap)
        request = self._request(role, self._context(role).prompt(), max_tokens, fmt.think_stop)
        pieces: list[str] = []
        ids: list[int] | None = [] if role.token_exact else None  # the ids of whole pieces
        streamed = TextBuffer()  # the streamed text, for the predictor's context and end detection
        marker_len = max((len(s) for s in fmt.think_stop), default=0)
        checked = 0  # positions before this are final and hold no cut
        cut: int | None = None
        ended = False
        finish: str | None = None
        after = 0
        self.stats.requests += 1
        async with self.slot(role.backend), aclosing(role.backend.stream(request)) as deltas:
            async for delta in deltas:
                self.stats.retried_requests += delta.retries
                self._count_prompt(delta.prompt_tokens, delta.cached_tokens)
                if delta.pieces:
                    start = len(streamed)
                    look = streamed.tail(marker_len) if marker_len else ""
                    if ids is not None:
                        if delta.token_ids is None or len(ids) < len(pieces):
                            ids = None  # ids missing for some piece: encode the text instead
                        else:
                            ids.extend(delta.token_ids[: len(delta.pieces)])
                    pieces.extend(delta.pieces)
                    for p in delta.pieces:
                        streamed.append(p)
                    hit = fmt.find_think_end(look + "".join(delta.pieces)) if marker_len else None
                    if hit is not None:
                        offset = start - len(look)
                        pieces, after, whole = trim_at(pieces, offset + hit[0], offset + hit[1])
                        if ids is not None:
                            del ids[whole:]
                        ended = True
                finish = delta.finish_reason or finish
                if delta.finish_reason == "stop":
                    ended = True
                done = ended or delta.finish_reason is not None
                if self.handoff is not None and pieces and self._glued(role, pieces, len(pieces)):
                    return _Step.CONTINUE  # the stream is closed on leaving the block
                seam = capped and delta.finish_reason == "length" and not ended
                if cut is None:
                    context = self.thinking.view().extended(tail_of(pieces, checked, predictor.context_chars))
                    # A cut at j is final once piece j + 1 can no longer change type; at a seam the
                    # text goes on in the next stream, so only settled pieces are judged.
                    if done and not seam:
                        final = len(pieces) - 1
                    else:
                        final = checked + predictor.settled(context, pieces[checked:]) - 2
                    if ended:
                        final = min(final, len(pieces) - 2)
                    if final >= checked:
                        j = await self._find_cut(role, pieces[checked:], final - checked, context)
                        if j is None:
                            checked = final + 1
                        else:
                            cut = checked + j
                if cut is not None and (done or word_end(pieces, cut) is not None):
                    break
                if done:
                    break
        self.stats.discarded_tokens += after
        if capped and finish == "length" and not ended and cut is None:
            # A seam: keep what was judged (no cut in it), short of a possible end-marker start;
            # the rest is written again by the next stream, as k = infinity would have it.
            keep = min(checked, len(pieces) - open_tail(pieces, fmt.think_stop))
            if keep > 0:
                self.stats.discarded_tokens += len(pieces) - keep
                self._keep(role, Chunk(pieces, ids).head(keep))
                return _Step.CONTINUE
        elif finish == "length" and not ended and cut is None:
            held = open_tail(pieces, fmt.think_stop)
            if held:
                # The budget ran out on what may be the start of the end marker: drop it, end thinking.
                self.stats.discarded_tokens += held
                self._keep(role, Chunk(pieces, ids).head(len(pieces) - held))
                return _Step.BUDGET
        return await self._apply_cut(role, Chunk(pieces, ids), cut, ended, finish == "length")

    async def _find_cut(
        self, role: Role, pieces: Sequence[str], last: int, context: TextView | None = None
    ) -> int | None:
        query = CutQuery(
            role=role.name,
            context=context if context is not None else self.thinking.view(),
            pieces=pieces,
            sample_id=self.sample.id,
            last=last,
        )
        cut = await role.predictor.find_cut(query)
        if cut is not None and not 0 <= cut <= query.max_position:
            raise BoundaryError(f"{role.name}'s predictor returned cut {cut} outside 0..{query.max_position}")
        return cut

    def _keep(self, role: Role, chunk: Chunk, phase: Phase = "think") -> None:
        pieces = chunk.pieces
        if not pieces:
            return
        self.spans.add(role.name, phase, pieces)
        n = len(pieces)
        if role.name == "teacher":
            self.stats.teacher_tokens += n
        else:
            self.stats.student_tokens += n
        if phase == "think":
            self.stats.think_tokens += n
            text = "".join(pieces)
            self.thinking.append(text)
            for name, ctx in self.contexts.items():
                if name == role.name:
                    ctx.append_own(chunk)
                else:
                    ctx.append(text)
        else:
            self.stats.answer_tokens += n
        guard = self.limits.repetition
        if guard is not None and self.recent is not None:
            self.recent.extend(pieces)
            self.unchecked += n
            if self.unchecked >= guard.check_every:
                self.unchecked = 0
                if guard.is_degenerate(tuple(self.recent)):
                    raise _Failed("repetition", f"degenerate repetition in the {role.name}'s text")

    # -- answer ------------------------------------------------------------------------

    async def _answer(self, role: Role) -> str:
        left = self.limits.max_total_tokens - self.stats.total_tokens
        if left <= 0:
            raise _Failed("token_budget", "no tokens left for the answer")
        thinking = self.thinking.text()
        strip = len(thinking) - len(thinking.rstrip())
        prompt = self._context(role).answer_prompt(strip, role.format.answer_suffix())
        gen = await self._generate(role, prompt, left, role.format.answer_stop, phase="answer")
        self._keep(role, Chunk(gen.pieces), phase="answer")
        if gen.finish_reason == "length":
            raise _Failed(
                "token_budget", f"the answer did not end within max_total_tokens={self.limits.max_total_tokens}"
            )
        return gen.text

    # -- requests ----------------------------------------------------------------------

    def _request(
        self, role: Role, prompt: Prompt, max_tokens: int, stop: tuple[str, ...], phase: Phase = "think"
    ) -> GenerateRequest:
        previous = self.last_prompts.get(role.name)
        if previous is not None and not extends(prompt, previous):
            self.stats.prefix_misses += 1
            logger.debug("sample %s: the %s's prompt does not extend its previous one", self.sample.id, role.name)
        self.last_prompts[role.name] = prompt
        return GenerateRequest(
            prompt=prompt,
            max_tokens=max_tokens,
            stop=stop,
            sampling=role.sampling if self.sample.seed is None else replace(role.sampling, seed=self.sample.seed),
            sample_id=self.sample.id,
            role=role.name,
            phase=phase,
        )

    async def _generate(
        self, role: Role, prompt: Prompt, max_tokens: int, stop: tuple[str, ...], phase: Phase = "think"
    ) -> Generation:
        request = self._request(role, prompt, max_tokens, stop, phase)
        gen = await self._call(role, lambda: role.backend.generate(request), "request")
        self.stats.retried_requests += gen.retries
        self._count_prompt(gen.prompt_tokens, gen.cached_tokens)
        return gen

    async def _call(self, role: Role, send: Callable[[], Awaitable[T]], what: str) -> T:
        """One request to ``role``'s backend (``send``), counted, bounded by the backend's slot
        and tried again against the sample's failure budget."""

        async def attempt() -> T:
            self.stats.requests += 1
            if self.budget.failures > failures[0]:  # the attempt before this one failed
                failures[0] = self.budget.failures
                self.stats.retried_requests += 1
            async with self.slot(role.backend):
                return await send()

        failures = [self.budget.failures]
        try:
            return await call_with_retries(attempt, self.budget, what=f"sample {self.sample.id}: a {role.name} {what}")
        except BackendError as exc:
            raise self._failed(exc) from None
        finally:
            self.stats.failed_requests = self.budget.failures

    def _count_prompt(self, prompt_tokens: int | None, cached_tokens: int | None) -> None:
        """Count a request's prefix-cache hits, where its server reported them."""
        if prompt_tokens and cached_tokens is not None:
            self.stats.reported_prompt_tokens += prompt_tokens
            self.stats.cached_prompt_tokens += min(cached_tokens, prompt_tokens)

    def _charge(self, exc: BackendError) -> None:
        """Count a failed request against the sample's budget; fail the sample when it is spent."""
        allowed = self.budget.spend(exc)
        self.stats.failed_requests = self.budget.failures
        if not allowed:
            raise self._failed(exc)
        logger.debug("sample %s: request failed (%s), trying again", self.sample.id, exc)

    def _failed(self, exc: BackendError) -> _Failed:
        if not exc.retryable:
            return _Failed("request_failed", str(exc))
        return _Failed("request_failures", f"{self.budget.failures} failed requests, the last: {exc}")
