"""The ``/v1/completions`` wire format as tessy reads it: SSE events split back into tokens,
stop strings held back as servers hold them, what proves a stop, echoed log-probabilities,
servers' error bodies. Pure functions of what came over the wire; :mod:`.openai` does the HTTP."""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from contextlib import aclosing
from typing import Any, TypeAlias

import httpx
import orjson

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
    "loads",
    "merge_deltas",
    "prompt_usage",
    "proven_stop",
    "retry_after_of",
    "retryable",
    "sse_batches",
    "sse_deltas",
    "stop_reason_of",
    "token_strings",
]

logger = logging.getLogger(__name__)

#: A stream's body: an httpx response, or its bytes as they are read (see :mod:`.http1`).
Body: TypeAlias = httpx.Response | AsyncIterable[bytes]

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
                # Whole pieces before the stop string keep their ids; the piece it begins in
                # keeps its head, without an id.
                whole = 0
                while pos + len(d.pieces[whole]) <= end:
                    pos += len(d.pieces[whole])
                    whole += 1
                if whole:
                    ids = d.token_ids[:whole] if d.token_ids is not None else None
                    out.append(StreamDelta(pieces=d.pieces[:whole], token_ids=ids))
                if end > pos:
                    out.append(StreamDelta(pieces=[d.pieces[whole][: end - pos]], token_ids=None))
                break
            pos += size
        self.held = []
        return out

    def flush(self) -> list[StreamDelta]:
        out, self.held = self.held, []
        return out


async def sse_deltas(response: Body, unsplit: Callable[[int], None] | None = None) -> AsyncGenerator[StreamDelta, None]:
    """Deltas from an OpenAI-style SSE stream (``data: {...}`` events, then ``data: [DONE]``),
    one token each: :func:`sse_batches`, one delta at a time."""
    async for batch in sse_batches(response, unsplit):
        for delta in batch:
            yield delta


async def sse_batches(
    response: Body, unsplit: Callable[[int], None] | None = None
) -> AsyncGenerator[list[StreamDelta], None]:
    """Deltas from an OpenAI-style SSE stream (``data: {...}`` events, then ``data: [DONE]``),
    one token each, in a list per network read (so a client that reads late can take a burst
    of events at once; see :func:`merge_deltas`).

    An event with several tokens (vLLM's ``--stream-interval`` > 1) is split back into its
    tokens by its per-token text (``logprobs.tokens``), each with its id. One that cannot be
    split (no per-token text, or text that does not match the ids) goes as one delta without
    ids, and ``unsplit(number of ids)`` is told, so that losing token-exact mode is never silent.
    The event that carries ``finish_reason`` ends the stream; where it says ``stop``, the usage
    (in that event, as llama.cpp sends it, or in a usage-only event after it, as vLLM does with
    ``include_usage``) is read first: it is what proves an end-of-sequence token.
    """
    finished: StreamDelta | None = None
    # Closed here, not left to the garbage collector (which would start a task to close it).
    async with aclosing(_data_batches(response)) as batches:
        async for payloads in batches:
            out: list[StreamDelta] = []
            for payload in payloads:
                if payload == b"[DONE]":
                    if finished is not None:
                        out.append(finished)
                    yield out
                    return
                try:
                    event = loads(payload)
                    choices = event.get("choices") or []
                    usage = event.get("usage") or {}
                    counted = usage.get("completion_tokens")
                except (ValueError, AttributeError):
                    if out:
                        yield out  # what came before the malformed event, as it came
                    shown = payload[:200].decode("utf-8", "replace")
                    raise BackendError(f"malformed stream event: {shown!r}", retryable=True) from None
                if finished is not None:
                    if isinstance(counted, int):
                        finished.completion_tokens = counted
                        finished.prompt_tokens, finished.cached_tokens = prompt_usage(usage)
                        out.append(finished)
                        yield out
                        return
                    continue
                for choice in choices[:1]:
                    text = choice.get("text") or ""
                    ids = choice.get("token_ids")
                    ids = ids if isinstance(ids, list) and all(isinstance(i, int) for i in ids) else None
                    tokens = token_strings(choice.get("logprobs")) if ids is not None and len(ids) > 1 else None
                    if ids is not None and tokens is not None and len(tokens) == len(ids):
                        if choice.get("finish_reason") == "stop" and "".join(tokens[:-1]) == text:
                            tokens, ids = tokens[:-1], ids[:-1]  # the end-of-sequence token, which has no text
                        if "".join(tokens) == text:
                            out.extend(
                                StreamDelta(pieces=[tok], token_ids=[tid]) for tok, tid in zip(tokens, ids, strict=True)
                            )
                            text = ""
                    if text:
                        if ids is not None and len(ids) > 1:
                            if unsplit is not None:
                                unsplit(len(ids))
                            out.append(StreamDelta(pieces=[text], token_ids=None))
                        else:
                            out.append(
                                StreamDelta(pieces=[text], token_ids=ids if ids is not None and len(ids) == 1 else None)
                            )
                    if choice.get("finish_reason") is not None:
                        reason = stop_reason_of(choice)
                        finished = StreamDelta(
                            pieces=[],
                            finish_reason=finish_of(choice["finish_reason"]),
                            stop_reason=reason if isinstance(reason, str) else None,
                            completion_tokens=counted if isinstance(counted, int) else None,
                        )
                        finished.prompt_tokens, finished.cached_tokens = prompt_usage(usage)
                        if isinstance(reason, int) and not isinstance(reason, bool):
                            out.append(
                                StreamDelta(pieces=[], finish_reason=finished.finish_reason, stop_reason=TOKEN_STOP)
                            )
                            yield out
                            return
                        if finished.finish_reason == "length" or finished.completion_tokens is not None:
                            out.append(finished)
                            yield out
                            return
            if out:
                yield out
        if finished is not None:
            yield [finished]


