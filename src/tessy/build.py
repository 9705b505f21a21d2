"""Config to objects: the one place that reads a :class:`SynthConfig` or a role's config and
makes the backends, predictors, formats, roles and engines they describe.

Everything else (synthesis, the report, the demo, the benchmark, the predictor commands) builds
through these functions, so a setting is honoured everywhere or nowhere. Heavy dependencies
(torch, transformers, httpx, xllamacpp) are imported only when a config asks for them.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from .backends.base import Backend, SamplingParams
from .boundary.base import BoundaryPredictor
from .config import (
    GuardsConfig,
    MethodsConfig,
    PredictorConfig,
    RoleConfig,
    SamplingConfig,
    SynthConfig,
    VerifyConfig,
)
from .engine import Engine, Limits, RepetitionGuard, Role
from .engine.methods import MethodSettings
from .errors import ConfigError
from .formats import Format, get_format
from .records import Source
from .tokenizers import Tokenizer, load_tokenizer
from .verify import Verifier

__all__ = [
    "build_backend",
    "build_engine",
    "build_format",
    "build_limits",
    "build_methods",
    "build_predictor",
    "build_role",
    "build_sampling",
    "build_tokenizer",
    "build_verifier",
    "sampling_role_config",
]


def _settings(config: BaseModel, *names: str) -> dict[str, Any]:
    """Settings of a config as keyword arguments of the class they configure (named alike)."""
    return {name: getattr(config, name) for name in names}


def build_backend(config: RoleConfig) -> Backend:
    """The backend a role's config asks for (not started: local servers start on first use)."""
    if config.backend == "scripted":
        from .backends.scripted import ScriptedBackend

        return ScriptedBackend.cycling(
            list(config.responses),
            list(config.answers),
            record=False,
            **_settings(config, "latency_s", "max_concurrency"),
        )
    if config.backend == "openai":
        from .backends.openai import OpenAICompletionsBackend

        return OpenAICompletionsBackend(
            **_settings(
                config, "model", "endpoints", "server", "api_key_env", "max_concurrency", "timeout_s",
                "connect_timeout_s", "max_retries", "backoff_s", "outage_timeout_s", "logprobs", "extra_body",
            )
        )  # fmt: skip
    if config.backend == "llamacpp":
        from .backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(
            config.model, **_settings(config, "n_ctx", "n_parallel", "n_threads", "startup_timeout_s", "timeout_s")
        )
    if config.backend == "hf":
        from .backends.hf import HFBackend  # torch and transformers load only when this backend is used

        return HFBackend.load(
            config.model,
            **_settings(config, "tokenizer", "device", "dtype", "max_batch_size", "cache_tokens", "max_concurrency"),
        )
    raise ConfigError(f"unknown backend {config.backend!r}")


def build_predictor(config: PredictorConfig) -> BoundaryPredictor:
    """The boundary predictor a role's ``predictor:`` section asks for."""
    if config.type == "lexicon":
        from .boundary.lexicon import LexiconPredictor

        return LexiconPredictor(config.phrases, **_settings(config, "phrases_file", "replace_defaults", "lookahead"))
    if config.type == "classifier":
        from .boundary.classifier import ClassifierPredictor

        return ClassifierPredictor.load(
            config.path,
            **_settings(
                config, "device", "dtype", "window", "reuse", "reuse_margin", "threshold", "max_batch",
                "max_wait_ms", "max_states",
            ),
        )  # fmt: skip
    raise ConfigError(f"unknown predictor type {config.type!r}")


def build_sampling(config: SamplingConfig) -> SamplingParams:
    return SamplingParams(**config.model_dump())


def build_tokenizer(config: RoleConfig, backend: Backend | None = None) -> Tokenizer | None:
    """The role's tokenizer: the one its backend runs (hf), else the configured one, else none.

    An hf role's tokenizer is its model's unless ``tokenizer`` names another; without the built
    backend at hand it is loaded from the model reference."""
    if config.backend == "hf":
        own: Tokenizer | None = getattr(backend, "tokenizer", None) if backend is not None else None
        if own is not None:
            return own
        return load_tokenizer(config.tokenizer or config.model)
    return load_tokenizer(config.tokenizer) if config.tokenizer is not None else None


def build_format(config: RoleConfig, tokenizer: Tokenizer | None = None) -> Format:
    """The role's chat format with its options, system prompt and tokenizer (for templates)."""
    return get_format(
        config.format, system_prompt=config.system_prompt, tokenizer=tokenizer, options=config.format_options
    )


