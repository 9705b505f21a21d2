"""Windows, annotated spans and per-token labels: the definitions shared by annotate, train and eval.

**Windows.** A trace is cut into windows of about ``words`` whitespace-separated words; a window
runs from its first word's first character to its last word's last character, and its offsets
in the trace are recorded.

**Token type from annotated spans.** Annotations are character spans of *style* text. A token
(with its character span from the tokenizer) is:

- *style* when it has letters or digits and more than half of them lie inside style spans;
- *capability* when it has letters or digits and half or fewer lie inside;
- otherwise (punctuation, whitespace) of the type of the token before it (capability for the
  first), as in the lexicon predictor: ``"Okay,"`` is style throughout whether or not the
  judge included the comma, and the ``"."`` that ends a formula stays with the formula.

**Next-token labels.** The label at position ``j`` is the type of token ``j + 1`` (1 = style,
0 = capability), as the predictors are defined; it is given only where token ``j + 1`` lies in
the annotated window (its first non-space character at or after the window's start); elsewhere,
and at the last position, it is ``-100`` (ignored).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..boundary.base import TokenType
from ..boundary.classifier import token_starts
from ..errors import DataError

__all__ = [
    "IGNORE",
    "AnnotatedWindow",
    "Window",
    "cut_windows",
    "next_token_labels",
    "token_types",
]

#: The label of positions that do not count (PyTorch's ``ignore_index``).
IGNORE = -100

_WORD = re.compile(r"\S+")
_ALNUM = re.compile(r"[^\W_]")


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of a trace: ``text == trace[start:end]``."""

    index: int
    start: int
    end: int
    text: str


def cut_windows(text: str, words: int = 60) -> list[Window]:
    """Cut ``text`` into windows of ``words`` words (the last may be shorter), on whitespace."""
    if words < 1:
        raise ValueError("a window needs at least one word")
    spans = [m.span() for m in _WORD.finditer(text)]
    out: list[Window] = []
    for i in range(0, len(spans), words):
        group = spans[i : i + words]
        start, end = group[0][0], group[-1][1]
        out.append(Window(len(out), start, end, text[start:end]))
    return out


@dataclass(frozen=True, slots=True)
class AnnotatedWindow:
    """A window with its style spans (character offsets in ``window_text``) and the trace text
    before it (``context``, its tail only)."""

    trace_id: str
    role: str
    window_index: int
    context: str
    window_text: str
    spans: tuple[tuple[int, int], ...]

    @property
    def text(self) -> str:
        """The context followed by the window, as a predictor reads it."""
        return self.context + self.window_text

    @property
    def offset(self) -> int:
        """Where the window starts in :attr:`text`."""
        return len(self.context)

    def text_spans(self) -> list[tuple[int, int]]:
        """The style spans in :attr:`text` coordinates."""
        return [(a + self.offset, b + self.offset) for a, b in self.spans]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AnnotatedWindow:
        try:
            text = record["window_text"]
            spans = tuple((int(a), int(b)) for a, b in record["spans"])
            window = cls(
                trace_id=str(record["trace_id"]),
                role=str(record.get("role", "")),
                window_index=int(record.get("window_index", 0)),
                context=str(record.get("context", "")),
                window_text=str(text),
                spans=spans,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not an annotated window record ({exc!r}): {str(record)[:200]}") from exc
        for a, b in spans:
            if not 0 <= a < b <= len(window.window_text):
                raise DataError(f"span {[a, b]} lies outside window {window.trace_id}#{window.window_index}")
        return window


def token_types(text: str, offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[TokenType]:
    """The type of each token of ``text`` given its style ``spans`` (see the module docstring)."""
    inside = bytearray(len(text))
    for a, b in spans:
        a, b = max(a, 0), min(b, len(text))
        if a < b:
            inside[a:b] = b"\x01" * (b - a)
    types: list[TokenType] = []
    prev = TokenType.CAPABILITY
    for a, b in offsets:
        alnum = [i for i in range(a, b) if _ALNUM.match(text[i])]
        if alnum:
            styled = sum(inside[i] for i in alnum)
            prev = TokenType.STYLE if 2 * styled > len(alnum) else TokenType.CAPABILITY
        types.append(prev)
    return types


def first_labelled(text: str, offsets: Sequence[tuple[int, int]], window_start: int) -> int:
    """The index of the first token that lies in the window (first non-space char at or after its start)."""
    starts = token_starts(text, offsets)
    for i, s in enumerate(starts):
        if s >= window_start:
            return i
    return len(starts)


def next_token_labels(types: Sequence[TokenType], first: int) -> list[int]:
    """Per-position labels: the type of the next token where it is token ``first`` or later."""
    n = len(types)
    labels = [IGNORE] * n
    for j in range(max(first - 1, 0), n - 1):
        labels[j] = int(types[j + 1])
    return labels