def merge_deltas(batch: Sequence[StreamDelta]) -> list[StreamDelta]:
    """Consecutive token deltas as one delta with all their pieces (and all their ids, where
    each has its ids; pieces with ids and pieces without stay apart, so no id is lost); a delta
    that ends the stream stays as it is."""
    out: list[StreamDelta] = []
    acc: StreamDelta | None = None
    for d in batch:
        if not d.pieces or d.finish_reason is not None:
            acc = None
            out.append(d)
        elif acc is not None and (acc.token_ids is None) == (d.token_ids is None):
            acc.pieces.extend(d.pieces)
            if acc.token_ids is not None and d.token_ids is not None:
                acc.token_ids.extend(d.token_ids)
        else:
            acc = StreamDelta(pieces=list(d.pieces), token_ids=_copy(d.token_ids))
            out.append(acc)
    return out


def _copy(ids: list[int] | None) -> list[int] | None:
    return list(ids) if ids is not None else None


async def _data_batches(response: Body) -> AsyncGenerator[list[bytes], None]:
    """The payloads of an SSE stream's ``data:`` lines (as bytes, stripped), a list per read.

    Lines end in ``\n``, ``\r\n`` or a lone ``\r`` (all three are SSE line ends); bytes are
    split as they come, with no text decoding: JSON is parsed from the bytes."""
    buffer = b""
    reads = response.aiter_bytes() if isinstance(response, httpx.Response) else response
    async for data in reads:
        buffer = buffer + data if buffer else data
        if b"\r" in buffer:
            # A lone CR may be the first half of a CRLF that the next read completes.
            if buffer.endswith(b"\r"):
                continue
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in buffer:
            continue
        *lines, buffer = buffer.split(b"\n")
        batch = [line[5:].strip() for line in lines if line.startswith(b"data:")]
        if batch:
            yield batch
    lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    batch = [line[5:].strip() for line in lines if line.startswith(b"data:")]
    if batch:
        yield batch


def loads(data: bytes | str) -> Any:
    """JSON from the wire: orjson, and the standard parser for what orjson refuses but Python
    reads (``NaN``, ``Infinity``), so that a faster parser never turns a body into a fault."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def prompt_usage(usage: Any) -> tuple[int | None, int | None]:
    """A usage object's prompt tokens and, where the server reports them (vLLM with
    ``--enable-prompt-tokens-details``, SGLang, llama.cpp), those its prefix cache served;
    ``None`` for anything missing or not a count."""
    if not isinstance(usage, dict):
        return None, None
    prompt = usage.get("prompt_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return _count(prompt), _count(cached)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


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


def echo_scores(logprobs: object, start: int, end: int, *, where: str, top_k: int = 0) -> TokenScores:
    """The scores of the echoed tokens that lie in ``[start, end)`` of the echoed text, from a
    legacy completions ``logprobs`` object (``tokens``, ``token_logprobs``, ``text_offset``;
    offsets are summed from the token texts where a server leaves them out).

    With ``top_k``, each token is ranked from its position's ``top_logprobs`` (the top ``top_k``
    alternatives, the token itself perhaps added): one plus the alternatives scored strictly
    higher, or ``top_k + 1`` (censored: beyond the top ``top_k``) when ``top_k`` of them are.
    A server that sends no ``top_logprobs`` for a scored token gives no ranks at all."""
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
    tops = fields.get("top_logprobs") if top_k > 0 else None
    ranks: list[int] | None = [] if isinstance(tops, list) and len(tops) == len(tokens) else None
    pieces: list[str] = []
    scores: list[float] = []
    spans: list[tuple[int, int]] = []
    for i, (tok, value, offset) in enumerate(zip(tokens, values, offsets, strict=True)):
        if offset < start or offset >= end or not isinstance(value, (int, float)):
            continue  # the prompt, the seam, the generated token, or no prediction (the first)
        pieces.append(str(tok))
        scores.append(float(value))
        spans.append((offset - start, min(offset + len(str(tok)), end) - start))
        if ranks is not None:
            top = tops[i] if tops is not None else None
            if not isinstance(top, dict):
                ranks = None
                continue
            higher = sum(1 for v in top.values() if isinstance(v, (int, float)) and v > value)
            ranks.append(min(higher, top_k) + 1)
    if top_k > 0 and ranks is None:
        logger.warning("%s returned no top_logprobs of the prompt's tokens: no ranks", where)
    return TokenScores(
        pieces,
        scores,
        truncated=False,
        ranks=ranks,
        rank_limit=top_k if ranks is not None else None,
        offsets=spans,
    )


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
