"""A local OpenAI-compatible server over simulated engines, speaking vLLM's ``/v1/completions``.

Plain asyncio (HTTP/1.1 with keep-alive; Server-Sent Events over chunked encoding), no
dependency. Each served model name has its own :class:`SimEngine` (as if on its own GPU).

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

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .engine import SimEngine, SimParams, SimRequest, SimRequestError
from .model import STUDENT, TEACHER, FakeModel, ModelProfile, Workload, sim_tokenizer

__all__ = ["SimServer", "main", "make_engines"]

logger = logging.getLogger(__name__)

_MAX_HEADER = 64 * 1024
_MAX_BODY = 256 * 1024 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 413: "BadRequestError"}


def make_engines(
    params: SimParams | None = None,
    workload: Workload | None = None,
    models: Mapping[str, ModelProfile] | None = None,
) -> dict[str, SimEngine]:
    """One engine per model name (default: ``sim-teacher`` and ``sim-student``)."""
    tok = sim_tokenizer()
    chosen = models or {"sim-teacher": TEACHER, "sim-student": STUDENT}
    return {name: SimEngine(FakeModel(name, p, workload or Workload(), tok), params) for name, p in chosen.items()}


class _HttpError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


async def _read_request(reader: asyncio.StreamReader, pending: bytearray) -> _Request | None:
    while b"\r\n\r\n" not in pending:
        if len(pending) > _MAX_HEADER:
            raise _HttpError(413, "request headers too large")
        chunk = await reader.read(65536)
        if not chunk:
            if pending.strip():
                raise ConnectionError("the client closed mid-request")
            return None
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise _HttpError(400, f"malformed request line {lines[0]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _HttpError(400, "chunked request bodies are not supported; send content-length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _HttpError(400, "bad content-length") from None
    if length > _MAX_BODY:
        raise _HttpError(413, "request body too large")
    body = bytearray(rest)
    while len(body) < length:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("the client closed mid-request")
        body += chunk
    pending[:] = body[length:]
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and (version.upper() == "HTTP/1.1" or connection == "keep-alive")
    return _Request(method.upper(), target.split("?", 1)[0], headers, bytes(body[:length]), keep_alive)


def _head(status: int, content_type: str, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: {content_type}\r\n{extra}").encode()


def _json_response(status: int, payload: Any, keep_alive: bool) -> bytes:
    body = json.dumps(payload).encode()
    conn = "keep-alive" if keep_alive else "close"
    return _head(status, "application/json", f"content-length: {len(body)}\r\nconnection: {conn}\r\n\r\n") + body


def _error_payload(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _sse(payload: Any) -> bytes:
    return _chunk(b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n")


class _Completion:
    """A validated ``/v1/completions`` request."""

    def __init__(self, body: dict[str, Any], models: Mapping[str, SimEngine]) -> None:
        model = body.get("model")
        if model is None:
            model = next(iter(models))
        if not isinstance(model, str) or model not in models:
            raise _HttpError(404, f"The model `{model}` does not exist.", "model")
        self.model = model
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            self.prompt: str | list[int] = prompt
        elif (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            self.prompt = list(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
            raise _HttpError(400, "this simulated server takes one prompt per request", "prompt")
        else:
            raise _HttpError(400, "prompt must be a string or a non-empty list of token ids", "prompt")
        self.max_tokens = self._int(body, "max_tokens", 16, minimum=1)
        n = self._int(body, "n", 1, minimum=1)
        if n != 1:
            raise _HttpError(400, "this simulated server returns one choice (n=1)", "n")
        if body.get("echo"):
            raise _HttpError(400, "echo is not supported by this simulated server", "echo")
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _HttpError(400, "stop must be a string or a list of strings", "stop")
        self.stop: list[str] = stop
        stop_ids = body.get("stop_token_ids") or []
        if not isinstance(stop_ids, list) or not all(isinstance(t, int) for t in stop_ids):
            raise _HttpError(400, "stop_token_ids must be a list of integers", "stop_token_ids")
        self.stop_token_ids: list[int] = stop_ids
        self.min_tokens = self._int(body, "min_tokens", 0, minimum=0)
        self.ignore_eos = bool(body.get("ignore_eos", False))
        self.include_stop = bool(body.get("include_stop_str_in_output", False))
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise _HttpError(400, "seed must be an integer", "seed")
        self.seed: int | None = seed
        for name in ("temperature", "top_p", "min_p", "top_k", "repetition_penalty"):
            value = body.get(name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise _HttpError(400, f"{name} must be a number", name)
        self.logprobs = self._optional_int(body, "logprobs")
        self.prompt_logprobs = self._optional_int(body, "prompt_logprobs")
        self.return_token_ids = bool(body.get("return_token_ids", False))
        self.stream = bool(body.get("stream", False))
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise _HttpError(400, "stream_options must be an object", "stream_options")
        if options and not self.stream:
            raise _HttpError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
        self.include_usage = bool(options.get("include_usage", False))
        self.continuous_usage = bool(options.get("continuous_usage_stats", False))

    @staticmethod
    def _int(body: dict[str, Any], name: str, default: int, *, minimum: int) -> int:
        value = body.get(name, default)
        if value is None:
            value = default
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise _HttpError(400, f"{name} must be an integer of at least {minimum}", name)
        return value

    @staticmethod
    def _optional_int(body: dict[str, Any], name: str) -> int | None:
        value = body.get(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20:
            raise _HttpError(400, f"{name} must be an integer from 0 to 20", name)
        return value


class SimServer:
    """Serves simulated engines over HTTP on ``host:port`` (port 0: any free port)."""

    def __init__(self, engines: Mapping[str, SimEngine], *, host: str = "127.0.0.1", port: int = 0) -> None:
        if not engines:
            raise ValueError("serve at least one model")
        self.engines = dict(engines)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.started = time.time()

    @property
    def url(self) -> str:
        """The base URL of the OpenAI API (``http://host:port/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> SimServer:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("simulated server on %s serving %s", self.url, ", ".join(self.engines))
        return self

    async def aclose(self) -> None:
        """Stop listening, end every request (as aborted) and close every connection."""
        if self._server is not None:
            self._server.close()
        for engine in self.engines.values():
            await engine.aclose()
        # Closing a connection's transport ends its handler at its next read or write; cancelling
        # the handler instead would make asyncio log the cancellation as an error.
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- connections ---------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        pending = bytearray()
        try:
            while True:
                try:
                    request = await _read_request(reader, pending)
                except _HttpError as exc:
                    writer.write(_json_response(exc.status, _error_payload(exc.status, str(exc)), False))
                    await writer.drain()
                    return
                if request is None:
                    return
                keep = await self._dispatch(request, reader, writer, pending)
                if not keep or not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _dispatch(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: bytearray
    ) -> bool:
        """Answer one request; ``False`` when the connection must close."""
        routes = {
            ("POST", "/v1/completions"): None,
            ("GET", "/health"): self._health,
            ("GET", "/v1/models"): self._models,
            ("GET", "/stats"): self._stats,
            ("POST", "/reset_stats"): self._reset_stats,
            ("POST", "/reset_prefix_cache"): self._reset_prefix_cache,
            ("POST", "/tokenize"): self._tokenize,
            ("POST", "/detokenize"): self._detokenize,
        }
        key = (request.method, request.path)
        try:
            if key == ("POST", "/v1/completions"):
                return await self._completions(request, reader, writer, pending)
            handler = routes.get(key)
            if handler is None:
                if any(path == request.path for _, path in routes):
                    raise _HttpError(405, f"{request.method} is not allowed on {request.path}")
                raise _HttpError(404, f"no route {request.path}")
            status, payload = handler(_body(request) if request.method == "POST" else {})
        except _HttpError as exc:
            status, payload = exc.status, _error_payload(exc.status, str(exc), exc.param)
        writer.write(_json_response(status, payload, request.keep_alive))
        await writer.drain()
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
            raise _HttpError(404, f"The model `{model}` does not exist.", "model")
        return self.engines[model]

    def _tokenize(self, body: dict[str, Any]) -> tuple[int, Any]:
        engine = self._engine_for(body)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise _HttpError(400, "prompt must be a string", "prompt")
        tokens = engine.tok.encode(prompt)
        return 200, {"count": len(tokens), "max_model_len": engine.params.max_model_len, "tokens": tokens}

    def _detokenize(self, body: dict[str, Any]) -> tuple[int, Any]:
        engine = self._engine_for(body)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise _HttpError(400, "tokens must be a list of integers", "tokens")
        try:
            return 200, {"prompt": engine.tok.decode(tokens)}
        except ValueError as exc:
            raise _HttpError(400, str(exc), "tokens") from None

    # -- completions -----------------------------------------------------------------------

    async def _completions(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: bytearray
    ) -> bool:
        spec = _Completion(_body(request), self.engines)
        engine = self.engines[spec.model]
        gone = asyncio.Event()
        current: list[SimRequest] = []

        async def watch() -> None:
            """Read ahead on the connection: end of stream means the client went away."""
            while True:
                data = await reader.read(65536)
                if not data:
                    gone.set()
                    for r in current:
                        engine.abort(r)
                    return
                pending.extend(data)

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
                raise _HttpError(exc.status, str(exc), "prompt") from None
            current.append(r)
            if gone.is_set():
                engine.abort(r)
            if spec.stream:
                return await self._stream(spec, engine, r, writer, gone)
            while not r.done:
                await r.updated.wait()
                r.updated.clear()
            if gone.is_set() or r.finish_reason == "abort":
                return False
            payload = self._response(spec, engine, r)
            writer.write(_json_response(200, payload, request.keep_alive))
            await writer.drain()
            return True
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def _envelope(self, spec: _Completion, rid: str, created: int) -> dict[str, Any]:
        return {"id": rid, "object": "text_completion", "created": created, "model": spec.model}

    def _usage(self, r: SimRequest, n_tokens: int | None = None) -> dict[str, Any]:
        completion = len(r.output_ids) if n_tokens is None else n_tokens
        return {
            "prompt_tokens": len(r.prompt_ids),
            "total_tokens": len(r.prompt_ids) + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens},
        }

    def _logprobs(self, engine: SimEngine, r: SimRequest, start: int, end: int, k: int, offset: int) -> dict[str, Any]:
        tokens: list[str] = []
        token_logprobs: list[float] = []
        top: list[dict[str, float]] = []
        offsets: list[int] = []
        n_prompt = len(r.prompt_ids)
        for i in range(start, end):
            prev = r.all_ids[n_prompt + i - 1]
            tid = r.output_ids[i]
            ranked = engine.model.top_logprobs(prev, tid, k)
            text = engine.tok.piece(tid)
            tokens.append(text)
            token_logprobs.append(ranked[0][1])
            top.append({engine.tok.piece(t): lp for t, lp in ranked})
            offsets.append(offset)
            offset += len(text)
        return {"text_offset": offsets, "token_logprobs": token_logprobs, "tokens": tokens, "top_logprobs": top}

    def _prompt_logprobs(self, engine: SimEngine, r: SimRequest, k: int) -> list[Any]:
        out: list[Any] = [None]
        ids = r.prompt_ids
        for i in range(1, len(ids)):
            ranked = engine.model.top_logprobs(ids[i - 1], ids[i], k)
            out.append(
                {
                    str(t): {"logprob": lp, "rank": rank, "decoded_token": engine.tok.piece(t)}
                    for rank, (t, lp) in enumerate(ranked, start=1)
                }
            )
        return out

    def _response(self, spec: _Completion, engine: SimEngine, r: SimRequest) -> dict[str, Any]:
        n = len(r.output_ids)
        choice = {
            "index": 0,
            "text": r.text,
            "logprobs": None if spec.logprobs is None else self._logprobs(engine, r, 0, n, spec.logprobs, 0),
            "finish_reason": r.finish_reason,
            "stop_reason": r.stop_reason,
            "token_ids": list(r.output_ids) if spec.return_token_ids else None,
            "prompt_logprobs": None
            if spec.prompt_logprobs is None
            else self._prompt_logprobs(engine, r, spec.prompt_logprobs),
            "prompt_token_ids": list(r.prompt_ids) if spec.return_token_ids else None,
        }
        return {
            **self._envelope(spec, f"cmpl-{uuid.uuid4().hex}", int(time.time())),
            "choices": [choice],
            "usage": self._usage(r),
            "system_fingerprint": None,
            "kv_transfer_params": None,
        }

    async def _stream(
        self, spec: _Completion, engine: SimEngine, r: SimRequest, writer: asyncio.StreamWriter, gone: asyncio.Event
    ) -> bool:
        envelope = self._envelope(spec, f"cmpl-{uuid.uuid4().hex}", int(time.time()))
        hold = 0 if spec.include_stop else max((len(s) for s in spec.stop), default=1) - 1
        sent_tokens = 0
        sent_text = 0
        try:
            writer.write(
                _head(
                    200,
                    "text/event-stream; charset=utf-8",
                    "transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n",
                )
            )
            while True:
                await r.updated.wait()
                r.updated.clear()
                if gone.is_set() or r.finish_reason == "abort":
                    return False
                n = len(r.output_ids)
                end_text = len(r.text) if r.done else max(sent_text, len(r.text) - hold)
                if n == sent_tokens and end_text == sent_text and not r.done:
                    continue
                choice: dict[str, Any] = {
                    "index": 0,
                    "text": r.text[sent_text:end_text],
                    "logprobs": None
                    if spec.logprobs is None
                    else self._logprobs(engine, r, sent_tokens, n, spec.logprobs, sent_text),
                    "finish_reason": r.finish_reason if r.done else None,
                    "stop_reason": r.stop_reason if r.done else None,
                    "token_ids": r.output_ids[sent_tokens:n] if spec.return_token_ids else None,
                    "prompt_token_ids": list(r.prompt_ids) if spec.return_token_ids and sent_tokens == 0 else None,
                }
                chunk = {**envelope, "choices": [choice], "usage": self._usage(r, n) if spec.continuous_usage else None}
                sent_tokens, sent_text = n, end_text
                writer.write(_sse(chunk))
                await writer.drain()
                if r.done:
                    break
            if spec.include_usage:
                writer.write(_sse({**envelope, "choices": [], "usage": self._usage(r)}))
            writer.write(_sse(b"[DONE]") + _chunk(b""))
            await writer.drain()
            return True
        except (ConnectionError, OSError):
            engine.abort(r)
            return False


def _body(request: _Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _HttpError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _HttpError(400, "the body must be a JSON object")
    return body


def _pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


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


#: The line a parent process reads to learn where the server listens.
READY_PREFIX = "tessy-sim listening on "


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tessy.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--params", default="{}", help="JSON overrides of SimParams, e.g. '{\"decode_step_s\": 0.02}'")
    parser.add_argument("--think", default="400,800", help="thinking tokens per sample, LO,HI")
    parser.add_argument("--answer", default="40,80", help="answer tokens per sample, LO,HI")
    args = parser.parse_args(argv)
    params = SimParams().with_overrides(json.loads(args.params))
    workload = Workload(_pair(args.think), _pair(args.answer))
    asyncio.run(serve(args.host, args.port, params, workload, lambda url: print(READY_PREFIX + url, flush=True)))


if __name__ == "__main__":
    main()
