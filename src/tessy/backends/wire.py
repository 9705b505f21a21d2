"""The ``/v1/completions`` wire format as tessy reads it: SSE events split back into tokens,
stop strings held back as servers hold them, what proves a stop, echoed log-probabilities,
servers' error bodies. Pure functions of what came over the wire; :mod:`.openai` does the HTTP."""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import httpx

from ..errors import BackendError
from ..text import open_stop
from ..tokenizers import FakeTokenizer, Tokenizer
from .base import FinishReason, StreamDelta, TokenScores

__all__ = [
    "TOKEN_STOP",
    "StopHold",
    "align",
    "align_counted",
    "echo_scores",
    "error_message",
    "finish_of",
    "proven_stop",
    "retry_after_of",
    "retryable",
    "sse_deltas",
    "stop_reason_of",
    "token_strings",
]

_WORDS = FakeTokenizer()  # splits text into word-level pieces when a server gives no per-token text


def retryable(message: str, *, retry_after: float | None = None) -> BackendError:
    """A failure worth another try (on this or another replica)."""
    return BackendError(message, retryable=True, retry_after=retry_after)


class StopHold:
    """Finds stop strings in a stream, as servers do: a piece that could be the start of a stop
    string is held back until the pieces after it decide (it completes one: the stream ends
    before it; it cannot: it is text). Pieces are held whole, so each keeps its token id; where
    a stop string begins inside a piece, that piece's head is yielded without an id."""

    __slots__ = ("held", "stops")

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held: list[StreamDelta] = []

    def feed(self, delta: StreamDelta) -> tuple[list[StreamDelta], str | None]:
        """The deltas that are final now, and the stop string that ended the stream, if one did."""
        if not self.stops:
            return [delta], None
        self.held.append(delta)
        text = "".join(p for d in self.held for p in d.pieces)
        hit = min(((text.find(x), x) for x in self.stops if x in text), default=None)
        if hit is not None:
            return self._before(hit[0]), hit[1]
        start = open_stop(text, self.stops)
        if start is None:
            return self.flush(), None
        # Yield the held deltas that lie wholly before where a stop string may begin.
        out: list[StreamDelta] = []
        pos = 0
        while self.held:
            size = sum(len(p) for p in self.held[0].pieces)
            if pos + size > start:
                break
            out.append(self.held.pop(0))
            pos += size
        return out, None

    def _before(self, end: int) -> list[StreamDelta]:
        out: list[StreamDelta] = []
        pos = 0
        for d in self.held:
            size = sum(len(p) for p in d.pieces)
            if pos + size <= end:
                out.append(d)
            elif pos < end:
                out.append(StreamDelta(pieces=["".join(d.pieces)[: end - pos]], token_ids=None))
            pos += size
        self.held = []
        return out

    def flush(self) -> list[StreamDelta]:
        out, self.held = self.held, []
        return out


async def sse_deltas(
    response: httpx.Response, unsplit: Callable[[int], None] | None = None
) -> AsyncGenerator[StreamDelta, None]:
    """Deltas from an OpenAI-style SSE stream (``data: {...}`` events, then ``data: [DONE]``),
    one token each.

    An event with several tokens (vLLM's ``--stream-interval`` > 1) is split back into its
    tokens by its per-token text (``logprobs.tokens``), each with its id. One that cannot be
    split (no per-token text, or text that does not match the ids) goes as one delta without
    ids, and ``unsplit(number of ids)`` is told, so that losing token-exact mode is never silent.
    The event that carries ``finish_reason`` ends the stream; where it says ``stop``, the usage
    (in that event, as llama.cpp sends it, or in a usage-only event after it, as vLLM does with
    ``include_usage``) is read first: it is what proves an end-of-sequence token.
    """
    finished: StreamDelta | None = None
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            break
        try:
            event = json.loads(payload)
            choices = event.get("choices") or []
            usage = event.get("usage") or {}
            counted = usage.get("completion_tokens")
        except (ValueError, AttributeError):
            raise BackendError(f"malformed stream event: {payload[:200]!r}", retryable=True) from None
        if finished is not None:
            if isinstance(counted, int):
                finished.completion_tokens = counted
                break
            continue
        for choice in choices[:1]:
            text = choice.get("text") or ""
            ids = choice.get("token_ids")
            ids = ids if isinstance(ids, list) and all(isinstance(i, int) for i in ids) else None
            tokens = token_strings(choice.get("logprobs"))
            if ids is not None and len(ids) > 1 and tokens is not None and len(tokens) == len(ids):
                if choice.get("finish_reason") == "stop" and "".join(tokens[:-1]) == text:
                    tokens, ids = tokens[:-1], ids[:-1]  # the end-of-sequence token, which has no text
                if "".join(tokens) == text:
                    for tok, tid in zip(tokens, ids, strict=True):
                        yield StreamDelta(pieces=[tok], token_ids=[tid])
                    text = ""
            if text:
                if ids is not None and len(ids) > 1:
                    if unsplit is not None:
                        unsplit(len(ids))
                    yield StreamDelta(pieces=[text], token_ids=None)
                else:
                    yield StreamDelta(pieces=[text], token_ids=ids if ids is not None and len(ids) == 1 else None)
            if choice.get("finish_reason") is not None:
                reason = stop_reason_of(choice)
                finished = StreamDelta(
                    pieces=[],
                    finish_reason=finish_of(choice["finish_reason"]),
                    stop_reason=reason if isinstance(reason, str) else None,
                    completion_tokens=counted if isinstance(counted, int) else None,
                )
                if isinstance(reason, int) and not isinstance(reason, bool):
                    finished.completion_tokens = None
                    finished.stop_reason = None
                    yield StreamDelta(pieces=[], finish_reason=finished.finish_reason, stop_reason=TOKEN_STOP)
                    return
                if finished.finish_reason == "length" or finished.completion_tokens is not None:
                    yield finished
                    return
    if finished is not None:
        yield finished


