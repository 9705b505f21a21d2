"""The TESSY engine: teacher and student take turns inside one response.

Each sample is its own small state machine (:class:`_SampleRun`) running as an asyncio task;
many run at once, each backend bounds how many of its requests are in flight, and no sample
ever waits for another (there are no lock-step rounds). The rules (design.md section 1):

1. Thinking starts with the student.
2. The active role writes up to ``k`` tokens continuing the shared text in its own format.
3. Its boundary predictor finds the first position whose next token is of the other role's
   type; the chunk's first token is always kept.
4. On a cut: keep through that token, complete the current word, drop the rest, switch role.
   Without one: keep the whole chunk and the same role goes on.
5. The end of thinking (in the active role's format) ends the thinking phase, whoever writes it.
6. The answer is written by the student (by the teacher in the ``*-teacher-answer`` modes).
7. Guards end a sample with a recorded reason: token budget, thinking budget (thinking is
   closed and the answer written), degenerate repetition, too many failed requests.

Every step costs time in the new tokens only: prompts are O(1) snapshots of append-only
buffers, predictors read a bounded window, and spans are joined once at the end.

Token-exact mode: a role with a tokenizer whose backend takes token ids keeps its prompt as
token ids too. Its own kept tokens enter its prompt with the ids its model produced; text of
the other role is encoded once, on its own, when the role next asks. Nothing already in a
prompt is ever re-encoded, so what each model "said" stays exactly what it generated, and each
request's prompt extends that role's previous prompt (a prefix-cache hit). The engine checks
this for every request and counts the requests that do not (``SampleStats.prefix_misses``).
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from .backends.base import Backend, GenerateRequest, Generation, Prompt, SamplingParams
from .boundary.base import BoundaryPredictor, CutQuery
from .errors import BackendError, BoundaryError, TessyError
from .formats import Format
from .records import Failure, Mode, Phase, Sample, SampleResult, SampleStats, Source, Span
from .text import TextBuffer, TextView, TokenView
from .tokenizers import Tokenizer

__all__ = ["Engine", "Limits", "RepetitionGuard", "Role"]

logger = logging.getLogger(__name__)


@dataclass
class Role:
    """One side of the cooperation: a model behind a backend, its format and its predictor."""

    name: Source
    backend: Backend
    format: Format
    predictor: BoundaryPredictor
    chunk_tokens: int = 20
    sampling: SamplingParams = field(default_factory=SamplingParams)
    #: The model's tokenizer; with a backend that takes token ids, prompts are kept as ids.
    tokenizer: Tokenizer | None = None

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1:
            raise ValueError(f"{self.name}: chunk_tokens must be at least 1")

    @property
    def token_exact(self) -> bool:
        """Whether this role's prompts are kept as token ids (see the module's docstring)."""
        return self.tokenizer is not None and self.backend.accepts_token_ids

    async def aclose(self) -> None:
        """Close the role's backend and predictor."""
        await self.backend.aclose()
        await self.predictor.aclose()


