"""The tokenizer interface tessy needs, and a tiny deterministic tokenizer for tests and fakes."""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

__all__ = ["FakeTokenizer", "Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """What tessy asks of a tokenizer: lossless pieces, and ids where a backend wants them."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def pieces(self, text: str) -> list[str]:
        """Split ``text`` into token strings whose concatenation is exactly ``text``."""
        ...


# Special tags (`</think>`, `<|im_end|>`), then a word with an optional leading space and an
# optional leading punctuation mark (` so`, `-check`), then a lone punctuation mark with an
# optional leading space, then a run of whitespace. Every character matches one of these,
# so the pieces always concatenate back to the input.
_FAKE_TOKEN = re.compile(r"</?[A-Za-z_|][^<>\s]*>|[ ]?[^\w\s]?\w+|[ ]?[^\w\s]|\s+")


class FakeTokenizer:
    """A word-level tokenizer with a vocabulary that grows as it sees new pieces.

    ``"Okay, so I need"`` becomes ``["Okay", ",", " so", " I", " need"]``. Ids are assigned
    in order of first appearance, so they are stable within one instance.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []

    def pieces(self, text: str) -> list[str]:
        return _FAKE_TOKEN.findall(text)

    def encode(self, text: str) -> list[int]:
        return [self._id(p) for p in self.pieces(text)]

    def decode(self, ids: list[int]) -> str:
        return "".join(self._pieces[i] for i in ids)

    def _id(self, piece: str) -> int:
        found = self._ids.get(piece)
        if found is None:
            found = self._ids[piece] = len(self._pieces)
            self._pieces.append(piece)
        return found
