"""Append-only text and token ids with O(1) snapshots.

A response grows by small chunks while every request needs "the text so far". Joining the
whole text at every step would make each step cost O(length of the response); instead a
:class:`TextBuffer` keeps the appended parts and hands out :class:`TextView` snapshots that
cost O(1) to take. Only a consumer that really needs the whole string (an HTTP backend that
must send it) pays for joining it, and the join is cached so repeated use stays cheap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

__all__ = ["TextBuffer", "TextView", "TokenView", "open_stop"]


class TextBuffer:
    """Text that only grows at the end."""

    __slots__ = ("_joined", "_joined_parts", "_length", "_parts")

    def __init__(self, initial: str = "") -> None:
        self._parts: list[str] = []
        self._length = 0
        # Cache of "".join(self._parts[:self._joined_parts]).
        self._joined = ""
        self._joined_parts = 0
        if initial:
            self.append(initial)

    def append(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self._length += len(text)

    def __len__(self) -> int:
        return self._length

    def view(self) -> TextView:
        """A snapshot of the text as it is now; later appends do not change it."""
        return TextView(self, len(self._parts), self._length)

    def text(self) -> str:
        return self._materialize(len(self._parts))

    def tail(self, n_chars: int) -> str:
        return self._tail(len(self._parts), n_chars)

    def _materialize(self, n_parts: int) -> str:
        if n_parts == self._joined_parts:
            return self._joined
        if n_parts > self._joined_parts:
            joined = self._joined + "".join(self._parts[self._joined_parts : n_parts])
            self._joined, self._joined_parts = joined, n_parts
            return joined
        return "".join(self._parts[:n_parts])

    def _tail(self, n_parts: int, n_chars: int) -> str:
        if n_chars <= 0:
            return ""
        pieces: list[str] = []
        need = n_chars
        i = n_parts - 1
        while i >= 0 and need > 0:
            part = self._parts[i]
            pieces.append(part if len(part) <= need else part[-need:])
            need -= len(part)
            i -= 1
        pieces.reverse()
        return "".join(pieces)


class TextView:
    """An immutable snapshot of a :class:`TextBuffer`, optionally extended by a short suffix."""

    __slots__ = ("_buffer", "_length", "_n_parts", "_suffix")

    def __init__(self, buffer: TextBuffer, n_parts: int, length: int, suffix: str = "") -> None:
        self._buffer = buffer
        self._n_parts = n_parts
        self._length = length + len(suffix)
        self._suffix = suffix

    @classmethod
    def of(cls, text: str) -> TextView:
        """A view of a plain string (for tests and one-off callers)."""
        return TextBuffer(text).view()

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"TextView({self._length} chars, ends {self.tail(40)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TextView):
            return self.text == other.text
        if isinstance(other, str):
            return self.text == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.text)

    @property
    def text(self) -> str:
        """The whole text (O(length) the first time; cached in the buffer)."""
        base = self._buffer._materialize(self._n_parts)
        return base + self._suffix if self._suffix else base

    def tail(self, n_chars: int) -> str:
        """The last ``n_chars`` characters, in time that does not grow with the whole text."""
        if n_chars <= 0:
            return ""
        if len(self._suffix) >= n_chars:
            return self._suffix[-n_chars:]
        return self._buffer._tail(self._n_parts, n_chars - len(self._suffix)) + self._suffix

    def endswith(self, text: str) -> bool:
        return self.tail(len(text)) == text

    def startswith(self, other: TextView) -> bool:
        """Whether this text begins with ``other`` (O(1) for two snapshots of one buffer)."""
        if other._buffer is self._buffer and not other._suffix and other._n_parts <= self._n_parts:
            return True
        return len(other) <= len(self) and self.text.startswith(other.text)

    def extended(self, suffix: str) -> TextView:
        """This view followed by ``suffix`` (meant for short suffixes: it is copied)."""
        if not suffix:
            return self
        base_len = self._length - len(self._suffix)
        return TextView(self._buffer, self._n_parts, base_len, self._suffix + suffix)


class TokenView(Sequence[int]):
    """An immutable snapshot of the first ids of a list that only grows at the end.

    Taking one costs O(1); so does asking whether one snapshot extends another of the same list.
    """

    __slots__ = ("_ids", "_n")

    def __init__(self, ids: list[int], n: int | None = None) -> None:
        self._ids = ids
        self._n = len(ids) if n is None else n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> list[int]: ...

    def __getitem__(self, index: int | slice) -> int | list[int]:
        if isinstance(index, slice):
            return self._ids[: self._n][index]
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError("token index out of range")
        return self._ids[index]

    def __iter__(self) -> Iterator[int]:
        ids, n = self._ids, self._n
        return (ids[i] for i in range(n))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TokenView):
            return self.tolist() == other.tolist()
        if isinstance(other, list):
            return self.tolist() == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self.tolist()))

    def __repr__(self) -> str:
        return f"TokenView({self._n} ids, ends {self._ids[max(0, self._n - 8) : self._n]})"

    def tolist(self) -> list[int]:
        return self._ids[: self._n]

    def startswith(self, other: Sequence[int]) -> bool:
        """Whether these ids begin with ``other`` (O(1) for two snapshots of one list)."""
        if isinstance(other, TokenView) and other._ids is self._ids:
            return other._n <= self._n
        n = len(other)
        return n <= self._n and self._ids[:n] == list(other)


def open_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the longest end of ``text`` that is the start of one of ``stops`` (but not all of
    it) begins, or ``None``: the text from there may yet become a stop string, or may not."""
    longest = max((len(x) for x in stops), default=0)
    lowest = max(0, len(text) - longest + 1)
    found: int | None = None
    # Such an end begins with a stop string's first character: look only where one is.
    for first in {x[0] for x in stops if x}:
        start = text.find(first, lowest)
        while start >= 0 and (found is None or start < found):
            tail = text[start:]
            if any(len(x) > len(tail) and x.startswith(tail) for x in stops):
                found = start
                break
            start = text.find(first, start + 1)
    return found
