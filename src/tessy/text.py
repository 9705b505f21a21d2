"""Append-only text with O(1) snapshots.

A response grows by small chunks while every request needs "the text so far". Joining the
whole text at every step would make each step cost O(length of the response); instead a
:class:`TextBuffer` keeps the appended parts and hands out :class:`TextView` snapshots that
cost O(1) to take. Only a consumer that really needs the whole string (an HTTP backend that
must send it) pays for joining it, and the join is cached so repeated use stays cheap.
"""

from __future__ import annotations

__all__ = ["TextBuffer", "TextView"]


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

    def extended(self, suffix: str) -> TextView:
        """This view followed by ``suffix`` (meant for short suffixes: it is copied)."""
        if not suffix:
            return self
        base_len = self._length - len(self._suffix)
        return TextView(self._buffer, self._n_parts, base_len, self._suffix + suffix)
