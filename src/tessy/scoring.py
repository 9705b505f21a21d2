"""Scoring text with an in-process Hugging Face model: per-token log-probabilities of a given
continuation (teacher forcing), as :class:`tessy.backends.Scorer` asks.

Reports use it for the student's negative log-likelihood of each run's thinking: data the
student already finds likely moves it less when it is fine-tuned on it. A backend that can
score (``supports_scoring``) serves the same purpose; this class is for when the student is
only at hand as a model file (a catalogued name, a GGUF file or a Hugging Face folder).

:func:`tessy.hf.score_tokens` holds the computation; the in-process ``hf`` backend scores with it too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .backends.base import ScoreRequest, TokenScores
from .hf import load_hf_model, load_hf_tokenizer, score_tokens

__all__ = ["TransformersScorer"]

logger = logging.getLogger(__name__)


class TransformersScorer:
    """Scores continuations with an in-process causal LM, one at a time.

    ``model`` is a catalogued name, a GGUF file or a Hugging Face folder (see :mod:`tessy.hf`);
    it loads on first use, on ``device`` (``cpu`` by default). Scoring runs in a worker thread
    so an event loop stays live.
    """

    supports_scoring = True

    def __init__(self, model: str, *, max_tokens: int = 2048, device: str = "cpu") -> None:
        if max_tokens < 2:
            raise ValueError("max_tokens must be at least 2")
        self.model_name = model
        self.max_tokens = max_tokens
        self.device = device
        self._loaded: tuple[Any, Any] | None = None
        self._lock = asyncio.Lock()

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            logger.info("loading %s for scoring", self.model_name)
            self._loaded = load_hf_tokenizer(self.model_name), load_hf_model(self.model_name, device=self.device)
        return self._loaded

    def score_sync(self, request: ScoreRequest) -> TokenScores:
        tokenizer, model = self._load()
        return score_tokens(
            tokenizer,
            model,
            request.prompt.text,
            request.continuation,
            max_tokens=self.max_tokens,
            ranks=request.top_k > 0,
        )

    async def score(self, request: ScoreRequest) -> TokenScores:
        async with self._lock:  # one forward pass at a time: they already use every core
            return await asyncio.to_thread(self.score_sync, request)

    async def aclose(self) -> None:
        self._loaded = None
