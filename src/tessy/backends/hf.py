"""In-process Hugging Face transformers backend (``backend: hf``).

The model runs in one worker thread per backend, so the event loop never waits on it.
Requests go into a queue; the worker gathers them into batches:

- **One KV cache per (sample, role).** A request's prompt is compared with the ids already in
  that sample's cache; only the tokens past the common prefix are fed (the other model's new
  text, typically). A prompt that does not extend the previous prompt of its (sample, role) is
  a *cache miss*: the cache is cut back to the common prefix and the rest recomputed.
- **Batched decoding.** Each new request is prefilled on its own, then joins the running batch:
  the batch's caches are left-padded to one length and every decode step feeds one token for
  each row at once. A finished row leaves the batch with its cache, which goes back to its
  sample. A sample's caches are dropped when it is released (:meth:`HFBackend.release`, when
  the engine's session for it ends, however it ends), and least recently used ones when their
  total passes ``cache_tokens``.
- **Scoring.** :meth:`HFBackend.score` gives the log-probability of each token of a given text
  (``tessy report --student`` uses it for the student's NLL), in one forward pass.
- **Exact tokens.** Prompts are taken as token ids (the engine keeps them); generated tokens
  come back as ids and one piece per id. Stop strings are found in the decoded text and the
  generation is cut where they start. A generation that reaches ``max_tokens`` in the middle of
  a character split over several tokens runs up to three tokens more to finish it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from ..errors import BackendError, ConfigError
from ..tokenizers import HFTokenizer
from .base import Backend, GenerateRequest, Generation, ScoreRequest, StreamDelta, TokenScores
from .hf_worker import Deliver, HFStats, Job, Release, Worker

__all__ = ["HFBackend", "HFStats"]

logger = logging.getLogger(__name__)

#: One lock per device: models on the same device take turns, one forward pass at a time.
#: Two models computing at once on the same CPU cores would each start a full team of
#: threads and compete for the cores; taking turns lets each forward pass use all of them.
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _device_lock(device: Any) -> threading.Lock:
    with _LOCKS_LOCK:
        return _DEVICE_LOCKS.setdefault(str(device), threading.Lock())


class HFBackend(Backend):
    """A transformers causal LM in this process (see the module docstring)."""

    accepts_token_ids = True
    returns_token_ids = True
    supports_streaming = True
    supports_scoring = True

    def __init__(
        self,
        model: Any,
        tokenizer: HFTokenizer,
        *,
        max_batch_size: int = 8,
        cache_tokens: int = 32768,
        max_concurrency: int = 64,
        name: str = "",
    ) -> None:
        super().__init__(max_concurrency=max_concurrency)
        if max_batch_size < 1 or cache_tokens < 0:
            raise ValueError("max_batch_size must be at least 1 and cache_tokens not negative")
        from ..hf import import_torch

        self.torch = import_torch()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or type(model).__name__
        self.max_batch_size = max_batch_size
        self.cache_tokens = cache_tokens
        self.stats = HFStats()
        self.device = next(model.parameters()).device
        self.device_lock = _device_lock(self.device)
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep_logits = "logits_to_keep" in params
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        eos = set(tokenizer.eos_token_ids)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
        self.eos_ids = frozenset(eos)
        self._queue: queue.SimpleQueue[Job | Release | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def load(
        cls,
        model: str | Path,
        *,
        tokenizer: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        **kwargs: Any,
    ) -> HFBackend:
        """Load a model folder, GGUF file or catalogued model (see :mod:`tessy.hf`).

        ``device`` is ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        """
        from ..hf import import_torch, load_hf_model, load_hf_tokenizer

        torch = import_torch()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for but torch sees no CUDA device; use device: cpu")
        tok = HFTokenizer(load_hf_tokenizer(tokenizer or model), name=str(tokenizer or model))
        loaded = load_hf_model(model, device=device, dtype=dtype)
        return cls(loaded, tok, name=str(model), **kwargs)

    # -- the event-loop side -------------------------------------------------------------

    def _job(self, request: GenerateRequest, deliver: Deliver, stream: bool) -> Job:
        if self._closed:
            raise BackendError("the hf backend is closed", retryable=False)
        if request.max_tokens < 1:
            raise BackendError(f"max_tokens must be at least 1, got {request.max_tokens}", retryable=False)
        ids = request.prompt.token_ids
        prompt = list(ids) if ids is not None else self.tokenizer.encode_pieces(request.prompt.text, first=True)[0]
        if not prompt:
            raise BackendError("the prompt is empty", retryable=False)
        job = Job(request, prompt, deliver, stream)
        if self._thread is None:
            worker = Worker(self, self._queue)
            self._thread = threading.Thread(target=worker.run, name=f"tessy-hf-{self.name}", daemon=True)
            self._thread.start()
        self._queue.put(job)
        return job

    async def generate(self, request: GenerateRequest) -> Generation:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Generation] = loop.create_future()

        def settle(item: object) -> None:
            if future.done():
                return
            if isinstance(item, BaseException):
                future.set_exception(item)
            elif isinstance(item, Generation):
                future.set_result(item)

        job = self._job(request, _threadsafe(loop, settle), stream=False)
        try:
            return await future
        finally:
            job.cancelled = True  # no-op when done; stops the work when the caller gave up

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamDelta, None]:
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[object] = asyncio.Queue()
        job = self._job(request, _threadsafe(loop, deltas.put_nowait), stream=True)
        try:
            while True:
                item = await deltas.get()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, StreamDelta)
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled = True

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Log-probabilities of ``request.continuation`` after ``request.prompt`` (one forward
        pass of the whole text, taking its turn on the device with generation)."""
        if self._closed:
            raise BackendError("the hf backend is closed", retryable=False)
        from ..hf import score_tokens

        limit = self.max_positions or 4096

        def run() -> TokenScores:
            with self.device_lock:
                return score_tokens(
                    self.tokenizer.hf,
                    self.model,
                    request.prompt.text,
                    request.continuation,
                    max_tokens=limit,
                    ranks=request.top_k > 0,
                )

        return await asyncio.to_thread(run)

    async def release(self, sample_id: str) -> None:
        """Drop the sample's KV caches (every role's); returns once the model thread has."""
        thread = self._thread
        if self._closed or thread is None or not thread.is_alive():
            return  # nothing cached, or the thread dropped everything when it stopped
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(_: object) -> None:
            if not done.done():
                done.set_result(None)

        # Queued before the first await: even if the caller is cancelled, the caches go.
        self._queue.put(Release(sample_id, _threadsafe(loop, settle)))
        await done

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None


def _threadsafe(loop: asyncio.AbstractEventLoop, callback: Callable[[object], None]) -> Deliver:
    def deliver(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(callback, item)

    return deliver
