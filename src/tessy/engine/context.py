"""Prompt bookkeeping: each role's prompt, the spans kept, and the token-level helpers.

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

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from ..backends.base import Generation, Prompt
from ..formats import Format
from ..records import Phase, Source, Span
from ..text import TextBuffer, TextView, TokenView, open_stop
from ..tokenizers import Tokenizer

__all__ = [
    "Chunk",
    "RoleContext",
    "SpanBuilder",
    "extends",
    "first_boundary",
    "open_tail",
    "tail_of",
    "thinking_part",
    "trim_at",
    "word_end",
]


@dataclass(slots=True)
class Chunk:
    """Generated pieces, with the ids of ``pieces[:len(ids)]`` where the backend returned ids
    (the pieces past them, a piece cut inside its token, have none)."""

    pieces: list[str]
    ids: list[int] | None = None

    @classmethod
    def of(cls, gen: Generation) -> Chunk:
        ids = gen.token_ids
        return cls(list(gen.pieces), list(ids[: len(gen.pieces)]) if ids is not None else None)

    def head(self, n: int) -> Chunk:
        return Chunk(self.pieces[:n], self.ids[:n] if self.ids is not None else None)

    def __len__(self) -> int:
        return len(self.pieces)


class RoleContext:
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

    def append_own(self, chunk: Chunk) -> None:
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


class SpanBuilder:
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


def tail_of(pieces: Sequence[str], end: int, n_chars: int) -> str:
    """The last ``n_chars`` characters of ``"".join(pieces[:end])``, without joining them all."""
    # Pieces hold a character or more, but for empty ones: the last n_chars pieces mostly do.
    text = "".join(pieces[max(0, end - n_chars) : end])
    if len(text) >= n_chars or end <= n_chars:
        return text[-n_chars:] if len(text) > n_chars else text
    out: list[str] = []
    need = n_chars
    i = end - 1
    while i >= 0 and need > 0:
        out.append(pieces[i])
        need -= len(pieces[i])
        i -= 1
    text = "".join(reversed(out))
    return text[-n_chars:] if len(text) > n_chars else text


def extends(prompt: Prompt, previous: Prompt) -> bool:
    """Whether ``prompt`` begins with all of ``previous`` (as token ids where both have them)."""
    if prompt.token_ids is not None and previous.token_ids is not None:
        ids = prompt.token_ids
        if isinstance(ids, TokenView):
            return ids.startswith(previous.token_ids)
        n = len(previous.token_ids)
        return n <= len(ids) and list(ids[:n]) == list(previous.token_ids)
    return prompt.view.startswith(previous.view)


def thinking_part(fmt: Format, gen: Generation) -> tuple[Chunk, bool, int]:
    """The part of a chunk that belongs to the thinking, whether thinking ended, and how many
    pieces were generated for nothing: those after the end-of-thinking marker, or, where the
    chunk stopped at its token limit, those at its end that may be the start of the marker
    (the next request, from the text kept, decides; none of the marker is ever kept)."""
    chunk = Chunk.of(gen)
    hit = fmt.find_think_end(gen.text) if fmt.think_stop else None
    if hit is not None:
        kept, after, whole = trim_at(chunk.pieces, hit[0], hit[1])
        return Chunk(kept, chunk.ids[:whole] if chunk.ids is not None else None), True, after
    if gen.finish_reason == "length":
        held = open_tail(chunk.pieces, fmt.think_stop)
        if held:
            return chunk.head(len(chunk) - held), False, held
    return chunk, gen.finish_reason == "stop", 0


def open_tail(pieces: Sequence[str], stops: Sequence[str]) -> int:
    """How many pieces at the end of ``pieces`` hold the start of one of ``stops``: text that
    the next tokens may complete into a stop string (0 when there is none)."""
    if not stops or not pieces:
        return 0
    text = tail_of(pieces, len(pieces), max(len(x) for x in stops))
    start = open_stop(text, stops)
    if start is None:
        return 0
    need = len(text) - start
    n = 0
    while need > 0 and n < len(pieces):
        n += 1
        need -= len(pieces[-n])
    return n


def trim_at(pieces: Sequence[str], start: int, end: int) -> tuple[list[str], int, int]:
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


def word_end(pieces: Sequence[str], cut: int) -> int | None:
    """The last piece to keep when cutting after ``cut`` without splitting a word, or ``None``
    when the word runs on past the end of ``pieces``."""
    for j in range(cut, len(pieces)):
        if pieces[j][-1:].isspace():
            return j
        if j + 1 < len(pieces) and pieces[j + 1][:1].isspace():
            return j
    return None


def first_boundary(pieces: Sequence[str]) -> int | None:
    """How many leading pieces finish the current word, or ``None`` if no word boundary is seen."""
    for i, piece in enumerate(pieces):
        if piece[:1].isspace():
            return i
        if piece[-1:].isspace():
            return i + 1
    return None