#: A stream's stop reason when the server stopped at one of the request's stop token ids.
TOKEN_STOP = "<stop token>"


def stop_reason_of(choice: dict[str, Any]) -> object:
    """What stopped a completion: vLLM's ``stop_reason`` or SGLang's ``matched_stop`` (a stop
    string, a stop token id, or ``None`` for the end-of-sequence token)."""
    reason = choice.get("stop_reason")
    return reason if reason is not None else choice.get("matched_stop")


def proven_stop(reason: object, completion_tokens: object, text_tokens: int, stops: Sequence[str]) -> bool:
    """Whether the server proved that a completion it says "stop" for really ended: it names one
    of the request's stop strings or a stop token id, or it counts more tokens than the text
    holds (the end-of-sequence token, or a stop string's tokens, which have no text).
    ``text_tokens`` is a lower bound on the tokens of the text (so a real end is never doubted)."""
    if isinstance(reason, str):
        return reason in stops or reason == TOKEN_STOP
    if isinstance(reason, int) and not isinstance(reason, bool):
        return True
    return (
        isinstance(completion_tokens, int)
        and not isinstance(completion_tokens, bool)
        and completion_tokens > text_tokens
    )


def finish_of(value: object) -> FinishReason:
    return "length" if value == "length" else "stop"


def error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", errors="replace").strip()
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)[:500]
    return str(err)[:500]


def retry_after_of(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def token_strings(logprobs: object) -> list[str] | None:
    """Per-token text from a completions ``logprobs`` object (legacy or llama.cpp form)."""
    if not isinstance(logprobs, dict):
        return None
    tokens = logprobs.get("tokens")
    if isinstance(tokens, list):
        return [t for t in tokens if isinstance(t, str)]
    content = logprobs.get("content")
    if isinstance(content, list):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out: list[str] = []
        for entry in content:
            if not isinstance(entry, dict):
                continue
            raw = entry.get("bytes")
            out.append(decoder.decode(bytes(raw)) if isinstance(raw, list) else str(entry.get("token", "")))
        return out
    return None


def echo_scores(logprobs: object, start: int, end: int, *, where: str) -> TokenScores:
    """The scores of the echoed tokens that lie in ``[start, end)`` of the echoed text, from a
    legacy completions ``logprobs`` object (``tokens``, ``token_logprobs``, ``text_offset``;
    offsets are summed from the token texts where a server leaves them out)."""
    fields = logprobs if isinstance(logprobs, dict) else {}
    tokens, values = fields.get("tokens"), fields.get("token_logprobs")
    if not (isinstance(tokens, list) and isinstance(values, list) and len(tokens) == len(values)):
        raise BackendError(
            f"{where} returned no log-probabilities of the prompt's tokens (echo with logprobs); "
            "score with an in-process model instead (tessy report --score-model MODEL)",
            retryable=False,
        )
    offsets = fields.get("text_offset")
    if not (isinstance(offsets, list) and len(offsets) == len(tokens)):
        offsets, pos = [], 0
        for tok in tokens:
            offsets.append(pos)
            pos += len(tok) if isinstance(tok, str) else 0
    last = tokens[-1] if tokens else None
    if not isinstance(last, str) or offsets[-1] + len(last) < end:
        # The prompt was echoed in part only (cut to the context, or not echoed at all).
        raise BackendError(
            f"{where} did not echo the whole prompt with log-probabilities (does it take echo with "
            "logprobs?); score with an in-process model instead (tessy report --score-model MODEL)",
            retryable=False,
        )
    pieces: list[str] = []
    scores: list[float] = []
    spans: list[tuple[int, int]] = []
    for tok, value, offset in zip(tokens, values, offsets, strict=True):
        if offset < start or offset >= end or not isinstance(value, (int, float)):
            continue  # the prompt, the seam, the generated token, or no prediction (the first)
        pieces.append(str(tok))
        scores.append(float(value))
        spans.append((offset - start, min(offset + len(str(tok)), end) - start))
    return TokenScores(pieces, scores, truncated=False, offsets=spans)


def align(text: str, tokens: list[str] | None, tokenizer: Tokenizer | None) -> list[str]:
    """Pieces that concatenate exactly to ``text``: the server's per-token text as far as it
    agrees with the text, then the rest split by the tokenizer (or into words)."""
    return align_counted(text, tokens, tokenizer)[0]


def align_counted(text: str, tokens: list[str] | None, tokenizer: Tokenizer | None) -> tuple[list[str], int]:
    """:func:`align`, and a lower bound on the tokens that wrote ``text``: the server's tokens
    used, or one where none were (the pieces split here may be more than the tokens)."""
    pieces: list[str] = []
    pos = 0
    used = 0
    for tok in tokens or ():
        if not tok:
            continue
        if text.startswith(tok, pos):
            pieces.append(tok)
            pos += len(tok)
            used += 1
        elif tok.startswith(text[pos:]) and pos < len(text):
            pieces.append(text[pos:])  # a stop string cut this token short
            pos = len(text)
            used += 1
            break
        else:
            break
    if pos < len(text):
        rest = text[pos:]
        pieces.extend(tokenizer.pieces(rest) if tokenizer is not None else _WORDS.pieces(rest))
        used += 1
    return pieces, used
