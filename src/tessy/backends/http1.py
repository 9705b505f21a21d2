"""A lean HTTP/1.1 client for completions over plain ``http://``.

A stream costs the client one small Python step per network read here: the socket's bytes are
buffered by an :class:`asyncio.Protocol`, and the reader takes all that came since its last
read, strips the body's framing (chunked, ``content-length`` or up to the close) and hands the
body's bytes on. General clients (httpx on httpcore, h11 and anyio) spend several times that
per server-sent event, and a streaming client reads one event per token.

Each stream has its own connection, closed when the stream is (closing it is what aborts the
request on the server, so a stream stopped early could not give its connection back anyway);
whole responses go over keep-alive connections (:class:`Http1Client`). No request asks for a
compressed body. Failures are raised as built-in exceptions for the backend to translate: :class:`TimeoutError`
(no connection, or no bytes, within the timeout) and :class:`ConnectionError` (refused, lost,
or an answer that is not HTTP/1.x).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncGenerator, Mapping
from urllib.parse import SplitResult, urlsplit

__all__ = ["Http1Client", "Http1Stream", "plain_http", "post_stream"]

_MAX_HEAD = 64 * 1024
#: Reading pauses while this many received bytes wait for the reader.
_HIGH_WATER = 1 << 20


def plain_http(url: str) -> bool:
    """Whether ``url`` can go over this client: plain ``http://``, no credentials in it, and no
    proxy configured for it in the environment (httpx would use one; this client does not
    speak to proxies)."""
    if not url.startswith("http://") or "@" in urlsplit(url).netloc:
        return False  # TLS, or credentials in the URL (httpx sends them as basic auth)
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    host = urlsplit(url).hostname or ""
    return bool(urllib.request.proxy_bypass_environment(host, proxies))  # type: ignore[attr-defined]


class _Buffered(asyncio.Protocol):
    """The bytes a connection received that no one has read yet, and how it ended."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data: list[bytes] = []
        self.size = 0
        self.received = 0  # bytes since the last request went out on this connection
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        # The read timeout: one timer a connection, set again only when it fires (a timer per
        # read would cost more than the read).
        self.timeout = 0.0
        self.since = 0.0  # when the reader last began waiting or last got bytes
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data.append(data)
        self.size += len(data)
        self.received += len(data)
        if self.size > _HIGH_WATER and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.eof and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    def _check_timeout(self) -> None:
        """Fail the waiting read that has had no bytes for the timeout; else look again later."""
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return  # no read waits: the next one sets the timer again
        loop = asyncio.get_running_loop()
        due = self.since + self.timeout
        if loop.time() >= due:
            waiter.set_exception(TimeoutError("no bytes from the server within the read timeout"))
        else:
            self.timer = loop.call_at(due, self._check_timeout)

    async def read(self, timeout: float) -> bytes:
        """All bytes received since the last read (waiting up to ``timeout`` for some); ``b""``
        once the connection has ended."""
        if not self.data and not self.eof:
            loop = asyncio.get_running_loop()
            waiter = self.waiter = loop.create_future()
            self.since = loop.time()
            self.timeout = timeout
            if self.timer is None:
                self.timer = loop.call_at(self.since + timeout, self._check_timeout)
            try:
                await waiter
            finally:
                self.waiter = None
        if self.data:
            data = self.data[0] if len(self.data) == 1 else b"".join(self.data)
            self.data = []
            self.size = 0
            if self.paused and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()
            return data
        if self.error is not None:
            raise ConnectionError(f"the connection was lost ({self.error})")
        return b""


