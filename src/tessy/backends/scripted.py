"""A scripted backend: replays given continuations and records every request it receives.

It behaves like a real server where the engine can tell: it stops at ``max_tokens`` (finish
``"length"``), at a stop string (finish ``"stop"``, the string left out) or at the end of the
scripted continuation (finish ``"stop"``, as an end-of-sequence token would). It never looks at
the whole prompt, so it costs O(new tokens) a request and suits benchmarks as well as tests.

It also scores text (:meth:`ScriptedBackend.score`) as a model that knows only its own script
would: tokens it could have written are likely (and, asked for ranks, ranked first), others are
not (ranked beyond the top-k it lists). That is enough to check that a report ranks text written
by this fake as more its own than text written by another.

With ``token_ids=True`` it also plays a token-in/token-out server: it takes prompts as ids and
returns the ids of its pieces in its :class:`FakeTokenizer`'s vocabulary.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import Any

from ..errors import BackendError
from ..tokenizers import FakeTokenizer, Tokenizer
from .base import Backend, FinishReason, GenerateRequest, Generation, ScoreRequest, StreamDelta, TokenScores

__all__ = ["Continuation", "PieceScorer", "ScriptedBackend"]

#: A scripted continuation: text (split by the tokenizer), explicit token strings, or an error to raise.
Continuation = str | Sequence[str] | BaseException
Responder = Callable[[GenerateRequest], Continuation]
#: A scripted scorer: the log-probability of each token (piece) of a continuation, given the request.
PieceScorer = Callable[[ScoreRequest, Sequence[str]], Sequence[float]]
#: Samples whose cursor a cycling fake remembers at most.
_MAX_TRACKED = 8192
#: Log-probabilities the fake gives, when scoring, to a token of its script and to any other.
KNOWN_LOGPROB = math.log(0.5)
UNKNOWN_LOGPROB = math.log(1e-3)


class ScriptedBackend(Backend):
    """Answers each request with the next scripted continuation.

    Give either ``script`` (continuations consumed in order, whatever the sample) or
    ``responder`` (a function of the request). :meth:`cycling` builds a responder that walks a
    list of responses per sample, so output does not depend on how samples interleave.
    """

    supports_streaming = True
    supports_scoring = True

    def __init__(
        self,
        script: Iterable[Continuation] | None = None,
        *,
        responder: Responder | None = None,
        tokenizer: Tokenizer | None = None,
        latency_s: float = 0.0,
        record: bool = True,
        max_concurrency: int = 64,
        known_pieces: Iterable[str] | None = None,
        token_ids: bool = False,
        scorer: PieceScorer | None = None,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency)
        if (script is None) == (responder is None):
            raise ValueError("give exactly one of script= or responder=")
        self._script: deque[Continuation] = deque(script or ())
        self._responder = responder
        self.tokenizer = tokenizer or FakeTokenizer()
        #: The token strings this fake deems likely when scoring (by default: those of its script).
        self.known_pieces: frozenset[str] = frozenset(
            known_pieces if known_pieces is not None else self._script_pieces(self._script)
        )
        self._ids_tokenizer: FakeTokenizer | None = None
        if token_ids:
            if not isinstance(self.tokenizer, FakeTokenizer):
                raise ValueError("token_ids=True needs a FakeTokenizer (one id per scripted piece)")
            self._ids_tokenizer = self.tokenizer
            self.accepts_token_ids = self.returns_token_ids = True
        self.latency_s = latency_s
        self.record = record
        #: Every request received, in order (when ``record`` is on).
        self.requests: list[GenerateRequest] = []
        #: Every scoring request received, in order (when ``record`` is on).
        self.score_requests: list[ScoreRequest] = []
        #: Scores each piece of a continuation in place of the known/unknown rule (:meth:`score`).
        self.scorer = scorer
        #: How many requests are running now, and the most that ever ran at once.
        self.in_flight = 0
        self.max_in_flight = 0
        #: Streams closed by the caller before the continuation was exhausted.
        self.aborted_streams = 0
        #: Per-sample state a responder keeps (a cycling fake's cursors); :meth:`release` drops it.
        self.sample_state: dict[str, Any] = {}
        #: Every sample released, in order.
        self.released: list[str] = []

    @classmethod
    def cycling(
        cls,
        responses: Sequence[str],
        answers: Sequence[str] = (),
        **kwargs: object,
    ) -> ScriptedBackend:
        """A fake model that writes ``responses`` one after another, without end.

        Per sample it keeps a cursor in that endless text (in :attr:`sample_state`, until the
        sample is released). When the prompt ends with everything
        it returned last time (nothing was cut), it carries on from the cursor, as a model would;
        otherwise it starts afresh at the response after the one its last request began in. Only a stop string (``</think>`` in a
        response) ends a thinking request early. The first response of a sample is chosen by a
        stable hash of its id. An answer request gets one of ``answers`` (else of ``responses``), which ends like a turn does;
        one whose prompt ends with the start of that answer gets the rest of it.
        """
        if not responses:
            raise ValueError("cycling() needs at least one response")
        tokenizer = kwargs.get("tokenizer") or FakeTokenizer()
        assert isinstance(tokenizer, Tokenizer)
        split = [tokenizer.pieces(r) for r in responses]
        split_answers = [tokenizer.pieces(a) for a in answers]
        # Per sample: (response index, piece index within it, text returned last time, and the
        # response that text began in).
        cursors: dict[str, tuple[int, int, str, int]] = {}

        def start(sample_id: str, n: int) -> int:
            return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:4], "big") % n

        def respond(request: GenerateRequest) -> Continuation:
            sid = request.sample_id
            if request.phase == "answer":
                pool = split_answers or split
                answer = pool[start(sid, len(pool))]
                # A prompt that already ends with the answer's first pieces (an answer written a
                # few tokens at a time, as RSD does) is continued, not begun again.
                for k in range(len(answer), 0, -1):
                    if request.prompt.view.endswith("".join(answer[:k])):
                        return answer[k:]
                return answer
            cursor = cursors.get(sid)
            if cursor is None:
                r, p = start(sid, len(split)), 0
            elif cursor[2] and request.prompt.view.endswith(cursor[2]):
                r, p = cursor[0], cursor[1]
            else:
                r, p = cursor[3] + 1, 0
            began = r
            pieces: list[str] = []
            while len(pieces) < request.max_tokens + 1:
                response = split[r % len(split)]
                take = response[p : p + request.max_tokens + 1 - len(pieces)]
                pieces.extend(take)
                p += len(take)
                if p >= len(response):
                    r, p = r + 1, 0
            # The request returns max_tokens pieces (one more only signals "length").
            r, p = _back_one(split, r, p)
            cursors.pop(sid, None)  # re-insert at the end: the dict stays in order of last use
            cursors[sid] = (r, p, "".join(pieces[: request.max_tokens]), began)
            if len(cursors) > _MAX_TRACKED:  # a caller that never releases: forget the oldest
                del cursors[next(iter(cursors))]
            return pieces

        kwargs.setdefault("known_pieces", [p for r in [*split, *split_answers] for p in r])
        backend = cls(responder=respond, **kwargs)  # type: ignore[arg-type]
        backend.sample_state = cursors
        return backend

    async def release(self, sample_id: str) -> None:
        self.released.append(sample_id)
        self.sample_state.pop(sample_id, None)

    def _script_pieces(self, script: Iterable[Continuation]) -> list[str]:
        out: list[str] = []
        for item in script:
            if isinstance(item, str):
                out.extend(self.tokenizer.pieces(item))
            elif not isinstance(item, BaseException):
                out.extend(item)
        return out

    @property
    def remaining(self) -> int:
        """Scripted continuations not yet consumed."""
        return len(self._script)

    def _next(self, request: GenerateRequest) -> list[str]:
        if self.record:
            self.requests.append(request)
        if self._responder is not None:
            item = self._responder(request)
        elif self._script:
            item = self._script.popleft()
        else:
            raise AssertionError(f"the script ran out at request {len(self.requests)} (sample {request.sample_id!r})")
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, str):
            return self.tokenizer.pieces(item)
        return list(item)

    async def generate(self, request: GenerateRequest) -> Generation:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            pieces = self._next(request)
            return self._with_ids(_truncate(pieces, request))
        finally:
            self.in_flight -= 1

    async def score(self, request: ScoreRequest) -> TokenScores:
        if self.record:
            self.score_requests.append(request)
        pieces = self.tokenizer.pieces(request.continuation)
        spans, at = [], 0
        for p in pieces:
            spans.append((at, at + len(p)))
            at += len(p)
        known = self.known_pieces
        if self.scorer is not None:
            values = [float(v) for v in self.scorer(request, pieces)]
            if len(values) != len(pieces):
                raise AssertionError(f"the scorer gave {len(values)} scores for {len(pieces)} pieces")
        else:
            values = [KNOWN_LOGPROB if p in known else UNKNOWN_LOGPROB for p in pieces]
        scores = TokenScores(pieces, values, offsets=spans)
        if request.top_k > 0:
            # As a server that lists the top-k alternatives: its own tokens come first, any other
            # is beyond the list (censored).
            scores.ranks = [1 if p in known else request.top_k + 1 for p in pieces]
            scores.rank_limit = request.top_k
        return scores

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamDelta, None]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        finished = False
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            whole = self._with_ids(_truncate(self._next(request), request))
            for i, piece in enumerate(whole.pieces):
                last = i == len(whole.pieces) - 1
                yield StreamDelta(
                    pieces=[piece],
                    token_ids=whole.token_ids[i : i + 1] if whole.token_ids is not None else None,
                    finish_reason=whole.finish_reason if last else None,
                    stop_reason=whole.stop_reason if last else None,
                )
                await asyncio.sleep(0)
            if not whole.pieces:
                yield StreamDelta(pieces=[], finish_reason=whole.finish_reason, stop_reason=whole.stop_reason)
            finished = True
        finally:
            self.in_flight -= 1
            if not finished:
                self.aborted_streams += 1

    def _with_ids(self, gen: Generation) -> Generation:
        if self._ids_tokenizer is not None:
            # A piece cut by a stop string is no longer a whole token: it gets no id.
            n = len(gen.pieces) - (1 if gen.stop_reason is not None and gen.pieces else 0)
            gen.token_ids = self._ids_tokenizer.ids_of(gen.pieces[:n])
        return gen


def _back_one(split: Sequence[Sequence[str]], r: int, p: int) -> tuple[int, int]:
    """The cursor one piece earlier in the endless concatenation of ``split``."""
    if p > 0:
        return r, p - 1
    r -= 1
    return r, len(split[r % len(split)]) - 1


def _truncate(pieces: list[str], request: GenerateRequest) -> Generation:
    """Apply ``max_tokens`` and stop strings the way a server does."""
    if request.max_tokens < 1:
        raise BackendError(f"max_tokens must be at least 1, got {request.max_tokens}", retryable=False)
    stops = request.stop
    longest = max((len(s) for s in stops), default=0)
    kept: list[str] = []
    recent = ""  # enough trailing text to find a stop string that spans pieces
    for piece in pieces[: request.max_tokens]:
        window = recent + piece
        hit = min(((window.find(s), s) for s in stops if s in window), default=None)
        if hit is not None:
            at, stop = hit
            # Keep what precedes the stop string in this piece (the part in `recent` is kept already).
            before = at - len(recent)
            if before > 0:
                kept.append(piece[:before])
            elif before < 0:
                _trim_end(kept, -before)
            return Generation(pieces=kept, finish_reason="stop", stop_reason=stop)
        kept.append(piece)
        recent = window[-longest:] if longest else ""
    # A server that produced max_tokens tokens stops there, whatever would have come next.
    finish: FinishReason = "length" if len(pieces) >= request.max_tokens else "stop"
    return Generation(pieces=kept, finish_reason=finish)


def _trim_end(pieces: list[str], n_chars: int) -> None:
    """Remove ``n_chars`` characters from the end of ``pieces`` (dropping emptied pieces)."""
    while n_chars > 0 and pieces:
        last = pieces.pop()
        if len(last) > n_chars:
            pieces.append(last[:-n_chars])
            return
        n_chars -= len(last)