def build_role(name: Source, config: RoleConfig, *, backend: Backend | None = None) -> Role:
    """A ready :class:`Role` from its config: backend, tokenizer, format and predictor.

    ``backend`` replaces the one the config names (a benchmark's simulated server, say); every
    other setting still comes from the config.
    """
    backend = backend or build_backend(config)
    tokenizer = build_tokenizer(config, backend)
    return Role(
        name=name,
        backend=backend,
        format=build_format(config, tokenizer),
        predictor=build_predictor(config.predictor),
        chunk_tokens=config.chunk_tokens,
        stream_tokens=config.stream_tokens,
        sampling=build_sampling(config.sampling),
        tokenizer=tokenizer,
    )


def build_limits(config: GuardsConfig) -> Limits:
    return Limits(
        max_total_tokens=config.max_total_tokens,
        max_thinking_tokens=config.max_thinking_tokens,
        max_request_failures=config.max_request_failures,
        word_completion_tokens=config.word_completion_tokens,
        repetition=RepetitionGuard(
            config.repetition_min_tokens, config.repetition_max_period, config.repetition_min_repeats
        )
        if config.repetition
        else None,
    )


def build_methods(config: MethodsConfig | None) -> MethodSettings:
    """The comparison methods' settings, their prompt files read (the shipped ones by default)."""
    from .engine.methods import DEFAULT_REFERENCE_PROMPT, DEFAULT_SCORE_PROMPT, PromptTemplate
    from .engine.methods.base import REFERENCE_PLACEHOLDERS, SCORE_PLACEHOLDERS

    config = config or MethodsConfig()
    score = PromptTemplate.load(
        config.score_prompt or DEFAULT_SCORE_PROMPT, placeholders=SCORE_PLACEHOLDERS, required=("answer",)
    )
    reference = PromptTemplate.load(
        config.reference_prompt or DEFAULT_REFERENCE_PROMPT,
        placeholders=REFERENCE_PLACEHOLDERS,
        required=("reference",),
    )
    return MethodSettings(
        score_prompt=score,
        reference_prompt=reference,
        **_settings(
            config, "candidates", "score_max_tokens", "rsd_threshold", "rsd_propose_tokens", "mix_teacher_share"
        ),
    )


def build_engine(config: SynthConfig, *, backends: dict[Source, Backend] | None = None) -> Engine:
    """The engine a run config describes; close it with ``await engine.aclose()`` (or use it as an
    async context manager). ``backends`` replaces the configured backend of a role."""
    backends = backends or {}
    teacher = build_role("teacher", config.teacher, backend=backends.get("teacher"))
    student = build_role("student", config.student, backend=backends.get("student"))
    try:
        return Engine(
            teacher,
            student,
            mode=config.mode,
            limits=build_limits(config.guards),
            streaming=config.streaming,
            methods=build_methods(config.methods) if config.mode.is_method else None,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def sampling_role_config(config: RoleConfig) -> RoleConfig:
    """A role's config for commands that run one model alone (``tessy predictor sample``): the
    default predictor (the role's own, a classifier say, may not be trained yet), and a local
    llama.cpp server left at its default thread count gets all the cores instead of half."""
    from .config import LexiconPredictorConfig

    update: dict[str, object] = {"predictor": LexiconPredictorConfig()}
    if config.backend == "llamacpp" and config.n_threads is None:
        update["n_threads"] = os.cpu_count() or 1
    return config.model_copy(update=update)


def build_verifier(config: VerifyConfig | None) -> Verifier:
    """The verifier a ``verify:`` section asks for (``none`` without one)."""
    from . import verify

    if config is None or config.kind == "none":
        return verify.NoVerifier()
    if config.kind == "math":
        return verify.MathVerifier(answer_field=config.answer_field)
    if config.kind == "code":
        limits = verify.SandboxLimits(
            wall_s=config.timeout_s,
            **_settings(config, "cpu_s", "memory_mb", "file_size_mb", "folder_mb", "max_processes", "output_bytes"),
        )
        sandbox = verify.Sandbox(limits, concurrency=config.concurrency, python=config.python)
        return verify.CodeVerifier(
            sandbox,
            **_settings(config, "test_field", "entry_point_field", "inputs_field", "outputs_field"),
        )
    return verify.FunctionVerifier(verify.load_function(config.kind), config.kind)
