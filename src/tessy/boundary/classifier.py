"""The ``classifier`` boundary predictor: a trained token classifier over its own tokenizer.

Semantics (those of the authors' released predictors): the model reads a left-truncated window
of text (``window`` tokens, default 200) and at each position ``i`` gives the probability that
predictor token ``i + 1`` is *style* (label 1) rather than *capability* (label 0).

**From predictor tokens to the chunk's pieces.** The chunk comes as pieces in the *generating
role's* tokenizer, which may differ from the predictor's. The predictor tokenizes the context
tail plus the chunk text with character offsets; a token's *start* is its first non-whitespace
character (its raw start when it is all whitespace), so a leading space never decides which
piece a token belongs to. Then, for chunk position ``j``:

- if ``j`` is not the last piece: let ``q`` be the first predictor token whose start lies inside
  piece ``j + 1``; the next-token type at ``j`` is the predicted type of token ``q``, i.e. the
  output at position ``q - 1``. When no predictor token starts inside piece ``j + 1`` (the piece
  continues a predictor token begun earlier, as in the middle of a word), the type is unknown
  (``None``) and no cut is placed there;
- for the last piece, it is the output at the last predictor token: the type of whatever follows.

A token is *style* when its probability reaches ``threshold`` (default 0.5).

**Batching.** Queries from all samples in flight go through a :class:`MicroBatcher`: one padded
forward serves many samples, in a worker thread.

**Reuse.** Where the backbone is causal (Llama, Qwen, SmolLM2...), outputs at a position depend
only on the tokens before it, so the predictor keeps, per (sample, role) until the sample is
released (:meth:`ClassifierPredictor.release`) or evicted (``max_states``), the encoded window:
token ids, offsets, outputs and the backbone's key/value cache. The next query re-encodes only
from the last word start at or before the first changed character (text cut away after a switch
is dropped from the cache) and encodes the new text; everything before is reused. The window
grows by reuse up to ``window + reuse_margin`` tokens, then is re-encoded from the last
``window`` tokens (so every position sees at least ``window`` tokens of context where the text
has them, and a re-encode happens once per ``reuse_margin`` new tokens). For non-causal backbones
every query re-encodes its window.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BoundaryError
from ..text import TextView
from .base import CutQuery, NextTokenTypePredictor, TokenType, first_switch
from .batcher import MicroBatcher
from .token_model import HFTokenModel, Past, TokenModel

__all__ = ["ClassifierPredictor", "ClassifierStats", "piece_next_types", "token_starts"]

logger = logging.getLogger(__name__)

#: Characters of context read per token of window (generous: tokens of prose average about 4).
_CHARS_PER_TOKEN = 8
#: How far back (in tokens) a window start or a re-encode point looks for a word start.
_WORD_START_LOOKBACK = 16


def token_starts(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Each token's start for alignment: its first non-whitespace character (raw start if none)."""
    starts: list[int] = []
    for a, b in offsets:
        s = a
        while s < b and text[s].isspace():
            s += 1
        starts.append(s if s < b else a)
    return starts


def piece_next_types(
    piece_bounds: Sequence[tuple[int, int]],
    starts: Sequence[int],
    probs: Sequence[float],
    threshold: float,
) -> list[TokenType | None]:
    """Next-token types of the chunk's pieces from the predictor's per-token outputs.

    ``piece_bounds`` are the pieces' character spans and ``starts`` the predictor tokens'
    (alignment) starts, in the same coordinates; ``probs[i]`` is the style probability of
    token ``i + 1``. See the module docstring for the rule.
    """
    n_tokens = len(starts)
    out: list[TokenType | None] = []
    last = len(piece_bounds) - 1
    for j in range(len(piece_bounds)):
        if j < last:
            a, b = piece_bounds[j + 1]
            q = bisect.bisect_left(starts, a)
            if q >= n_tokens or starts[q] >= b:
                out.append(None)
                continue
        else:
            q = n_tokens
        if q < 1 or q - 1 >= len(probs):
            out.append(None)
            continue
        out.append(TokenType.STYLE if probs[q - 1] >= threshold else TokenType.CAPABILITY)
    return out


