"""Choosing the next token from a model's logits, with the OpenAI / vLLM sampling parameters.

Order, as vLLM applies them: repetition penalty, temperature (0 means greedy), top-k, top-p,
min-p. A request with a ``seed`` samples from its own generator, so the same request gives the
same tokens however requests are batched together. Only used by in-process backends; torch is
imported by the caller and passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from .base import SamplingParams

__all__ = ["make_generator", "sample_token"]


def make_generator(torch: Any, params: SamplingParams, key: str, device: Any) -> Any:
    """A generator seeded from the request's seed and ``key`` (sample, role, prompt length),
    so that every request of a seeded run is reproducible yet requests differ; ``None`` (the
    global generator) without a seed."""
    if params.seed is None:
        return None
    digest = hashlib.sha256(f"{params.seed}:{key}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "big") & ((1 << 63) - 1))
    return gen


def sample_token(
    torch: Any,
    logits: Any,
    params: SamplingParams,
    *,
    generator: Any = None,
    history: Sequence[int] = (),
) -> int:
    """One token id from a row of logits (a 1-D tensor over the vocabulary)."""
    logits = logits.float()
    penalty = params.repetition_penalty
    if penalty is not None and penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)), device=logits.device, dtype=torch.long)
        seen = seen[seen < logits.shape[-1]]
        values = logits.index_select(0, seen)
        logits = logits.clone()
        logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
    if params.temperature <= 0:
        return int(torch.argmax(logits).item())
    logits = logits / params.temperature
    k = params.top_k if params.top_k and params.top_k > 0 else logits.shape[-1]
    values, indices = torch.topk(logits, min(k, logits.shape[-1]))  # sorted, largest first
    probs = torch.softmax(values, dim=-1)
    keep = probs.shape[-1]
    if params.top_p < 1.0:
        # The smallest set of tokens whose mass reaches top_p (always at least one).
        before = torch.cumsum(probs, dim=-1) - probs
        keep = max(1, int((before < params.top_p).sum().item()))
    if params.min_p:
        keep = min(keep, max(1, int((probs >= params.min_p * probs[0]).sum().item())))
    probs = probs[:keep]
    choice = torch.multinomial(probs / probs.sum(), 1, generator=generator)
    return int(indices[int(choice.item())].item())
