"""Fakes that ship with tessy, so its behaviour can be pinned without any model.

- :class:`ScriptedBackend` replays given continuations and records every request.
- :class:`ScriptedPredictor` answers cut queries from a script and records every query.
- :class:`FakeTokenizer` splits text into word-level pieces.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from .backends.scripted import ScriptedBackend
from .boundary.base import BoundaryPredictor, CutQuery
from .tokenizers import FakeTokenizer

__all__ = ["FakeTokenizer", "ScriptedBackend", "ScriptedPredictor"]


class ScriptedPredictor(BoundaryPredictor):
    """Returns scripted cut positions, one per query (``None``: no cut), or asks ``responder``."""

    def __init__(
        self,
        cuts: Iterable[int | None] | None = None,
        *,
        responder: Callable[[CutQuery], int | None] | None = None,
        lookahead: int = 0,
    ) -> None:
        if (cuts is None) == (responder is None):
            raise ValueError("give exactly one of cuts= or responder=")
        self._cuts: deque[int | None] = deque(cuts or ())
        self._responder = responder
        self.lookahead = lookahead
        #: Every query received, in order.
        self.queries: list[CutQuery] = []
        #: Every sample released, in order.
        self.released: list[str] = []

    async def find_cut(self, query: CutQuery) -> int | None:
        self.queries.append(query)
        if self._responder is not None:
            return self._responder(query)
        if not self._cuts:
            raise AssertionError(f"the predictor script ran out at query {len(self.queries)}")
        return self._cuts.popleft()

    async def release(self, sample_id: str) -> None:
        self.released.append(sample_id)