@dataclass
class ClassifierStats:
    """What the predictor has done, for benchmarks: tokens encoded against tokens asked about."""

    queries: int = 0
    #: Chunk pieces the predictor was asked about (tokens in the generating role's tokenizer).
    pieces: int = 0
    #: Predictor tokens of the chunks themselves (what encoding each chunk once would cost).
    chunk_tokens: int = 0
    #: Predictor tokens run through the backbone (new and re-encoded).
    tokens_encoded: int = 0
    forwards: int = 0
    reused: int = 0
    reencoded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "queries": self.queries,
            "pieces": self.pieces,
            "chunk_tokens": self.chunk_tokens,
            "tokens_encoded": self.tokens_encoded,
            "tokens_encoded_per_chunk_token": round(self.tokens_encoded / self.chunk_tokens, 3)
            if self.chunk_tokens
            else 0.0,
            "forwards": self.forwards,
            "reused": self.reused,
            "reencoded": self.reencoded,
            "tokens_encoded_per_piece": round(self.tokens_encoded / self.pieces, 3) if self.pieces else 0.0,
        }


@dataclass(frozen=True)
class _Request:
    """One question: the text before the chunk (``tail``, starting at absolute ``base``) and the chunk."""

    key: tuple[str, str] | None
    tail: str
    base: int
    pieces: tuple[str, ...]


@dataclass
class _Window:
    """An encoded window of one sample's text: tokens, outputs and, when reused, the backbone's cache."""

    base: int  # absolute character offset of text[0]
    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]  # raw token spans, relative to text
    probs: list[float]
    past: Past | None


@dataclass
class _Plan:
    request: _Request
    window: _Window  # probs and past cover the first `kept` tokens only
    kept: int
    reused: bool


