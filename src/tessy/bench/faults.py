"""A proxy in front of an OpenAI-compatible server that injects faults, and can be taken down.

It forwards every request to ``upstream`` (a :class:`~tessy.bench.server.SimServer`, whose
output is a function of the prompt and seed, so a fault-free run is reproducible) and answers
a share ``rate`` of ``POST /v1/completions`` with a fault instead, drawn from a seeded generator:

``500`` and ``429`` (with ``Retry-After: 0``); ``hang`` (no answer for ``hang_s``, then the
connection closes); ``empty`` (a well-formed completion with no text and ``finish_reason:
"stop"``, no token counted: the fault that once ended thinking early); ``malformed`` (a body or
stream event that is not JSON); ``reset`` (the connection reset: at once, or in the middle of a
stream after a few events).

:meth:`FaultProxy.stop` and :meth:`FaultProxy.start` take the proxy down and bring it back on
the same port (an outage: connections are refused meanwhile). ``GET`` requests (``/health``,
``/v1/models``) are forwarded without faults while it is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
from collections import Counter
from collections.abc import Sequence

import httpx

__all__ = ["FAULT_KINDS", "FaultProxy"]

FAULT_KINDS = ("500", "429", "hang", "empty", "malformed", "reset")


class FaultProxy:
    """Forwards to ``upstream`` (``http://host:port``), answering ``rate`` of completions with faults."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.1,
        kinds: Sequence[str] = FAULT_KINDS,
        seed: int = 0,
        hang_s: float = 2.0,
        port: int = 0,
    ) -> None:
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.rate = rate
        self.kinds = tuple(kinds)
        self.rng = random.Random(seed)
        self.hang_s = hang_s
        self.port = port
        #: Faults injected, by kind, and completions forwarded.
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._client: httpx.AsyncClient | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FaultProxy:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.upstream, timeout=None)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and reset every open connection (the server "dies")."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            _reset(writer)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def aclose(self) -> None:
        await self.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _fault(self) -> str | None:
        return self.rng.choice(self.kinds) if self.rng.random() < self.rate else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        assert self._client is not None
        if method != "POST" or path != "/v1/completions":
            response = await self._client.request(method, path, content=body or None)
            _answer(writer, response.status_code, response.content, response.headers.get("content-type", ""))
            await writer.drain()
            return True
        request = json.loads(body)
        stream = bool(request.get("stream"))
        fault = self._fault()
        if fault is not None:
            self.injected[fault] += 1
        if fault in ("500", "429"):
            error = {"error": {"message": f"injected {fault}", "type": "fault", "code": int(fault)}}
            extra = "Retry-After: 0\r\n" if fault == "429" else ""
            _answer(writer, int(fault), json.dumps(error).encode(), "application/json", extra)
        elif fault == "hang":
            await asyncio.sleep(self.hang_s)
            return False
        elif fault == "reset" and not stream:
            _reset(writer)
            return False
        elif fault == "empty":
            choice = {"index": 0, "text": "", "finish_reason": "stop", "stop_reason": None}
            usage = {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}
            if stream:
                events = [{"choices": [choice]}, {"choices": [], "usage": usage}]
                data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
                _answer(writer, 200, data, "text/event-stream")
            else:
                _answer(writer, 200, json.dumps({"choices": [choice], "usage": usage}).encode(), "application/json")
        elif fault == "malformed":
            if stream:
                _answer(writer, 200, b'data: {"choices": [{"text": "x", \n\n', "text/event-stream")
            else:
                _answer(writer, 200, b'{"choices": [{"text": "x", ', "application/json")
        elif stream:
            return await self._forward_stream(body, writer, reset_after=3 if fault == "reset" else None)
        else:
            self.forwarded += 1
            response = await self._client.post("/v1/completions", content=body)
            _answer(writer, response.status_code, response.content, response.headers.get("content-type", ""))
        await writer.drain()
        return True

    async def _forward_stream(self, body: bytes, writer: asyncio.StreamWriter, *, reset_after: int | None) -> bool:
        assert self._client is not None
        self.forwarded += 1
        headers = {"content-type": "application/json"}
        async with self._client.stream("POST", "/v1/completions", content=body, headers=headers) as response:
            writer.write(
                f"HTTP/1.1 {response.status_code} X\r\nContent-Type: text/event-stream\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            events = 0
            async for line in response.aiter_lines():
                writer.write(line.encode() + b"\n")
                if line.startswith("data:"):
                    events += 1
                    if reset_after is not None and events >= reset_after:
                        await writer.drain()
                        _reset(writer)
                        return False
                await writer.drain()
        return False  # the stream's end is the connection's


def _answer(writer: asyncio.StreamWriter, status: int, data: bytes, ctype: str, extra: str = "") -> None:
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: {ctype or 'application/json'}\r\n"
        f"Content-Length: {len(data)}\r\n{extra}\r\n"
    )
    writer.write(head.encode() + data)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server's kernel does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
