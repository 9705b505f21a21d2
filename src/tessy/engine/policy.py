"""What the engine is given: the two roles, and the budgets and guards a sample runs under."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ..backends.base import Backend, SamplingParams
from ..boundary.base import BoundaryPredictor
from ..formats import Format
from ..records import Source
from ..tokenizers import Tokenizer

__all__ = ["STREAM_CHUNKS", "Limits", "RepetitionGuard", "Role"]

#: A stream asks for this many chunks' worth of tokens unless its role says otherwise.
STREAM_CHUNKS = 4


@dataclass
class Role:
    """One side of the cooperation: a model behind a backend, its format and its predictor."""

    name: Source
    backend: Backend
    format: Format
    predictor: BoundaryPredictor
    chunk_tokens: int = 20
    sampling: SamplingParams = field(default_factory=SamplingParams)
    #: The model's tokenizer; with a backend that takes token ids, prompts are kept as ids.
    tokenizer: Tokenizer | None = None
    #: The most tokens one stream asks for (``None``: :data:`STREAM_CHUNKS` chunks' worth).
    stream_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1:
            raise ValueError(f"{self.name}: chunk_tokens must be at least 1")
        if self.stream_tokens is not None and self.stream_tokens < 2:
            raise ValueError(f"{self.name}: stream_tokens must be at least 2")

    @property
    def stream_cap(self) -> int:
        """The ``max_tokens`` of a stream: what a stream stopped late can waste at most."""
        return self.stream_tokens if self.stream_tokens is not None else STREAM_CHUNKS * self.chunk_tokens

    @property
    def token_exact(self) -> bool:
        """Whether this role's prompts are kept as token ids (see the module's docstring)."""
        return self.tokenizer is not None and self.backend.accepts_token_ids

    @asynccontextmanager
    async def session(self, sample_id: str) -> AsyncIterator[None]:
        """The lifetime of one sample on this role: however the block ends (a result, an error,
        a cancellation), the backend and the predictor then release what they hold for
        ``sample_id`` (caches, cursors), at once rather than when evicted."""
        try:
            yield
        finally:
            try:
                await self.backend.release(sample_id)
            finally:
                await self.predictor.release(sample_id)

    async def aclose(self) -> None:
        """Close the role's backend and predictor."""
        await self.backend.aclose()
        await self.predictor.aclose()


@dataclass(frozen=True)
class RepetitionGuard:
    """Flags degenerate repetition: the same unit of up to ``max_period`` tokens repeated
    ``min_repeats`` times or more at the end of the text, covering ``min_tokens`` or more."""

    min_tokens: int = 128
    max_period: int = 256
    min_repeats: int = 3
    #: Look again only after this many new tokens (a loop is caught a little later, for much less work).
    check_every: int = 32

    @property
    def window(self) -> int:
        return max(self.min_tokens, self.max_period * self.min_repeats) + 1

    def is_degenerate(self, tokens: Sequence[str]) -> bool:
        n = len(tokens)
        for period in range(1, min(self.max_period, n // 2) + 1):
            run = 0
            i = n - 1
            while i - period >= 0 and tokens[i] == tokens[i - period]:
                run += 1
                i -= 1
            covered = run + period
            if covered >= self.min_tokens and covered >= self.min_repeats * period:
                return True
        return False


@dataclass(frozen=True)
class Limits:
    """Budgets and guards. Token counts add both roles' tokens, each in its own tokenizer."""

    max_total_tokens: int = 32768
    max_thinking_tokens: int = 28672
    max_request_failures: int = 3
    #: Tokens asked for when a cut falls in a word that the chunk ends in the middle of.
    word_completion_tokens: int = 8
    repetition: RepetitionGuard | None = field(default_factory=RepetitionGuard)

    def __post_init__(self) -> None:
        if self.max_thinking_tokens >= self.max_total_tokens:
            raise ValueError("max_thinking_tokens must be below max_total_tokens, to leave room for the answer")
        if min(self.max_thinking_tokens, self.word_completion_tokens) < 1 or self.max_request_failures < 0:
            raise ValueError("budgets must be positive")
