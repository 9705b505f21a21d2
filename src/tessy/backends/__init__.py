"""Backends: where continuations come from.

A backend is chosen by the role's explicit ``backend:`` key; :func:`create_backend` maps that
key to the class that implements it, importing heavy dependencies only when that backend is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import (
    Backend,
    GenerateRequest,
    Generation,
    Prompt,
    SamplingParams,
    Scorer,
    ScoreRequest,
    StreamDelta,
    TokenScores,
)
from .scripted import ScriptedBackend

if TYPE_CHECKING:
    from ..config import RoleConfig

__all__ = [
    "Backend",
    "GenerateRequest",
    "Generation",
    "Prompt",
    "SamplingParams",
    "ScoreRequest",
    "Scorer",
    "ScriptedBackend",
    "StreamDelta",
    "TokenScores",
    "create_backend",
]


def create_backend(config: RoleConfig) -> Backend:
    """The backend a role's config asks for."""
    if config.backend == "scripted":
        return ScriptedBackend.cycling(
            list(config.responses),
            list(config.answers),
            latency_s=config.latency_s,
            max_concurrency=config.max_concurrency,
            record=False,
        )
    if config.backend == "openai":
        from .openai import OpenAICompletionsBackend

        return OpenAICompletionsBackend(
            model=config.model,
            endpoints=config.endpoints,
            server=config.server,
            api_key_env=config.api_key_env,
            max_concurrency=config.max_concurrency,
            timeout_s=config.timeout_s,
            connect_timeout_s=config.connect_timeout_s,
            max_retries=config.max_retries,
            backoff_s=config.backoff_s,
            logprobs=config.logprobs,
            extra_body=config.extra_body,
        )
    if config.backend == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(
            config.model,
            n_ctx=config.n_ctx,
            n_parallel=config.n_parallel,
            n_threads=config.n_threads,
            startup_timeout_s=config.startup_timeout_s,
            timeout_s=config.timeout_s,
        )
    if config.backend == "hf":
        from .hf import HFBackend  # torch and transformers load only when this backend is used

        return HFBackend.load(
            config.model,
            tokenizer=config.tokenizer,
            device=config.device,
            dtype=config.dtype,
            max_batch_size=config.max_batch_size,
            cache_tokens=config.cache_tokens,
            max_concurrency=config.max_concurrency,
        )
    raise ConfigError(f"unknown backend {config.backend!r}")
