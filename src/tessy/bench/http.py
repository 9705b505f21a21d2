"""A minimal HTTP/1.1 server on plain asyncio, just enough for the simulated server.

Keep-alive connections, ``content-length`` request bodies (no chunked uploads) and responses
written whole (:func:`json_response`) or as Server-Sent Events over chunked encoding
(:func:`sse_head`, :func:`sse`, :data:`SSE_END`). It knows nothing of what it serves: a
:data:`Handler` answers each request, and an error formatter writes the body of the errors
that come up before a request reaches it (a malformed request line, headers too large).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SSE_END",
    "Connection",
    "ErrorBody",
    "Handler",
    "HttpError",
    "HttpServer",
    "Request",
    "json_response",
    "sse",
    "sse_head",
]

_MAX_HEADER = 64 * 1024
_MAX_BODY = 256 * 1024 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}


class HttpError(Exception):
    """A request the server answers with an error ``status``; ``param`` names the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (an empty body is ``{}``)."""
        try:
            body = json.loads(self.body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        return body


class Connection:
    """One client connection: requests read in turn, bytes read ahead kept for the next one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._pending = bytearray()

    async def read_request(self) -> Request | None:
        """The next request, or ``None`` when the client closed the connection between requests."""
        pending = self._pending
        while b"\r\n\r\n" not in pending:
            if len(pending) > _MAX_HEADER:
                raise HttpError(413, "request headers too large")
            chunk = await self.reader.read(65536)
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
            raise HttpError(400, f"malformed request line {lines[0]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise HttpError(400, "chunked request bodies are not supported; send content-length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "bad content-length") from None
        if length > _MAX_BODY:
            raise HttpError(413, "request body too large")
        body = bytearray(rest)
        while len(body) < length:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("the client closed mid-request")
            body += chunk
        pending[:] = body[length:]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version.upper() == "HTTP/1.1" or connection == "keep-alive")
        return Request(method.upper(), target.split("?", 1)[0], headers, bytes(body[:length]), keep_alive)

    async def wait_closed_by_client(self) -> None:
        """Read ahead while a response is under way; return when the client goes away.

        What is read is kept for the next request (a pipelining client), so only the end of
        the stream tells: a client that disconnects mid-response."""
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            self._pending.extend(data)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


#: Answers one request on its connection; returns ``False`` when the connection must close.
Handler = Callable[[Request, Connection], Awaitable[bool]]
#: The JSON body of an error response.
ErrorBody = Callable[[HttpError], Any]


def _head(status: int, content_type: str, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\ncontent-type: {content_type}\r\n{extra}".encode()


def json_response(status: int, payload: Any, keep_alive: bool) -> bytes:
    """A whole response with a JSON body."""
    body = json.dumps(payload).encode()
    conn = "keep-alive" if keep_alive else "close"
    return _head(status, "application/json", f"content-length: {len(body)}\r\nconnection: {conn}\r\n\r\n") + body


def sse_head() -> bytes:
    """The head of a Server-Sent Events response; events follow as chunks."""
    return _head(
        200, "text/event-stream; charset=utf-8", "transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def sse(payload: Any) -> bytes:
    """One ``data:`` event (JSON, or bytes as they are) as one chunk."""
    return _chunk(b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode()) + b"\n\n")


#: The last chunk of a chunked response.
SSE_END = _chunk(b"")


class HttpServer:
    """Serves ``handler`` on ``host:port`` (port 0: any free port) until :meth:`aclose`."""

    def __init__(self, handler: Handler, error_body: ErrorBody, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.error_body = error_body
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        self.stop_listening()
        # Closing a connection's transport ends its handler at its next read or write; cancelling
        # the handler instead would make asyncio log the cancellation as an error.
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        conn = Connection(reader, writer)
        try:
            while True:
                try:
                    request = await conn.read_request()
                except HttpError as exc:
                    await conn.send(json_response(exc.status, self.error_body(exc), False))
                    return
                if request is None:
                    return
                keep = await self.handler(request, conn)
                if not keep or not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
