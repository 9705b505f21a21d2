"""An OpenAI-compatible ``/v1/completions`` backend for vLLM, SGLang and llama.cpp servers.

Raw completions (not chat) are used on purpose: the engine continues a partial assistant turn
in the middle of its thinking, which chat endpoints and their templates do not allow.

What each server offers (declared by the ``server`` setting, never probed):

=========== ================= ======================= ==========================================
server      token-id prompts  generated token ids     per-token text
=========== ================= ======================= ==========================================
vllm        yes               yes (return_token_ids)  ``logprobs.tokens``; one token per stream chunk
sglang      yes               yes (return_token_ids)  ``logprobs.tokens``; one token per stream chunk
llamacpp    yes               no (native API only)    ``logprobs.content[].token``; one token per chunk
openai      no                no                      ``logprobs.tokens``
=========== ================= ======================= ==========================================

A vLLM served with ``--stream-interval N`` puts up to N tokens in one stream chunk; streams ask
for ``logprobs`` too, and such a chunk is split back into its tokens, each with its id
(``unsplit_tokens`` counts the tokens of chunks that could not be split, with a warning).

Scoring (``score``, the log-probability of each token of a given text, used by ``tessy report``
for the student's NLL) sends the prompt and the text as one prompt with ``echo`` and ``logprobs``
and ``max_tokens: 1``; the echoed prompt's ``logprobs`` (``tokens``, ``token_logprobs``,
``text_offset``) give the scores of the tokens past the prompt. vLLM answers it; SGLang fills
the same fields when ``echo`` and ``logprobs`` come together; llama.cpp's server ignores ``echo``
(its ``logprobs`` cover generated tokens only), so ``server: llamacpp`` does not offer scoring.
A score request that asks for ranks (``top_k``) sends ``logprobs: top_k``: each echoed token's
``top_logprobs`` then rank it exactly within the top ``top_k``, and beyond them censored (a
server caps the number: vLLM's ``--max-logprobs``, 20 by default).

Requests of one sample stick to one replica (prefix caches hit); failures are retried with
exponential backoff and full jitter (connection errors, timeouts, 5xx, 429, empty completions)
and fail over to another replica. A 4xx that names a bad request fails at once with the
server's message. The API key is read from an environment variable and never logged: a server
that echoes it in an error has it replaced by ``[redacted]`` before the error leaves here.
Before a run's first sample, :meth:`check` asks every replica ``GET /models``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any, Literal, TypeVar

import httpx
import orjson

from ..errors import BackendError, ConfigError
from ..retry import Backoff, FailureBudget, call_with_retries
from ..tokenizers import Tokenizer
from ..version import __version__
from .base import Backend, GenerateRequest, Generation, ScoreRequest, StreamDelta, TokenScores
from .http1 import Http1Client, Http1Stream, plain_http
from .pool import Endpoint, EndpointPool
from .wire import (
    Body,
    StopHold,
    align_counted,
    echo_scores,
    error_message,
    finish_of,
    loads,
    merge_deltas,
    prompt_usage,
    proven_stop,
    retry_after_of,
    retryable,
    sse_batches,
    stop_reason_of,
    token_strings,
)

__all__ = ["OpenAICompletionsBackend", "ServerKind"]

logger = logging.getLogger(__name__)

ServerKind = Literal["vllm", "sglang", "llamacpp", "openai"]


T = TypeVar("T")


async def _merged(batches: AsyncGenerator[list[StreamDelta], None]) -> AsyncGenerator[StreamDelta, None]:
    """The deltas of each read merged (:func:`merge_deltas`): a late reader handles a burst of
    tokens in one step, not one step per token."""
    async with aclosing(batches):
        async for batch in batches:
            for delta in merge_deltas(batch):
                yield delta


#: Completion requests per small client pool (see OpenAICompletionsBackend._completion_client).
_SHARD_REQUESTS = 8


def _busy(shard: list[Any]) -> int:
    return int(shard[0])


def _dumps(body: dict[str, Any]) -> bytes:
    """A request body as JSON bytes (``extra_body`` from YAML may have integer keys, as
    ``logit_bias`` does: written as strings, as the standard encoder writes them)."""
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)


class OpenAICompletionsBackend(Backend):
    """Generates through ``POST {endpoint}/completions`` on one or more replicas."""

    supports_streaming = True

    def __init__(
        self,
        *,
        model: str,
        endpoints: Sequence[str],
        server: ServerKind = "vllm",
        api_key_env: str | None = None,
        max_concurrency: int = 64,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 10.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        logprobs: bool = True,
        extra_body: dict[str, Any] | None = None,
        tokenizer: Tokenizer | None = None,
        outage_timeout_s: float = 600.0,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency * max(1, len(endpoints)))
        self.model = model
        self.server = server
        self.accepts_token_ids = server != "openai"
        self.returns_token_ids = server in ("vllm", "sglang")
        self.supports_scoring = server != "llamacpp"
        self.pool = EndpointPool(
            endpoints, max_concurrency=max_concurrency, probe=self._probe, outage_timeout_s=outage_timeout_s, name=model
        )
        self.max_retries = max_retries
        self.backoff = Backoff(backoff_s, max_backoff_s)
        self.logprobs = logprobs
        self.extra_body = dict(extra_body or {})
        #: Splits text into pieces when the server gives no per-token text (else words).
        self.tokenizer = tokenizer
        self._headers = {"Content-Type": "application/json"}
        self._secret: str | None = None
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(f"the API key variable {api_key_env} is not set in the environment")
            self._headers["Authorization"] = f"Bearer {key}"
            self._secret = key
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._read_timeout = timeout_s
        #: Completions go over the lean client (.http1) where every replica is plain HTTP.
        self._lean = all(plain_http(ep.url) for ep in self.pool.endpoints)
        self._http1 = Http1Client(max_idle=max_concurrency)
        self._lean_headers = {**self._headers, "User-Agent": f"tessy/{__version__}"}
        self._client: httpx.AsyncClient | None = None
        #: [requests in flight, client] per small pool (see _completion_client).
        self._shards: list[list[Any]] = []
        #: Streamed tokens that came in events of several tokens that could not be split into
        #: tokens (no per-token text): their ids are lost and token-exact mode re-encodes them.
        self.unsplit_tokens = 0

    # -- plumbing ------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        """The client of the requests besides completions (model lists, probes, scoring)."""
        if self._client is None:
            limits = httpx.Limits(max_connections=_SHARD_REQUESTS + 8, max_keepalive_connections=_SHARD_REQUESTS)
            self._client = self._new_client(limits)
        return self._client

    def _new_client(self, limits: httpx.Limits) -> httpx.AsyncClient:
        # Each client loads the system's CA certificates (tens of ms of CPU); plain-HTTP
        # replicas never use them.
        plain = all(ep.url.startswith("http://") for ep in self.pool.endpoints)
        return httpx.AsyncClient(timeout=self._timeout, limits=limits, headers=self._headers, verify=not plain)

    @asynccontextmanager
    async def _completion_client(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client for one completion request (see :meth:`_take_shard`)."""
        shard = self._take_shard()
        try:
            yield shard[1]
        finally:
            shard[0] -= 1

    def _take_shard(self) -> list[Any]:
        """The least busy of a few small clients, counted busy with one more request until the
        caller counts it back (``shard[0] -= 1``); ``shard[1]`` is the client.

        httpcore's pool looks at every connection and every queued request on each step of
        each request (to assign, expire and release connections), so one pool of hundreds of
        connections costs the client more CPU per request than the request itself. Pools of
        :data:`_SHARD_REQUESTS` requests keep that cost small."""
        if not self._shards:
            n = max(1, -(-self.max_concurrency // _SHARD_REQUESTS))
            limits = httpx.Limits(max_connections=_SHARD_REQUESTS + 4, max_keepalive_connections=_SHARD_REQUESTS + 4)
            self._shards = [[0, self._new_client(limits)] for _ in range(n)]
        shard = min(self._shards, key=_busy)
        shard[0] += 1
        return shard

    async def aclose(self) -> None:
        self._http1.close()
        shards, self._shards = self._shards, []
        for _, client in shards:
            await client.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _body(self, request: GenerateRequest, stream: bool) -> dict[str, Any]:
        s = request.sampling
        ids = request.prompt.token_ids
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(ids) if ids is not None and self.accepts_token_ids else request.prompt.text,
            "max_tokens": request.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream": stream,
        }
        if self.server != "openai":
            body["top_k"] = s.top_k
            if s.min_p is not None:
                body["min_p"] = s.min_p
            if s.repetition_penalty is not None:
                body["repetition_penalty"] = s.repetition_penalty
        if s.seed is not None:
            body["seed"] = s.seed
        if request.stop and not stream:
            # Streams find stop strings here, on the client: a server that holds stop strings
            # back (vLLM holds the last len(stop) - 1 characters) would merge tokens in a chunk.
            body["stop"] = list(request.stop)
        if self.logprobs:
            # Per-token text: in streams too, where a server may put several tokens in one
            # event (vLLM's --stream-interval > 1); the event is split back into tokens.
            body["logprobs"] = 1
        if self.returns_token_ids:
            body["return_token_ids"] = True
        if self.server == "vllm":
            # The prompt is fully rendered (special tokens included): never add a second BOS.
            body["add_special_tokens"] = False
        if stream and self.server != "llamacpp":
            body["stream_options"] = {"include_usage": True}
        body.update(self.extra_body)
        return body

    def _redacted(self, exc: BackendError) -> BackendError:
        """``exc`` with the API key, where a server echoed it, replaced (before any log sees it)."""
        message = str(exc)
        if not self._secret or self._secret not in message:
            return exc
        clean = BackendError(
            message.replace(self._secret, "[redacted]"),
            retryable=exc.retryable,
            status=exc.status,
            retry_after=exc.retry_after,
        )
        clean.__cause__ = None
        return clean

    async def check(self) -> None:
        """Ask every replica ``GET {endpoint}/models``: it must answer, and (but for llama.cpp's
        server, which serves one model under any name) list :attr:`model`. Raises
        :class:`BackendError` naming the endpoint and what it said."""
        for ep in self.pool.endpoints:
            url = f"{ep.url}/models"
            try:
                response = await self.client.get(url, timeout=self._timeout.connect or 10.0)
                raw = await response.aread()
            except httpx.HTTPError as exc:
                raise self._redacted(
                    BackendError(
                        f"{url} does not answer ({type(exc).__name__}: {exc}); is the server up, and does "
                        "the endpoint end in /v1?",
                        retryable=False,
                    )
                ) from None
            if response.status_code >= 400:
                message = error_message(raw) or response.reason_phrase
                raise self._redacted(
                    BackendError(
                        f"{url} answered HTTP {response.status_code}: {message}",
                        retryable=False,
                        status=response.status_code,
                    )
                )
            if self.server == "llamacpp":
                continue
            try:
                served = [str(m["id"]) for m in json.loads(raw)["data"]]
            except (ValueError, KeyError, TypeError):
                raise self._redacted(
                    BackendError(f"{url} answered no model list: {raw[:200]!r}", retryable=False)
                ) from None
            if self.model not in served:
                raise BackendError(
                    f"{ep.url} serves {', '.join(map(repr, served)) or 'no model'}, not {self.model!r}; "
                    "set the role's model to the name the server serves",
                    retryable=False,
                )

    @staticmethod
    def _key(request: GenerateRequest) -> str:
        return f"{request.sample_id}|{request.role}"

    async def _with_retries(self, key: str, once: Callable[[Endpoint], Awaitable[T]]) -> tuple[T, int]:
        """Call ``once(endpoint)`` until it succeeds, failing over between replicas (``key``
        picks the replica a sample sticks to); at most ``max_retries`` retries, with backoff.
        Returns the result and how many failed attempts came before it."""
        tried: set[str] = set()
        waited = 0  # failures in an outage that was waited out: tried again, not charged

        async def attempt() -> T:
            nonlocal waited
            while True:
                await self.pool.ready()  # no request goes out while the breaker is open
                ep = self.pool.choose(key, avoid=tried)
                tried.add(ep.url)
                try:
                    async with ep.slots:
                        ep.requests += 1
                        result = await once(ep)
                except BackendError as exc:
                    error = exc
                except httpx.TimeoutException as exc:
                    error = retryable(f"timed out ({type(exc).__name__})")
                except httpx.TransportError as exc:
                    error = retryable(f"{type(exc).__name__}: {exc}")
                except TimeoutError as exc:  # the lean stream client (.http1)
                    error = retryable(f"timed out ({exc})")
                except OSError as exc:
                    error = retryable(f"{type(exc).__name__}: {exc}")
                else:
                    self.pool.succeeded(ep)
                    return result
                if not error.retryable:
                    raise self._redacted(error) from None
                self.pool.failed(ep)
                if await self.pool.outage():
                    waited += 1
                    tried.clear()
                    continue
                raise self._redacted(error) from None

        budget = FailureBudget(self.max_retries)
        try:
            result = await call_with_retries(attempt, budget, backoff=self.backoff, what=f"a request to {self.model}")
            return result, budget.failures + waited
        except BackendError as exc:
            if not exc.retryable:
                raise
            raise BackendError(f"{self.model}: {budget.failures} attempts failed, the last: {exc}") from None

    async def _probe(self, ep: Endpoint) -> bool:
        """Whether a replica is there at all (``GET /v1/models``, which OpenAI-compatible servers
        serve). Down: no connection, no answer in time, or what a gateway or a starting server
        says (502, 503, 504); any other answer, even an error, comes from a live server."""
        try:
            response = await self.client.get(f"{ep.url}/models", timeout=self._timeout.connect or 10.0)
        except httpx.HTTPError:
            return False
        return response.status_code not in (502, 503, 504)

    @classmethod
    def _check_status(cls, ep: Endpoint, response: httpx.Response, body: bytes) -> None:
        if response.status_code >= 400:
            cls._raise_status(
                ep, response.status_code, response.reason_phrase, response.headers.get("retry-after"), body
            )

    @staticmethod
    def _raise_status(ep: Endpoint, status: int, reason: str, retry_after: str | None, body: bytes) -> None:
        message = error_message(body) or reason
        if status == 429 or status >= 500 or status == 408:
            raise retryable(f"HTTP {status} from {ep.url}: {message}", retry_after=retry_after_of(retry_after))
        raise BackendError(f"HTTP {status} from {ep.url}: {message}", retryable=False, status=status)

    def _unsplit_event(self, n_tokens: int) -> None:
        if not self.unsplit_tokens:
            logger.warning(
                "%s: a stream event holds %d tokens without per-token text, so their ids are lost "
                "(token-exact prompts re-encode them); keep logprobs on, or serve with --stream-interval 1",
                self.model,
                n_tokens,
            )
        self.unsplit_tokens += n_tokens

    # -- generate ------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> Generation:
        content = _dumps(self._body(request, stream=False))

        async def once(ep: Endpoint) -> Generation:
            if self._lean:
                lean = await self._http1.post(
                    f"{ep.url}/completions",
                    content,
                    self._lean_headers,
                    connect_timeout=self._timeout.connect or 10.0,
                    timeout=self._read_timeout,
                    reuse=True,
                )
                try:
                    raw = await lean.read(self._read_timeout)
                except BaseException:
                    lean.close()
                    raise
                self._http1.release(lean)
                if lean.status >= 400:
                    self._raise_status(ep, lean.status, lean.reason, lean.headers.get("retry-after"), raw)
            else:
                async with self._completion_client() as client:
                    response = await client.post(f"{ep.url}/completions", content=content)
                    raw = await response.aread()
                self._check_status(ep, response, raw)
            try:
                data = loads(raw)
                choice = data["choices"][0]
                text = choice["text"]
            except (ValueError, KeyError, IndexError, TypeError):
                raise retryable(f"malformed response from {ep.url}: {raw[:200]!r}") from None
            if not isinstance(text, str):
                raise retryable(f"malformed response from {ep.url}: the text is not a string")
            finish = finish_of(choice.get("finish_reason"))
            if not text and finish == "length":
                raise retryable(f"empty completion from {ep.url}")
            pieces, counted = align_counted(text, token_strings(choice.get("logprobs")), self.tokenizer)
            usage = data.get("usage") or {}
            if not isinstance(usage, dict):
                raise retryable(f"malformed response from {ep.url}: usage is not an object")
            stop_reason = stop_reason_of(choice)
            if finish == "stop" and not proven_stop(stop_reason, usage.get("completion_tokens"), counted, request.stop):
                raise retryable(
                    f"{ep.url} said its completion stopped ({len(text)} characters) but named no stop string "
                    "and counted no end-of-sequence token: taken as a fault, not the end of the text"
                )
            ids = choice.get("token_ids")
            if isinstance(ids, list) and finish == "stop" and len(ids) == len(pieces) + 1:
                ids = ids[:-1]  # the end-of-sequence (or stop) token, which has no text
            if not (isinstance(ids, list) and len(ids) == len(pieces)):
                ids = None
            prompt_tokens, cached_tokens = prompt_usage(usage)
            return Generation(
                pieces=pieces,
                finish_reason=finish,
                token_ids=ids,
                stop_reason=stop_reason if isinstance(stop_reason, str) else None,
                prompt_tokens=prompt_tokens,
                cached_tokens=cached_tokens,
                completion_tokens=usage.get("completion_tokens"),
            )

        gen, retries = await self._with_retries(self._key(request), once)
        gen.retries = retries
        return gen

    # -- score ---------------------------------------------------------------------------

    async def score(self, request: ScoreRequest) -> TokenScores:
        """Log-probabilities of ``request.continuation``'s tokens after ``request.prompt`` (see
        the module docstring). The prompt and the continuation go as one text, so a token that
        straddles the seam is left out; prompts rendered by a format end in markup, where
        tokenizers do not merge across."""
        if not self.supports_scoring:
            raise BackendError(
                f"{self.model}: a {self.server} server returns no log-probabilities of prompt tokens; "
                "score with an in-process model instead (tessy report --score-model MODEL)",
                retryable=False,
            )
        prompt = request.prompt.text
        full = prompt + request.continuation
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": full,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": max(1, request.top_k),
        }
        if self.server == "vllm":
            body["add_special_tokens"] = False

        async def once(ep: Endpoint) -> TokenScores:
            response = await self.client.post(f"{ep.url}/completions", json=body)
            raw = await response.aread()
            self._check_status(ep, response, raw)
            try:
                choice = json.loads(raw)["choices"][0]
            except (ValueError, KeyError, IndexError, TypeError):
                raise retryable(f"malformed response from {ep.url}: {raw[:200]!r}") from None
            return echo_scores(choice.get("logprobs"), len(prompt), len(full), where=ep.url, top_k=request.top_k)

        return (await self._with_retries(f"{request.sample_id}|score", once))[0]

    # -- stream --------------------------------------------------------------------------

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamDelta, None]:
        content = _dumps(self._body(request, stream=True))
        headers = {"Connection": "close"} if self.server == "llamacpp" else None
        # Retries and failover happen only before the first token; a stream that breaks later
        # raises, and the engine redoes the whole step.
        body: Body
        close: Callable[[], Awaitable[None]]
        if self._lean:
            lean_headers = {**self._lean_headers, "Accept": "text/event-stream", **(headers or {})}

            async def open_lean(ep: Endpoint) -> Http1Stream:
                opened = await self._http1.post(
                    f"{ep.url}/completions",
                    content,
                    lean_headers,
                    connect_timeout=self._timeout.connect or 10.0,
                    timeout=self._read_timeout,
                )
                if opened.status >= 400:
                    try:
                        raw = await opened.read(self._read_timeout)
                    finally:
                        opened.close()
                    self._raise_status(ep, opened.status, opened.reason, opened.headers.get("retry-after"), raw)
                return opened

            lean, retries = await self._with_retries(self._key(request), open_lean)
            reads = lean.reads(self._read_timeout)
            body = reads

            async def close() -> None:
                try:
                    await reads.aclose()
                finally:
                    lean.close()

        else:

            async def once(ep: Endpoint) -> httpx.Response:
                req = client.build_request("POST", f"{ep.url}/completions", content=content, headers=headers)
                response = await client.send(req, stream=True)
                if response.status_code >= 400:
                    raw = await response.aread()
                    await response.aclose()
                    self._check_status(ep, response, raw)
                return response

            shard = self._take_shard()
            client: httpx.AsyncClient = shard[1]
            try:
                response, retries = await self._with_retries(self._key(request), once)
            except BaseException:
                shard[0] -= 1
                raise
            body = response

            async def close() -> None:
                try:
                    await response.aclose()
                finally:
                    shard[0] -= 1

        got_any = False
        events = 0
        held = StopHold(request.stop)
        try:
            async for delta in _merged(sse_batches(body, self._unsplit_event)):
                got_any = got_any or bool(delta.pieces)
                events += len(delta.pieces)  # at least one token each
                if delta.pieces:
                    out, hit = held.feed(delta)
                    for ready in out:
                        ready.retries, retries = retries, 0  # told once, on the first delta
                        yield ready
                    if hit is not None:
                        yield StreamDelta(pieces=[], finish_reason="stop", stop_reason=hit, retries=retries)
                        return
                if delta.finish_reason is not None:
                    if delta.finish_reason == "stop" and not proven_stop(
                        delta.stop_reason, delta.completion_tokens, events, request.stop
                    ):
                        raise retryable(
                            f"{self.model}: the stream said it stopped but named no stop string and counted no "
                            "end-of-sequence token: taken as a fault, not the end of the text"
                        )
                    # The stream ended without completing a stop string: what was held is text.
                    for ready in held.flush():
                        ready.retries, retries = retries, 0
                        yield ready
                    yield StreamDelta(
                        pieces=[],
                        finish_reason=delta.finish_reason,
                        stop_reason=delta.stop_reason,
                        prompt_tokens=delta.prompt_tokens,
                        cached_tokens=delta.cached_tokens,
                        retries=retries,
                    )
                    return
            raise BackendError(f"{self.model}: the stream ended before the completion did", retryable=True)
        except BackendError as exc:
            raise self._redacted(exc) from None
        except TimeoutError as exc:
            raise BackendError(f"{self.model}: a stream timed out ({exc})", retryable=True) from exc
        except (httpx.TransportError, OSError) as exc:
            where = "in the middle of" if got_any else "at the start of"
            raise BackendError(f"{self.model}: connection lost {where} a stream ({exc})", retryable=True) from exc
        finally:
            # Closing the response closes the connection, and the server aborts the request.
            await close()