class ClassifierPredictor(NextTokenTypePredictor):
    """Cuts chunks where a trained token classifier says the next token changes type."""

    def __init__(
        self,
        model: TokenModel,
        *,
        window: int = 200,
        reuse: bool = True,
        reuse_margin: int = 100,
        threshold: float = 0.5,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_states: int = 1024,
    ) -> None:
        if window < 2 or reuse_margin < 0 or not 0 < threshold < 1 or max_states < 1:
            raise ValueError("window >= 2, reuse_margin >= 0, 0 < threshold < 1 and max_states >= 1 are required")
        self.model = model
        self.window = window
        self.reuse = reuse and model.causal
        self.reuse_margin = reuse_margin if self.reuse else 0
        self.threshold = threshold
        self.max_states = max_states
        # A causal model's output at j does not change with later tokens, but the predictor's
        # own tokenization of piece j + 1 may (a merge with piece j + 2): wait one piece.
        self.lookahead = 1
        self.context_chars = _CHARS_PER_TOKEN * (window + self.reuse_margin + _WORD_START_LOOKBACK)
        self.stats = ClassifierStats()
        self._states: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._lock = threading.Lock()  # the batcher's worker and direct callers may both run batches
        self._batcher: MicroBatcher[_Request, list[TokenType | None]] = MicroBatcher(
            self._process, max_batch=max_batch, max_wait_ms=max_wait_ms, validate=_validate, name="classifier"
        )
        if reuse and not model.causal:
            logger.info("the classifier's backbone is not causal: every query re-encodes its window")

    @classmethod
    def load(cls, path: Path, *, device: str = "auto", dtype: str = "auto", **kwargs: Any) -> ClassifierPredictor:
        """A predictor from a checkpoint folder (as ``tessy predictor train`` writes)."""
        return cls(HFTokenModel.load(path, device=device, dtype=dtype), **kwargs)

    @property
    def batch_stats(self) -> dict[str, object]:
        return self._batcher.stats.to_dict()

    # -- the predictor interface -------------------------------------------------------

    async def find_cut(self, query: CutQuery) -> int | None:
        if not query.pieces:
            return None
        request = self._request(query.context, query.pieces, (query.sample_id, query.role))
        types = await self._batcher.submit(request)
        return first_switch(query.role, types, query.max_position)

    def next_token_types(self, context: TextView, pieces: Sequence[str]) -> list[TokenType | None]:
        """Next-token types without batching or reuse (for evaluation and one-off use)."""
        return self.predict_many([(context, pieces)])[0]

    def predict_many(
        self, items: Sequence[tuple[TextView | str, Sequence[str]]], *, batch_size: int | None = None
    ) -> list[list[TokenType | None]]:
        """Next-token types of many (context, pieces) pairs, in batches, without reuse."""
        requests = [
            self._request(ctx if isinstance(ctx, TextView) else TextView.of(ctx), pieces, None) for ctx, pieces in items
        ]
        size = batch_size or self._batcher.max_batch
        out: list[list[TokenType | None]] = []
        for i in range(0, len(requests), size):
            for result in self._process(requests[i : i + size]):
                if isinstance(result, BaseException):
                    raise result
                out.append(result)
        return out

    async def aclose(self) -> None:
        await self._batcher.aclose()
        with self._lock:
            self._states.clear()

    async def release(self, sample_id: str) -> None:
        """Drop the sample's encoded windows (every role's) at once."""
        if self._lock.acquire(blocking=False):
            try:
                self._drop(sample_id)
            finally:
                self._lock.release()
        else:  # a batch is running: wait for it off the event loop (it may store this sample's window)
            await asyncio.to_thread(self.forget, sample_id)

    def forget(self, sample_id: str) -> None:
        """Drop the cached windows of a finished sample (they are otherwise evicted oldest-first)."""
        with self._lock:
            self._drop(sample_id)

    def _drop(self, sample_id: str) -> None:
        for key in [k for k in self._states if k[0] == sample_id]:
            del self._states[key]

    @property
    def held(self) -> list[tuple[str, str]]:
        """The (sample, role) pairs whose encoded windows are kept, oldest first."""
        with self._lock:
            return list(self._states)

    # -- building requests (event loop) ---------------------------------------------------

    def _request(self, context: TextView, pieces: Sequence[str], key: tuple[str, str] | None) -> _Request:
        tail = context.tail(self.context_chars)
        base = len(context) - len(tail)
        if base > 0:
            # The tail may begin inside a word: start at the next whitespace instead.
            cut = next((i for i, ch in enumerate(tail) if ch.isspace()), len(tail))
            tail, base = tail[cut:], base + cut
        return _Request(key, tail, base, tuple(pieces))

    # -- answering a batch (worker thread) ------------------------------------------------

    def _process(self, requests: list[_Request]) -> list[list[TokenType | None] | BaseException]:
        with self._lock:
            return self._process_locked(requests)

    def _process_locked(self, requests: list[_Request]) -> list[list[TokenType | None] | BaseException]:
        results: list[list[TokenType | None] | BaseException] = [BoundaryError("not run")] * len(requests)
        plans: list[tuple[int, _Plan]] = []
        for i, request in enumerate(requests):
            try:
                plans.append((i, self._plan(request)))
            except Exception as exc:
                results[i] = BoundaryError(f"the classifier could not prepare a query: {exc}")
        if not plans:
            return results
        items = [(p.window.ids[p.kept :], p.window.past) for _, p in plans]
        want_past = self.reuse and any(p.request.key is not None for _, p in plans)
        outputs = self.model.forward(items, want_past=want_past)
        self.stats.forwards += 1
        for (i, plan), (probs, past) in zip(plans, outputs, strict=True):
            window = plan.window
            window.probs = window.probs[: plan.kept] + probs
            window.past = past
            self.stats.queries += 1
            self.stats.pieces += len(plan.request.pieces)
            self.stats.tokens_encoded += len(window.ids) - plan.kept
            if plan.reused:
                self.stats.reused += 1
            else:
                self.stats.reencoded += 1
            results[i] = self._types(window, plan.request)
            if plan.request.key is not None and self.reuse:
                self._states[plan.request.key] = window
                self._states.move_to_end(plan.request.key)
                while len(self._states) > self.max_states:
                    self._states.popitem(last=False)
        return results

    def _plan(self, request: _Request) -> _Plan:
        full = request.tail + "".join(request.pieces)
        chunk_at = len(request.tail)
        state = self._states.pop(request.key, None) if request.key is not None and self.reuse else None
        if state is not None:
            plan = self._extend(state, request, full)
            if plan is not None:
                return plan
        return self._fresh(request, full, chunk_at)

    def _extend(self, state: _Window, request: _Request, full: str) -> _Plan | None:
        """Reuse ``state`` for ``full`` if it still fits; ``None`` to re-encode instead."""
        rel = state.base - request.base
        if rel < 0 or state.past is None:
            return None
        # Character-wise on purpose: the common prefix of two strings, in C.
        same = len(os.path.commonprefix([state.text, full[rel:]]))  # noqa: RUF071
        ends = [b for _, b in state.offsets]
        n_same = bisect.bisect_right(ends, same)  # tokens wholly inside the unchanged text
        # Re-tokenize from the last word start before the change: the token before a change may
        # merge with what follows ("compu" + "ter"), a word start never does.
        k = _word_start_at_or_before(state.text, state.offsets, n_same - 1)
        if k < 1:
            return None
        boundary = state.offsets[k][0]
        new_text = full[rel + boundary :]
        ids, offsets = self.model.tokenize(new_text)
        if not ids or k + len(ids) > self.window + self.reuse_margin:
            return None
        past = self.model.crop(state.past, k)
        window = _Window(
            base=state.base,
            text=state.text[:boundary] + new_text,
            ids=state.ids[:k] + ids,
            offsets=state.offsets[:k] + [(a + boundary, b + boundary) for a, b in offsets],
            probs=state.probs[:k],
            past=past,
        )
        return _Plan(request, window, kept=k, reused=True)

    def _fresh(self, request: _Request, full: str, chunk_at: int) -> _Plan:
        ids, offsets = self.model.tokenize(full)
        if not ids:
            raise BoundaryError("the classifier's tokenizer returned no tokens for the chunk")
        starts = token_starts(full, offsets)
        # Keep the last `window` tokens, but always the one before the chunk's first token.
        first_chunk = bisect.bisect_left(starts, chunk_at)
        s = max(0, min(len(ids) - self.window, first_chunk - 1))
        s = _word_start_at_or_before(full, offsets, s, limit=_WORD_START_LOOKBACK) if s > 0 else 0
        cut = offsets[s][0]
        window = _Window(
            base=request.base + cut,
            text=full[cut:],
            ids=ids[s:],
            offsets=[(a - cut, b - cut) for a, b in offsets[s:]],
            probs=[],
            past=None,
        )
        return _Plan(request, window, kept=0, reused=False)

    def _types(self, window: _Window, request: _Request) -> list[TokenType | None]:
        starts = token_starts(window.text, window.offsets)
        pos = request.base + len(request.tail) - window.base
        self.stats.chunk_tokens += len(starts) - bisect.bisect_left(starts, pos)
        bounds: list[tuple[int, int]] = []
        for piece in request.pieces:
            bounds.append((pos, pos + len(piece)))
            pos += len(piece)
        return piece_next_types(bounds, starts, window.probs, self.threshold)


def _word_start_at_or_before(
    text: str, offsets: Sequence[tuple[int, int]], k: int, limit: int = _WORD_START_LOOKBACK
) -> int:
    """The last token index ``<= k`` (at most ``limit`` back) that begins a word: it starts with
    whitespace that follows a non-space character. ``k`` itself if none is found; 0 stays 0."""
    if k <= 0:
        return max(k, 0)
    for i in range(k, max(0, k - limit), -1):
        a = offsets[i][0]
        if 0 < a < len(text) and text[a].isspace() and not text[a - 1].isspace():
            return i
    return k


def _validate(request: _Request) -> None:
    if not request.pieces:
        raise BoundaryError("a classifier query needs at least one chunk piece")
    if not any(request.pieces):
        raise BoundaryError("a classifier query's chunk is empty text")
