"""A local OpenAI-compatible server over simulated engines, speaking vLLM's ``/v1/completions``.

Plain asyncio (:mod:`tessy.bench.http`), no dependency. Each served model name has its own
:class:`SimEngine` (as if on its own GPU). This module routes requests to the engines; the
request and response bodies are :mod:`tessy.bench.protocol`'s.

Endpoints:

- ``POST /v1/completions``: ``prompt`` as a string or a list of token ids (one prompt),
  ``max_tokens`` (default 16), ``stop``, ``stop_token_ids``, ``min_tokens``, ``ignore_eos``,
  ``include_stop_str_in_output``, ``temperature``/``top_p``/``top_k``/``min_p``/``seed``
  (the output depends on the prompt and ``seed`` only), ``logprobs`` (legacy completions form),
  ``prompt_logprobs``, ``return_token_ids`` (``token_ids`` and ``prompt_token_ids`` per choice;
  while streaming, each chunk carries its new ``token_ids`` and the first one the prompt's),
  ``stream`` with ``stream_options.include_usage`` / ``continuous_usage_stats``. ``usage``
  carries ``prompt_tokens_details.cached_tokens`` (prefix-cache hits) always; choices carry
  ``finish_reason`` and vLLM's ``stop_reason``. While streaming with stop strings, text is held
  back by up to the longest stop string less one character, as vLLM's detokenizer does, so a
  chunk may carry token ids and no text. A client that disconnects aborts its request.
- ``POST /tokenize`` ``{"prompt": ...}`` and ``POST /detokenize`` ``{"tokens": [...]}`` (vLLM's).
- ``POST /reset_prefix_cache`` (vLLM's), ``GET /v1/models``, ``GET /health``.
- ``GET /stats``: each engine's counters (requests, prompt, cached, prefilled and re-prefilled
  tokens, decoded tokens, aborted, preempted, steps, busy time); ``POST /reset_stats`` zeroes them.

Run it alone with ``tessy bench --serve`` or ``python -m tessy.bench``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from .engine import SimEngine, SimParams, SimRequest, SimRequestError, make_engines
from .http import SSE_END, Connection, HttpError, HttpServer, Request, json_response, sse, sse_head
from .model import Workload
from .protocol import CompletionRequest, CompletionStream, completion_body, error_body

__all__ = ["READY_PREFIX", "SimServer", "serve"]

logger = logging.getLogger(__name__)

#: The line a parent process reads to learn where the server listens.
READY_PREFIX = "tessy-sim listening on "

_Endpoint = Callable[[dict[str, Any]], tuple[int, Any]]


class SimServer:
    """Serves simulated engines over HTTP on ``host:port`` (port 0: any free port)."""

    def __init__(self, engines: Mapping[str, SimEngine], *, host: str = "127.0.0.1", port: int = 0) -> None:
        if not engines:
            raise ValueError("serve at least one model")
        self.engines = dict(engines)
        self._http = HttpServer(self._dispatch, error_body, host=host, port=port)
        self.started = time.time()
        self._routes: dict[tuple[str, str], _Endpoint] = {
            ("GET", "/health"): self._health,
            ("GET", "/v1/models"): self._models,
            ("GET", "/stats"): self._stats,
            ("POST", "/reset_stats"): self._reset_stats,
            ("POST", "/reset_prefix_cache"): self._reset_prefix_cache,
            ("POST", "/tokenize"): self._tokenize,
            ("POST", "/detokenize"): self._detokenize,
        }

    @property
    def host(self) -> str:
        return self._http.host

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        """The base URL of the OpenAI API (``http://host:port/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> SimServer:
        await self._http.start()
        logger.info("simulated server on %s serving %s", self.url, ", ".join(self.engines))
        return self

    async def aclose(self) -> None:
        """Stop listening, end every request (as aborted) and close every connection."""
        self._http.stop_listening()
        for engine in self.engines.values():
            await engine.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _dispatch(self, request: Request, conn: Connection) -> bool:
        """Answer one request; ``False`` when the connection must close."""
        key = (request.method, request.path)
        try:
            if key == ("POST", "/v1/completions"):
                return await self._completions(request, conn)
            handler = self._routes.get(key)
            if handler is None:
                if request.path == "/v1/completions" or any(path == request.path for _, path in self._routes):
                    raise HttpError(405, f"{request.method} is not allowed on {request.path}")
                raise HttpError(404, f"no route {request.path}")
            status, payload = handler(request.json() if request.method == "POST" else {})
        except HttpError as exc:
            status, payload = exc.status, error_body(exc)
        await conn.send(json_response(status, payload, request.keep_alive))
        return True

    # -- small endpoints -------------------------------------------------------------------

    def _health(self, _: dict[str, Any]) -> tuple[int, Any]:
        return 200, {}

    def _models(self, _: dict[str, Any]) -> tuple[int, Any]:
        data = [
            {
                "id": name,
                "object": "model",
                "created": int(self.started),
                "owned_by": "tessy-sim",
                "root": name,
                "max_model_len": e.params.max_model_len,
            }
            for name, e in self.engines.items()
        ]
        return 200, {"object": "list", "data": data}

    def _stats(self, _: dict[str, Any]) -> tuple[int, Any]:
        first = next(iter(self.engines.values()))
        return 200, {
            "models": {name: e.snapshot() for name, e in self.engines.items()},
            "params": asdict(first.params),
            "workload": asdict(first.model.workload),
        }

    def _reset_stats(self, _: dict[str, Any]) -> tuple[int, Any]:
        for e in self.engines.values():
            e.reset_stats()
        return 200, {}

    def _reset_prefix_cache(self, _: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"dropped_blocks": {name: e.reset_prefix_cache() for name, e in self.engines.items()}}

    def _engine_for(self, body: dict[str, Any]) -> SimEngine:
        model = body.get("model") or next(iter(self.engines))
        if model not in self.engines:
            raise HttpError(404, f"The model `{model}` does not exist.", "model")
        return self.engines[model]

    def _tokenize(self, body: dict[str, Any]) -> tuple[int, Any]:
        engine = self._engine_for(body)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise HttpError(400, "prompt must be a string", "prompt")
        tokens = engine.tok.encode(prompt)
        return 200, {"count": len(tokens), "max_model_len": engine.params.max_model_len, "tokens": tokens}

    def _detokenize(self, body: dict[str, Any]) -> tuple[int, Any]:
        engine = self._engine_for(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise HttpError(400, "tokens must be a list of integers", "tokens")
        try:
            return 200, {"prompt": engine.tok.decode(tokens)}
        except ValueError as exc:
            raise HttpError(400, str(exc), "tokens") from None

    # -- completions -----------------------------------------------------------------------

    async def _completions(self, request: Request, conn: Connection) -> bool:
        spec = CompletionRequest(request.json(), self.engines)
        engine = self.engines[spec.model]
        gone = asyncio.Event()
        current: list[SimRequest] = []

        async def watch() -> None:
            await conn.wait_closed_by_client()
            gone.set()
            for r in current:
                engine.abort(r)

        watcher = asyncio.create_task(watch())
        try:
            try:
                r = await engine.submit(
                    spec.prompt,
                    max_tokens=spec.max_tokens,
                    stop=spec.stop,
                    stop_token_ids=spec.stop_token_ids,
                    ignore_eos=spec.ignore_eos,
                    min_tokens=spec.min_tokens,
                    seed=spec.seed,
                    include_stop_str_in_output=spec.include_stop,
                )
            except SimRequestError as exc:
                raise HttpError(exc.status, str(exc), "prompt") from None
            current.append(r)
            if gone.is_set():
                engine.abort(r)
            if spec.stream:
                return await self._stream(CompletionStream(spec, engine, r), conn, gone)
            while not r.done:
                await r.updated.wait()
                r.updated.clear()
            if gone.is_set() or r.finish_reason == "abort":
                return False
            await conn.send(json_response(200, completion_body(spec, engine, r), request.keep_alive))
            return True
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _stream(self, stream: CompletionStream, conn: Connection, gone: asyncio.Event) -> bool:
        r = stream.request
        try:
            conn.writer.write(sse_head())
            while True:
                await r.updated.wait()
                r.updated.clear()
                if gone.is_set() or r.finish_reason == "abort":
                    return False
                chunk = stream.next_chunk()
                if chunk is None:
                    continue
                await conn.send(sse(chunk))
                if r.done:
                    break
            usage = stream.usage_chunk()
            await conn.send((sse(usage) if usage is not None else b"") + sse(b"[DONE]") + SSE_END)
            return True
        except (ConnectionError, OSError):
            stream.engine.abort(r)
            return False


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    params: SimParams | None = None,
    workload: Workload | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until cancelled or sent SIGINT / SIGTERM; ``on_ready`` receives the base URL."""
    server = await SimServer(make_engines(params, workload), host=host, port=port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        on_ready(server.url)
    try:
        await stop.wait()
    finally:
        await server.aclose()