@dataclass(frozen=True)
class RepetitionGuard:
    """Flags degenerate repetition: the same unit of up to ``max_period`` tokens repeated
    ``min_repeats`` times or more at the end of the text, covering ``min_tokens`` or more."""

    min_tokens: int = 128
    max_period: int = 256
    min_repeats: int = 3
    #: Look again only after this many new tokens (a loop is caught a little later, for much less work).
    check_every: int = 32

    @property
    def window(self) -> int:
        return max(self.min_tokens, self.max_period * self.min_repeats) + 1

    def is_degenerate(self, tokens: Sequence[str]) -> bool:
        n = len(tokens)
        for period in range(1, min(self.max_period, n // 2) + 1):
            run = 0
            i = n - 1
            while i - period >= 0 and tokens[i] == tokens[i - period]:
                run += 1
                i -= 1
            covered = run + period
            if covered >= self.min_tokens and covered >= self.min_repeats * period:
                return True
        return False


@dataclass(frozen=True)
class Limits:
    """Budgets and guards. Token counts add both roles' tokens, each in its own tokenizer."""

    max_total_tokens: int = 32768
    max_thinking_tokens: int = 28672
    max_request_failures: int = 3
    #: Tokens asked for when a cut falls in a word that the chunk ends in the middle of.
    word_completion_tokens: int = 8
    repetition: RepetitionGuard | None = field(default_factory=RepetitionGuard)

    def __post_init__(self) -> None:
        if self.max_thinking_tokens >= self.max_total_tokens:
            raise ValueError("max_thinking_tokens must be below max_total_tokens, to leave room for the answer")
        if min(self.max_thinking_tokens, self.word_completion_tokens) < 1 or self.max_request_failures < 0:
            raise ValueError("budgets must be positive")


class Engine:
    """Runs samples through the cooperative loop (or one of the comparison modes)."""

    def __init__(
        self,
        teacher: Role,
        student: Role,
        *,
        mode: Mode | str = Mode.TESSY,
        limits: Limits | None = None,
        streaming: bool = False,
    ) -> None:
        if teacher.name != "teacher" or student.name != "student":
            raise ValueError("the roles must be named 'teacher' and 'student'")
        self.roles: dict[Source, Role] = {"teacher": teacher, "student": student}
        self.mode = Mode(mode)
        self.limits = limits or Limits()
        self.streaming = streaming
        if streaming:
            for name in self.mode.roles:
                backend = self.roles[name].backend
                if not backend.supports_streaming:
                    raise ValueError(f"streaming is on but the {name}'s backend {type(backend).__name__} cannot stream")
        self._slots: dict[int, asyncio.Semaphore] = {}

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every backend and predictor the roles hold (each once: roles may share them)."""
        closed: set[int] = set()
        for role in self.roles.values():
            for thing in (role.backend, role.predictor):
                if id(thing) not in closed:
                    closed.add(id(thing))
                    await thing.aclose()

    def slot(self, backend: Backend) -> asyncio.Semaphore:
        """The semaphore that bounds in-flight requests on ``backend``."""
        sem = self._slots.get(id(backend))
        if sem is None:
            sem = self._slots[id(backend)] = asyncio.Semaphore(backend.max_concurrency)
        return sem

    async def run_sample(self, sample: Sample) -> SampleResult:
        """Synthesise one response. Failures come back as a result with a reason, not raised."""
        return await _SampleRun(self, sample).run()

    async def run(
        self, samples: Iterable[Sample] | AsyncIterable[Sample], *, max_in_flight: int = 256
    ) -> AsyncIterator[SampleResult]:
        """Run many samples at once, yielding each result as soon as it is done.

        At most ``max_in_flight`` samples are in progress; the next one starts as soon as one
        finishes, so input is read lazily and memory does not grow with the input.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        done: asyncio.Queue[SampleResult | Exception] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(sample: Sample) -> None:
            try:
                result: SampleResult | Exception = await self.run_sample(sample)
            except Exception as exc:  # a bug, not a failed sample: re-raised by the consumer
                result = exc
            done.put_nowait(result)

        source = _aiter(samples)
        exhausted = False
        pending = 0  # started samples whose result has not been taken from the queue
        try:
            while True:
                while not exhausted and pending < max_in_flight:
                    try:
                        sample = await anext(source)
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    task = asyncio.create_task(one(sample), name=f"tessy-sample-{sample.id}")
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    pending += 1
                if pending == 0:
                    return
                item = await done.get()
                pending -= 1
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)


async def _aiter(samples: Iterable[Sample] | AsyncIterable[Sample]) -> AsyncIterator[Sample]:
    if isinstance(samples, AsyncIterable):
        async for s in samples:
            yield s
    else:
        for s in samples:
            yield s


class _Failed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.failure = Failure(kind, detail)


class _Step(enum.Enum):
    CONTINUE = "continue"
    SWITCH = "switch"
    ENDED = "ended"


@dataclass(slots=True)
class _Chunk:
    """Generated pieces, with the ids of ``pieces[:len(ids)]`` where the backend returned ids
    (the pieces past them, a piece cut inside its token, have none)."""

    pieces: list[str]
    ids: list[int] | None = None

    @classmethod
    def of(cls, gen: Generation) -> _Chunk:
        ids = gen.token_ids
        return cls(list(gen.pieces), list(ids[: len(gen.pieces)]) if ids is not None else None)

    def head(self, n: int) -> _Chunk:
        return _Chunk(self.pieces[:n], self.ids[:n] if self.ids is not None else None)

    def __len__(self) -> int:
        return len(self.pieces)


class _RoleContext:
    """One role's prompt: its own rendering of the conversation, then the shared text.

    In token-exact mode it keeps the prompt's token ids as well, and the character offset where
    each id's text ends (to cut back cleanly where the answer drops trailing whitespace).
    """

    __slots__ = ("buffer", "ends", "ids", "pending", "tokenizer")

    def __init__(self, header: str, tokenizer: Tokenizer | None = None) -> None:
        self.buffer = TextBuffer(header)
        self.tokenizer = tokenizer
        self.pending: list[str] = []  # text appended since the ids were last brought up to date
        self.ids: list[int] | None = None
        self.ends: list[int] = []
        if tokenizer is not None:
            ids, pieces = tokenizer.encode_pieces(header, first=True)
            self.ids = ids
            self._add_ends(pieces)

    def _add_ends(self, pieces: Sequence[str]) -> None:
        pos = self.ends[-1] if self.ends else 0
        for piece in pieces:
            pos += len(piece)
            self.ends.append(pos)

    def append(self, text: str) -> None:
        """Text written by the other role (encoded when this role next needs its prompt)."""
        self.buffer.append(text)
        if self.ids is not None and text:
            self.pending.append(text)

    def append_own(self, chunk: _Chunk) -> None:
        """This role's own kept tokens, with the ids its model produced where there are any."""
        text = "".join(chunk.pieces)
        if self.ids is None or chunk.ids is None:
            self.append(text)
            return
        n = len(chunk.ids)
        # Tokens with empty pieces at the end hold part of a character whose last byte was not
        # kept: their ids would stand for text the prompt does not have.
        while n and not chunk.pieces[n - 1]:
            n -= 1
        self._flush()
        self.buffer.append(text)
        self.ids.extend(chunk.ids[:n])
        self._add_ends(chunk.pieces[:n])
        rest = "".join(chunk.pieces[n:])
        if rest:
            self.pending.append(rest)

    def _flush(self) -> None:
        if self.pending and self.ids is not None and self.tokenizer is not None:
            ids, pieces = self.tokenizer.encode_pieces("".join(self.pending))
            self.pending.clear()
            self.ids.extend(ids)
            self._add_ends(pieces)

    def prompt(self) -> Prompt:
        if self.ids is None:
            return Prompt(self.buffer.view())
        self._flush()
        return Prompt(self.buffer.view(), TokenView(self.ids))

    def answer_prompt(self, strip: int, suffix: str) -> Prompt:
        """The prompt that closes the thinking and opens the answer: this prompt less its last
        ``strip`` characters (whitespace the stored thinking drops), then ``suffix``. This is the
        context's last use."""
        dropped = self.buffer.tail(strip)
        if suffix.startswith(dropped):  # dropping characters only to add them back: just grow
            self.append(suffix[len(dropped) :])
            return self.prompt()
        text = self.buffer.text()
        cut = len(text) - strip
        view = TextView.of(text[:cut] + suffix)
        if self.ids is None or self.tokenizer is None:
            return Prompt(view)
        self._flush()
        # Keep the ids whose text lies wholly before the cut (not ones holding a split
        # character's first bytes), and encode the rest afresh.
        k = bisect.bisect_right(self.ends, cut)
        while k > 1 and self.ends[k - 1] == self.ends[k - 2]:
            k -= 1
        start = self.ends[k - 1] if k else 0
        ids = self.ids[:k] + self.tokenizer.encode_pieces(text[start:cut] + suffix)[0]
        return Prompt(view, TokenView(ids))


class _SpanBuilder:
    """Collects kept pieces into spans, merging adjacent pieces of one source and phase."""

    def __init__(self) -> None:
        self._done: list[Span] = []
        self._source: Source | None = None
        self._phase: Phase | None = None
        self._parts: list[str] = []
        self._tokens = 0

    def add(self, source: Source, phase: Phase, pieces: Sequence[str]) -> None:
        if not pieces:
            return
        if (source, phase) != (self._source, self._phase):
            self._close()
            self._source, self._phase = source, phase
        self._parts.extend(pieces)
        self._tokens += len(pieces)

    def _close(self) -> None:
        if self._source is not None and self._phase is not None and self._parts:
            self._done.append(Span(self._source, self._phase, "".join(self._parts), self._tokens))
        self._parts, self._tokens = [], 0

    def spans(self) -> list[Span]:
        self._close()
        self._source = self._phase = None
        return list(self._done)

    def strip_thinking_end(self) -> None:
        """Drop whitespace at the end of the thinking (the format puts its own newline there)."""
        self._close()
        self._source = self._phase = None
        while self._done and self._done[-1].phase == "think":
            last = self._done[-1]
            text = last.text.rstrip()
            if text:
                self._done[-1] = Span(last.source, last.phase, text, last.tokens)
                return
            self._done.pop()


class _SampleRun:
    """The state machine of one sample."""

    def __init__(self, engine: Engine, sample: Sample) -> None:
        self.engine = engine
        self.sample = sample
        self.limits = engine.limits
        self.stats = SampleStats()
        self.spans = _SpanBuilder()
        self.thinking = TextBuffer()
        self.contexts: dict[Source, _RoleContext] = {}
        self.last_prompts: dict[Source, Prompt] = {}  # each role's previous request's prompt
        guard = self.limits.repetition
        self.recent: deque[str] | None = deque(maxlen=guard.window) if guard else None
        self.unchecked = 0  # tokens kept since the repetition guard last looked

    # -- top level ---------------------------------------------------------------------

    async def run(self) -> SampleResult:
        started = time.perf_counter()
        failure: Failure | None = None
        response: str | None = None
        try:
            mode = self.engine.mode
            thinker = mode.thinker
            if thinker is None:
                await self._think_together()
            else:
                await self._think_alone(self.engine.roles[thinker])
            self.spans.strip_thinking_end()
            answer = await self._answer(self.engine.roles[mode.answerer])
            thinking = "".join(s.text for s in self.spans.spans() if s.phase == "think")
            student_format = self.engine.roles["student"].format
            response = student_format.render_response(thinking, answer)
        except _Failed as exc:
            failure = exc.failure
        except TessyError as exc:
            failure = Failure(type(exc).__name__, str(exc))
        self.stats.wall_s = time.perf_counter() - started
        if failure:
            logger.info("sample %s failed: %s", self.sample.id, failure)
        return SampleResult(self.sample, self.spans.spans(), self.stats, response, failure)

    # -- thinking ----------------------------------------------------------------------

    def _context(self, role: Role) -> _RoleContext:
        ctx = self.contexts.get(role.name)
        if ctx is None:
            header = role.format.render_think(self.sample.messages)
            ctx = self.contexts[role.name] = _RoleContext(header, role.tokenizer if role.token_exact else None)
            ctx.append(self.thinking.text())
        return ctx

    def _thinking_left(self) -> int:
        return min(
            self.limits.max_thinking_tokens - self.stats.think_tokens,
            self.limits.max_total_tokens - self.stats.total_tokens,
        )

    async def _think_together(self) -> None:
        role = self.engine.roles["student"]
        other = self.engine.roles["teacher"]
        while True:
            left = self._thinking_left()
            if left <= 0:
                self.stats.guards.append("thinking_budget")
                return
            if self.engine.streaming:
                step = await self._stream_step(role, left)
            else:
                step = await self._chunk_step(role, min(role.chunk_tokens, left))
            if step is _Step.ENDED:
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
        chunk, ended, after = _thinking_part(role.format, gen)
        self.stats.discarded_tokens += after
        self._keep(role, chunk)
        if not ended:
            self.stats.guards.append("thinking_budget")

    async def _chunk_step(self, role: Role, max_tokens: int) -> _Step:
        gen = await self._generate(role, self._context(role).prompt(), max_tokens, role.format.think_stop)
        chunk, ended, after = _thinking_part(role.format, gen)
        pieces = chunk.pieces
        self.stats.discarded_tokens += after
        # A cut needs a next token inside the thinking: before the end marker, none at the last piece.
        last = len(pieces) - (2 if ended else 1)
        cut = await self._find_cut(role, pieces, last) if last >= 0 else None
        if cut is None:
            self._keep(role, chunk)
            return _Step.ENDED if ended else _Step.CONTINUE
        end = _word_end(pieces, cut)
        if end is not None:
            self._keep(role, chunk.head(end + 1))
            self.stats.discarded_tokens += len(pieces) - end - 1
            return _Step.SWITCH
        # The word goes on past the chunk: it either runs into the end of thinking, or the
        # same role must write a little more to finish it.
        self._keep(role, chunk)
        if ended:
            return _Step.ENDED
        return await self._finish_word(role)

    async def _finish_word(self, role: Role) -> _Step:
        left = self._thinking_left()
        if left <= 0:
            return _Step.SWITCH  # the loop records the thinking budget
        max_tokens = min(self.limits.word_completion_tokens, left)
        gen = await self._generate(role, self._context(role).prompt(), max_tokens, role.format.think_stop)
        chunk, ended, after = _thinking_part(role.format, gen)
        pieces = chunk.pieces
        self.stats.discarded_tokens += after
        keep = _first_boundary(pieces)
        if keep is None:
            # No word boundary within the completion budget: keep it all (a very long "word").
            self._keep(role, chunk)
            return _Step.ENDED if ended else _Step.SWITCH
        self._keep(role, chunk.head(keep))
        self.stats.discarded_tokens += len(pieces) - keep
        return _Step.SWITCH

    async def _stream_step(self, role: Role, max_tokens: int) -> _Step:
        """One span by streaming: read tokens until a final cut plus its word end, then stop."""
        fmt = role.format
        predictor = role.predictor
        request = self._request(role, self._context(role).prompt(), max_tokens, fmt.think_stop)
        pieces: list[str] = []
        ids: list[int] | None = [] if role.token_exact else None  # the ids of whole pieces
        streamed = TextBuffer()  # the streamed text, for the predictor's context and end detection
        marker_len = max((len(s) for s in fmt.think_stop), default=0)
        checked = 0  # positions before this are final and hold no cut
        cut: int | None = None
        end: int | None = None
        ended = False
        finish: str | None = None
        after = 0
        self.stats.requests += 1
        try:
            async with self.engine.slot(role.backend), aclosing(role.backend.stream(request)) as deltas:
                async for delta in deltas:
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
                            pieces, after, whole = _trim_at(pieces, offset + hit[0], offset + hit[1])
                            if ids is not None:
                                del ids[whole:]
                            ended = True
                    finish = delta.finish_reason or finish
                    if delta.finish_reason == "stop":
                        ended = True
                    done = ended or delta.finish_reason is not None
                    if cut is None:
                        context = self.thinking.view().extended(_tail_of(pieces, checked, predictor.context_chars))
                        # A cut at j is final once piece j + 1 can no longer change type.
                        final = len(pieces) - 1 if done else checked + predictor.settled(context, pieces[checked:]) - 2
                        if ended:
                            final = min(final, len(pieces) - 2)
                        if final >= checked:
                            j = await self._find_cut(role, pieces[checked:], final - checked, context)
                            if j is None:
                                checked = final + 1
                            else:
                                cut = checked + j
                    if cut is not None:
                        end = _word_end(pieces, cut)
                        if end is not None or done:
                            break
                    if done:
                        break
        except BackendError as exc:
            self._request_failed(exc)
            return _Step.CONTINUE
        chunk = _Chunk(pieces, ids)
        if cut is None:
            self._keep(role, chunk)
            return _Step.ENDED if ended else _Step.CONTINUE
        if end is None:
            self._keep(role, chunk)
            if ended:
                return _Step.ENDED
            if finish == "length":
                return await self._finish_word(role)
            return _Step.SWITCH
        self._keep(role, chunk.head(end + 1))
        self.stats.discarded_tokens += len(pieces) - end - 1 + after
        return _Step.SWITCH

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

    def _keep(self, role: Role, chunk: _Chunk, phase: Phase = "think") -> None:
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
        self._keep(role, _Chunk(gen.pieces), phase="answer")
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
        if previous is not None and not _extends(prompt, previous):
            self.stats.prefix_misses += 1
            logger.debug("sample %s: the %s's prompt does not extend its previous one", self.sample.id, role.name)
        self.last_prompts[role.name] = prompt
        return GenerateRequest(
            prompt=prompt,
            max_tokens=max_tokens,
            stop=stop,
            sampling=role.sampling,
            sample_id=self.sample.id,
            role=role.name,
            phase=phase,
        )

    async def _generate(
        self, role: Role, prompt: Prompt, max_tokens: int, stop: tuple[str, ...], phase: Phase = "think"
    ) -> Generation:
        request = self._request(role, prompt, max_tokens, stop, phase)
        while True:
            self.stats.requests += 1
            try:
                async with self.engine.slot(role.backend):
                    return await role.backend.generate(request)
            except BackendError as exc:
                self._request_failed(exc)

    def _request_failed(self, exc: BackendError) -> None:
        self.stats.failed_requests += 1
        if not exc.retryable:
            raise _Failed("request_failed", str(exc))
        if self.stats.failed_requests > self.limits.max_request_failures:
            raise _Failed("request_failures", f"{self.stats.failed_requests} failed requests, the last: {exc}")
        logger.debug("sample %s: request failed (%s), trying again", self.sample.id, exc)


def _tail_of(pieces: Sequence[str], end: int, n_chars: int) -> str:
    """The last ``n_chars`` characters of ``"".join(pieces[:end])``, without joining them all."""
    out: list[str] = []
    need = n_chars
    i = end - 1
    while i >= 0 and need > 0:
        out.append(pieces[i])
        need -= len(pieces[i])
        i -= 1
    text = "".join(reversed(out))
    return text[-n_chars:] if len(text) > n_chars else text


def _extends(prompt: Prompt, previous: Prompt) -> bool:
    """Whether ``prompt`` begins with all of ``previous`` (as token ids where both have them)."""
    if prompt.token_ids is not None and previous.token_ids is not None:
        ids = prompt.token_ids
        if isinstance(ids, TokenView):
            return ids.startswith(previous.token_ids)
        n = len(previous.token_ids)
        return n <= len(ids) and list(ids[:n]) == list(previous.token_ids)
    return prompt.view.startswith(previous.view)


def _thinking_part(fmt: Format, gen: Generation) -> tuple[_Chunk, bool, int]:
    """The part of a chunk that belongs to the thinking, whether thinking ended, and how many
    pieces came after the end-of-thinking marker (generated for nothing)."""
    chunk = _Chunk.of(gen)
    hit = fmt.find_think_end(gen.text) if fmt.think_stop else None
    if hit is not None:
        kept, after, whole = _trim_at(chunk.pieces, hit[0], hit[1])
        return _Chunk(kept, chunk.ids[:whole] if chunk.ids is not None else None), True, after
    return chunk, gen.finish_reason == "stop", 0


def _trim_at(pieces: Sequence[str], start: int, end: int) -> tuple[list[str], int, int]:
    """The pieces before character ``start`` (where a marker begins), how many pieces lie
    wholly after character ``end`` (where it ends: those were generated for nothing), and how
    many of the kept pieces are whole (the last one may be cut inside its token)."""
    kept: list[str] = []
    pos = 0
    after = 0
    whole = 0
    for piece in pieces:
        if pos + len(piece) <= start:
            kept.append(piece)
            whole += 1
        elif pos < start:
            kept.append(piece[: start - pos])
        elif pos >= end:
            after += 1
        pos += len(piece)
    return kept, after, whole


def _word_end(pieces: Sequence[str], cut: int) -> int | None:
    """The last piece to keep when cutting after ``cut`` without splitting a word, or ``None``
    when the word runs on past the end of ``pieces``."""
    for j in range(cut, len(pieces)):
        if pieces[j][-1:].isspace():
            return j
        if j + 1 < len(pieces) and pieces[j + 1][:1].isspace():
            return j
    return None


def _first_boundary(pieces: Sequence[str]) -> int | None:
    """How many leading pieces finish the current word, or ``None`` if no word boundary is seen."""
    for i, piece in enumerate(pieces):
        if piece[:1].isspace():
            return i
        if piece[-1:].isspace():
            return i + 1
    return None
