"""The backend interface: generate a continuation of a prompt.

One small async interface serves HTTP servers, in-process models and scripted fakes. What a
backend can do beyond plain text (accept token-id prompts, return token ids, stream, score a
given continuation) is declared as class attributes, never probed at run time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ..text import TextView

__all__ = [
    "Backend",
    "GenerateRequest",
    "Generation",
    "Prompt",
    "SamplingParams",
    "ScoreRequest",
    "Scorer",
    "StreamDelta",
    "TokenScores",
]

FinishReason = Literal["length", "stop"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling settings, named as in the OpenAI / vLLM APIs. Defaults follow the paper."""

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Prompt:
    """A prompt as text (a cheap view) and, where the caller keeps them, as token ids.

    The ids, when given, are exactly the prompt to send: a BOS token is in them where the model
    wants one, and a backend adds nothing.
    """

    view: TextView
    token_ids: Sequence[int] | None = None

    @classmethod
    def of(cls, text: str) -> Prompt:
        return cls(TextView.of(text))

    @property
    def text(self) -> str:
        return self.view.text


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One request for a continuation.

    ``sample_id``, ``role`` and ``phase`` are metadata: they let a backend route all requests
    of one sample to the same replica (so its prefix cache hits) and let fakes answer per sample
    and phase. When a sample ends is said by :meth:`Backend.release`, never guessed from ``phase``.
    """

    prompt: Prompt
    max_tokens: int
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    sample_id: str = ""
    role: str = ""
    phase: str = "think"


@dataclass(slots=True)
class Generation:
    """A continuation, as token strings that concatenate to the generated text.

    ``finish_reason`` is ``"length"`` when ``max_tokens`` ran out and ``"stop"`` when the model
    ended its turn or hit a stop string (``stop_reason`` names the string; ``None`` for the
    end-of-sequence token). A stop string itself is not part of ``pieces``.

    ``token_ids[i]`` is the id of the token whose text is ``pieces[i]`` (one piece per token; a
    token that holds only part of a character has an empty piece). It may be one shorter than
    ``pieces`` when a stop string began inside the last token: that piece is then only part of
    its token's text and has no id. The end-of-sequence token is in neither.
    """

    pieces: list[str]
    finish_reason: FinishReason
    token_ids: list[int] | None = None
    stop_reason: str | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    #: Tokens the server says it generated (may count an end-of-sequence token not in ``pieces``).
    completion_tokens: int | None = None
    #: Failed attempts the backend tried again before this answer (nothing of them is in it).
    retries: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def __len__(self) -> int:
        return len(self.pieces)


@dataclass(slots=True)
class StreamDelta:
    """Some new tokens of a streamed continuation; the last delta carries ``finish_reason``
    (and ``completion_tokens``, where the server counted them)."""

    pieces: list[str]
    token_ids: list[int] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | None = None
    completion_tokens: int | None = None
    #: On the last delta, where the server sent usage: the prompt's tokens and how many of
    #: them its prefix cache served (an aborted stream gets no usage).
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    #: On a stream's first delta: failed attempts the backend tried again before the stream began.
    retries: int = 0


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """Ask for the log-probability of each token of ``continuation`` after ``prompt``
    (teacher forcing: nothing is generated)."""

    prompt: Prompt
    continuation: str
    sample_id: str = ""
    #: Also rank each token among the model's predictions (:attr:`TokenScores.ranks`): a server
    #: is asked for this many alternatives per position; an in-process model ranks exactly.
    #: 0: no ranks.
    top_k: int = 0


@dataclass(slots=True)
class TokenScores:
    """Per-token log-probabilities of a continuation, in the scoring model's own tokenizer.

    ``truncated`` says that the prompt or the continuation was cut to fit the model's context,
    so the scores cover only part of the continuation.

    ``ranks`` (where asked for, see :attr:`ScoreRequest.top_k`) holds each token's 1-based rank
    among the model's predictions at its position (1: the most likely token). Where the scorer
    sees only the top ``rank_limit`` predictions (a server's top-K alternatives), a token beyond
    them is *censored*: its rank is stored as ``rank_limit + 1`` and means "more than
    ``rank_limit``". ``rank_limit`` is ``None`` when every rank is exact.

    ``offsets[i]``, where the scorer knows it, is the ``(start, end)`` character span in the
    continuation of the token of ``logprobs[i]`` (``pieces`` may be in the tokenizer's own
    spelling, such as ``Ġthe``, so their lengths do not give it; a tokenizer may leave a leading
    space out of the span). Text scored under another model's tokenizer is lined up by it (RSD
    judges each teacher token by the student's tokens that end in it).
    """

    pieces: list[str]
    logprobs: list[float]
    truncated: bool = False
    ranks: list[int] | None = None
    rank_limit: int | None = None
    offsets: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.logprobs)

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood per token (nats); ``nan`` for an empty continuation."""
        return -sum(self.logprobs) / len(self.logprobs) if self.logprobs else float("nan")

    @property
    def censored(self) -> int:
        """How many tokens are ranked only as "beyond ``rank_limit``"."""
        if self.ranks is None or self.rank_limit is None:
            return 0
        return sum(1 for r in self.ranks if r > self.rank_limit)


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores continuations: a backend with ``supports_scoring``, or a standalone
    in-process model (:class:`tessy.scoring.TransformersScorer`)."""

    async def score(self, request: ScoreRequest) -> TokenScores: ...

    async def aclose(self) -> None: ...


class Backend(ABC):
    """Generates continuations. Subclasses declare what they support."""

    #: Accepts ``Prompt.token_ids`` instead of text.
    accepts_token_ids: bool = False
    #: Fills ``Generation.token_ids``.
    returns_token_ids: bool = False
    #: Implements :meth:`stream`.
    supports_streaming: bool = False
    #: Implements :meth:`score` (log-probabilities of a given continuation).
    supports_scoring: bool = False
    #: How many times a failed request is tried again; the engine gives a stream that breaks
    #: after its first token (which a backend cannot retry itself) as many tries.
    max_retries: int = 0

    def __init__(self, *, max_concurrency: int = 64) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        #: How many requests the engine may have in flight on this backend at once.
        self.max_concurrency = max_concurrency

    @abstractmethod
    async def generate(self, request: GenerateRequest) -> Generation:
        """Generate up to ``request.max_tokens`` tokens continuing ``request.prompt``."""

    def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamDelta, None]:
        """Stream the continuation. Closing the iterator early must abort the request."""
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Log-probabilities of ``request.continuation`` after ``request.prompt``, one per token
        of the continuation in the backend's own tokenizer.

        ``backend: openai`` does it with ``echo`` and ``logprobs`` on ``/v1/completions`` (vLLM,
        SGLang), ``backend: hf`` in-process. llama.cpp's server returns log-probabilities of
        generated tokens only: score with an in-process model
        (:class:`tessy.scoring.TransformersScorer`).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot score continuations")

    async def check(self) -> None:
        """Raise a :class:`~tessy.errors.TessyError` that says what is wrong if this backend
        cannot serve (a server that does not answer, or serves another model); called once
        before a run's first sample. The default checks nothing: in-process models and fakes
        fail on loading, local servers on starting."""

    async def release(self, sample_id: str) -> None:
        """The sample ``sample_id`` is over (done, failed or cancelled): drop what is kept for it
        (KV caches, cursors). No request of it follows, unless as a new sample. Must not raise;
        an unknown sample is a no-op, and so is this default (a backend that keeps nothing).
        :meth:`tessy.engine.Role.session` calls it."""

    async def aclose(self) -> None:
        """Release connections, servers or models."""
