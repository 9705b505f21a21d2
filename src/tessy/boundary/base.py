"""The boundary-predictor interface.

A boundary predictor answers one question for the engine: in this chunk just written by the
active role, where is the first position whose *next* token belongs to the other role's type?
Student chunks look for the first next-token that is capability text; teacher chunks for the
first next-token that is style text. The answer is an index ``j`` into the chunk's tokens
("keep tokens 0..j, then switch"), so the chunk's first token is always kept.

Predictors are *next-token-type* predictors, as the authors' released classifiers are: the
label at position ``j`` is the type of token ``j + 1`` (1 = style, 0 = capability).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from ..records import Source
from ..text import TextView

__all__ = [
    "BoundaryPredictor",
    "CutQuery",
    "NextTokenTypePredictor",
    "TokenType",
    "first_switch",
]


class TokenType(IntEnum):
    CAPABILITY = 0
    STYLE = 1


#: The token type each role writes; a role's chunk is cut before the first token of the other type.
ROLE_TYPE: dict[Source, TokenType] = {"student": TokenType.STYLE, "teacher": TokenType.CAPABILITY}


@dataclass(frozen=True, slots=True)
class CutQuery:
    """One question to a predictor.

    ``context`` is the shared thinking text before the chunk (a view: ask it for ``tail(n)``,
    never for the whole text); ``pieces`` are the chunk's tokens as strings, in the active role's
    tokenizer. ``last`` is the highest position a cut may be placed at (defaults to the last piece).
    """

    role: Source
    context: TextView
    pieces: Sequence[str]
    sample_id: str = ""
    last: int | None = None

    @property
    def max_position(self) -> int:
        return len(self.pieces) - 1 if self.last is None else min(self.last, len(self.pieces) - 1)


def first_switch(role: Source, next_types: Sequence[TokenType | None], last: int) -> int | None:
    """The first position ``j <= last`` whose next token is of the other role's type."""
    own = ROLE_TYPE[role]
    for j in range(min(last + 1, len(next_types))):
        t = next_types[j]
        if t is not None and t != own:
            return j
    return None


class BoundaryPredictor(ABC):
    """Finds where the active role should hand over to the other."""

    #: How many tokens past ``j + 1`` must have been seen before a cut at ``j`` is final.
    #: The streaming loop waits for them; a causal classifier needs none (its label at ``j``
    #: depends on tokens up to ``j`` only), a lexicon needs enough to finish a phrase.
    lookahead: int = 0
    #: How many characters of context before the chunk the predictor reads (at most).
    context_chars: int = 2048

    @abstractmethod
    async def find_cut(self, query: CutQuery) -> int | None:
        """The position to cut after (``0 <= j <= query.max_position``), or ``None``."""

    def settled(self, context: TextView, pieces: Sequence[str]) -> int:
        """How many leading pieces have a type that text still to come cannot change.

        The streaming loop takes a cut at ``j`` as final once piece ``j + 1`` is settled. By
        default all pieces are, but the last ``lookahead``; a predictor that can tell better
        (the lexicon knows when no phrase can still be under way) makes streams stop sooner.
        """
        return max(0, len(pieces) - self.lookahead)

    async def release(self, sample_id: str) -> None:
        """The sample ``sample_id`` is over: drop what is kept for it (encoded windows, caches).
        Must not raise; an unknown sample is a no-op, and so is this default (a predictor that
        keeps nothing per sample). :meth:`tessy.engine.Role.session` calls it."""

    async def aclose(self) -> None:
        """Release what the predictor holds (models, worker tasks)."""


class NextTokenTypePredictor(BoundaryPredictor):
    """A predictor defined by its per-position next-token types."""

    @abstractmethod
    def next_token_types(self, context: TextView, pieces: Sequence[str]) -> list[TokenType | None]:
        """For each position ``j`` of the chunk, the type of token ``j + 1`` (``None``: unknown)."""

    async def find_cut(self, query: CutQuery) -> int | None:
        if not query.pieces:
            return None
        types = self.next_token_types(query.context, query.pieces)
        return first_switch(query.role, types, query.max_position)
