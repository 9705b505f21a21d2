"""Scoring text with an in-process Hugging Face model: per-token log-probabilities of a given
continuation (teacher forcing), as :class:`tessy.backends.Scorer` asks.

Reports use it for the student's negative log-likelihood of each run's thinking: data the
student already finds likely moves it less when it is fine-tuned on it. A backend that can
score (``supports_scoring``) serves the same purpose; this class is for when the student is
only at hand as a model file (a catalogued name, a GGUF file or a Hugging Face folder).

:func:`score_tokens` holds the computation so that an in-process generating backend can share it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import Any

from .backends.base import ScoreRequest, TokenScores
from .errors import MissingDependencyError, TessyError

__all__ = ["TransformersScorer", "load_hf_model", "load_hf_tokenizer", "score_tokens"]

logger = logging.getLogger(__name__)


def _locate(name: str) -> tuple[str, str | None]:
    """``(folder or hub name, gguf file name or None)`` for a model given by catalogue name or path."""
    from . import models

    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), None
    if name in models.CATALOGUE or path.suffix == ".gguf":
        resolved = models.resolve(name)
        return str(resolved.parent), resolved.name
    raise TessyError(f"cannot find the model {name!r}: give a catalogued name, a GGUF file or a model folder")


@functools.lru_cache(maxsize=4)
def load_hf_tokenizer(name: str) -> Any:
    """A Hugging Face tokenizer from a catalogued model name, a GGUF file or a model folder
    (loaded once per name: reading a GGUF's vocabulary takes seconds)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError("transformers", "hf", "Loading a model's tokenizer") from exc
    where, gguf = _locate(name)
    kwargs = {"gguf_file": gguf} if gguf else {}
    return AutoTokenizer.from_pretrained(where, **kwargs)


def load_hf_model(name: str) -> tuple[Any, Any]:
    """``(tokenizer, causal LM in eval mode)`` from a catalogued name, a GGUF file or a folder."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as exc:
        raise MissingDependencyError("transformers", "hf", "Scoring text with a model") from exc
    tokenizer = load_hf_tokenizer(name)
    where, gguf = _locate(name)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if gguf:
        kwargs["gguf_file"] = gguf
    model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    model.eval()  # type: ignore[no-untyped-call]
    return tokenizer, model


def score_tokens(tokenizer: Any, model: Any, prompt: str, continuation: str, *, max_tokens: int) -> TokenScores:
    """Log-probabilities of ``continuation``'s tokens after ``prompt`` (both tokenised apart, so
    the continuation's tokens are exactly its own), within ``max_tokens`` of context."""
    import torch

    prompt_ids: list[int] = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    cont_ids: list[int] = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    truncated = False
    if len(cont_ids) > max_tokens - 1:
        cont_ids, truncated = cont_ids[: max_tokens - 1], True
    room = max_tokens - len(cont_ids)
    if len(prompt_ids) > room:
        prompt_ids, truncated = prompt_ids[-room:], True
    if not cont_ids:
        return TokenScores([], [], truncated)
    ids = prompt_ids + cont_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    start = len(prompt_ids)
    # The token at position i is predicted by the logits at position i - 1; a continuation with
    # no prompt before it has no prediction for its first token, which is then left out.
    positions = range(max(start, 1), len(ids))
    targets = torch.tensor([ids[i] for i in positions])
    picked = logprobs[torch.tensor([i - 1 for i in positions]), targets].tolist()
    pieces = tokenizer.convert_ids_to_tokens([ids[i] for i in positions])
    return TokenScores(list(pieces), [float(x) for x in picked], truncated or start == 0)


class TransformersScorer:
    """Scores continuations with an in-process causal LM (CPU by default), one at a time.

    The model loads on first use; scoring runs in a worker thread so an event loop stays live.
    """

    supports_scoring = True

    def __init__(self, model: str, *, max_tokens: int = 2048) -> None:
        if max_tokens < 2:
            raise ValueError("max_tokens must be at least 2")
        self.model_name = model
        self.max_tokens = max_tokens
        self._loaded: tuple[Any, Any] | None = None
        self._lock = asyncio.Lock()

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            logger.info("loading %s for scoring", self.model_name)
            self._loaded = load_hf_model(self.model_name)
        return self._loaded

    def score_sync(self, request: ScoreRequest) -> TokenScores:
        tokenizer, model = self._load()
        return score_tokens(tokenizer, model, request.prompt.text, request.continuation, max_tokens=self.max_tokens)

    async def score(self, request: ScoreRequest) -> TokenScores:
        async with self._lock:  # one forward pass at a time: they already use every core
            return await asyncio.to_thread(self.score_sync, request)

    async def aclose(self) -> None:
        self._loaded = None