class Http1Stream:
    """One response, its status and headers read, its body still to come (:meth:`reads`)."""

    def __init__(self, conn: _Buffered, status: int, reason: str, headers: dict[str, str], rest: bytes) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        #: Header names in lower case.
        self.headers = headers
        self._rest = rest  # body bytes read with the head
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        try:
            self._left = int(length) if length is not None and not self._chunked else -1
        except ValueError:
            raise ConnectionError(f"malformed content-length {length!r}") from None
        self._raw = b""  # chunked framing not yet complete
        self._size = 0  # chunk bytes still to come; 0: a size line next; -1: the CRLF after a chunk
        self.complete = False
        #: Where it came from, and whether its connection may carry another request.
        self.netloc = ""
        self.keep_alive = False

    async def reads(self, timeout: float) -> AsyncGenerator[bytes, None]:
        """The body's bytes, one piece per network read (none empty), until the body ends."""
        data, self._rest = self._rest, b""
        while not self.complete:
            if not data:
                data = await self._conn.read(timeout)
                if not data:
                    if self._chunked or self._left > 0:
                        raise ConnectionError("the server closed the connection before the response ended")
                    self.complete = True  # a body that lasts until the close
                    return
            if self._chunked:
                body = self._dechunk(data)
            elif self._left >= 0:
                body = data[: self._left]
                self._left -= len(body)
                self.complete = self._left == 0
            else:
                body = data
            data = b""
            if body:
                yield body

    async def read(self, timeout: float) -> bytes:
        """The whole body."""
        return b"".join([part async for part in self.reads(timeout)])

    def _dechunk(self, data: bytes) -> bytes:
        if self.complete:
            return b""  # the trailers' end, which no one reads
        buf = self._raw + data if self._raw else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end:
            if self._size > 0:
                take = min(self._size, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._size -= take
                if not self._size:
                    self._size = -1
            elif self._size < 0:
                if end - pos < 2:
                    break
                pos += 2
                self._size = 0
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > 1024:
                        raise ConnectionError("malformed chunked body")
                    break
                try:
                    size = int(buf[pos:eol].split(b";", 1)[0], 16)
                except ValueError:
                    raise ConnectionError(f"malformed chunk size {buf[pos:eol][:40]!r}") from None
                pos = eol + 2
                if size == 0:
                    self.complete = True  # trailers, if any, are of no interest
                    break
                self._size = size
        self._raw = buf[pos:] if pos < end and not self.complete else b""
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        """Close the connection (mid-response, this aborts the request on the server)."""
        self._conn.close()


class Http1Client:
    """Requests over HTTP/1.1 connections of their own, but for whole responses read to their
    end on a keep-alive connection: that connection waits, idle, for the next request to the
    same host (:meth:`release`). A request that finds its idle connection closed by the server
    before any byte of an answer goes again on a new connection."""

    def __init__(self, max_idle: int = 64) -> None:
        self.max_idle = max_idle
        self._idle: dict[str, list[_Buffered]] = {}

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        timeout: float,
        reuse: bool = False,
    ) -> Http1Stream:
        """``POST body`` to ``url``; the response once its head has come. The caller closes it
        (:meth:`Http1Stream.close`) or, read to its end, gives it back (:meth:`release`).
        ``reuse``: an idle connection to the host may carry it."""
        parts = urlsplit(url)
        if reuse:
            idle = self._idle.get(parts.netloc)
            while idle:
                conn = idle.pop()
                if conn.eof or conn.data or conn.transport is None or conn.transport.is_closing():
                    conn.close()
                    continue
                conn.received = 0
                try:
                    return await _exchange(conn, parts, body, headers, timeout)
                except ConnectionError:
                    if conn.received:
                        raise
                    # Closed while idle (the server's keep-alive timeout): a new connection.
        return await _exchange(await _connect(parts, connect_timeout), parts, body, headers, timeout)

    def release(self, response: Http1Stream) -> None:
        """Keep the connection of a response read to its end for the next request, where the
        server keeps it open; close it otherwise."""
        conn = response._conn
        idle = self._idle.setdefault(response.netloc, [])
        if response.complete and response.keep_alive and not conn.eof and not conn.data and len(idle) < self.max_idle:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


async def post_stream(
    url: str, body: bytes, headers: Mapping[str, str], *, connect_timeout: float, timeout: float
) -> Http1Stream:
    """``POST body`` to ``url`` on a new connection; the response once its head has come. The
    caller closes it (:meth:`Http1Stream.close`)."""
    parts = urlsplit(url)
    return await _exchange(await _connect(parts, connect_timeout), parts, body, headers, timeout)


async def _connect(parts: SplitResult, connect_timeout: float) -> _Buffered:
    host = parts.hostname or "localhost"
    port = parts.port or 80
    loop = asyncio.get_running_loop()
    conn = _Buffered()
    try:
        await asyncio.wait_for(loop.create_connection(lambda: conn, host, port), connect_timeout)
    except asyncio.TimeoutError:
        raise TimeoutError(f"no connection to {host}:{port} within {connect_timeout} s") from None
    return conn


async def _exchange(
    conn: _Buffered, parts: SplitResult, body: bytes, headers: Mapping[str, str], timeout: float
) -> Http1Stream:
    """Send the request on ``conn``; the response once its head has come (``conn`` is closed
    if it fails)."""
    transport = conn.transport
    assert transport is not None
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > _MAX_HEAD:
                raise ConnectionError("the response's head is too large")
            data = await conn.read(timeout)
            if not data:
                raise ConnectionError("the server closed the connection without a response")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, _, status_reason = status_line.partition(" ")
        code, _, reason = status_reason.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ConnectionError(f"not an HTTP/1.x response: {status_line[:80]!r}")
        fields: dict[str, str] = {}
        for line in header_lines:
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        response = Http1Stream(conn, int(code), reason, fields, rest)
        response.netloc = parts.netloc
        response.keep_alive = (
            version == "HTTP/1.1"
            and fields.get("connection", "").lower() != "close"
            and all(k.lower() != "connection" or v.lower() != "close" for k, v in headers.items())
        )
        return response
    except BaseException:
        conn.close()
        raise
