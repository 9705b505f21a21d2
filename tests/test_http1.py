"""The lean HTTP/1.1 stream client: framing, timeouts and broken connections, byte-exact."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tessy.backends.http1 import Http1Client, Http1Stream, _Buffered, plain_http, post_stream

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(script: Script) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/completions"


async def fetch(script: Script, timeout: float = 2.0) -> tuple[Http1Stream, list[bytes]]:
    server, url = await serve(script)
    try:
        response = await post_stream(url, b"{}", {"Accept": "text/event-stream"}, connect_timeout=2, timeout=timeout)
        try:
            reads = [part async for part in response.reads(timeout)]
        finally:
            response.close()
        return response, reads
    finally:
        server.close()


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def test_a_chunked_body_split_at_every_byte_comes_back_exactly():
    body = b'data: {"text": "a"}\n\ndata: {"text": " b\\r\\n"}\n\ndata: [DONE]\n\n'
    wire = chunked(body, 7)
    for cut in range(1, len(wire)):
        stream = Http1Stream(_Buffered(), 200, "OK", {"transfer-encoding": "chunked"}, b"")
        out = stream._dechunk(wire[:cut]) + stream._dechunk(wire[cut:])
        assert out == body and stream.complete, cut


def test_a_streamed_chunked_response_is_read_as_it_comes():
    body = b"".join(f'data: {{"text": "{i}"}}\n\n'.encode() for i in range(50))

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        wire = chunked(body, 13)
        for i in range(0, len(wire), 5):
            writer.write(wire[i : i + 5])
            await writer.drain()
            await asyncio.sleep(0)

    response, reads = asyncio.run(fetch(script))
    assert response.status == 200 and response.headers["content-type"] == "text/event-stream"
    assert b"".join(reads) == body and all(reads) and response.complete


@pytest.mark.parametrize("framing", ["content-length", "close"])
def test_bodies_of_a_given_length_or_up_to_the_close(framing):
    body = b'{"error": {"message": "too many requests"}}'
    length = f"content-length: {len(body)}\r\n" if framing == "content-length" else ""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\n{length}\r\n".encode() + body)
        await writer.drain()

    response, reads = asyncio.run(fetch(script))
    assert (response.status, response.reason, response.headers["retry-after"]) == (429, "Too Many Requests", "3")
    assert b"".join(reads) == body


def test_a_stream_that_stalls_times_out():
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(b"data: 1\n\n", 100)[:-5])
        await writer.drain()
        await asyncio.sleep(1.0)

    with pytest.raises(TimeoutError):
        asyncio.run(fetch(script, timeout=0.2))


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: 1",  # closed in a chunk
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort",  # closed before the length
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",  # a chunk size that is none
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
        b"",  # no response at all
    ],
)
def test_broken_or_foreign_responses_are_connection_errors(wire):
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(wire)
        await writer.drain()

    with pytest.raises(ConnectionError):
        asyncio.run(fetch(script))


def test_a_refused_connection_is_a_connection_error():
    from fault_server import dead_url

    async def go() -> None:
        await post_stream(f"{dead_url()}/completions", b"{}", {}, connect_timeout=2, timeout=2)

    with pytest.raises(ConnectionError):
        asyncio.run(go())


def test_only_plain_http_without_a_proxy_goes_over_the_lean_client(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert plain_http("http://10.0.0.5:8000/v1")
    assert not plain_http("https://api.example.com/v1")
    assert not plain_http("http://user:secret@10.0.0.5:8000/v1")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert not plain_http("http://10.0.0.5:8000/v1")
    monkeypatch.setenv("NO_PROXY", "10.0.0.5")
    assert plain_http("http://10.0.0.5:8000/v1")


def test_whole_responses_reuse_their_connection_and_a_stale_one_is_replaced():
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        mine = len(connections)
        answered = 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if mine == 1 and answered == 2:
                    return  # closes without an answer: a keep-alive timeout that raced the request
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
                answered += 1
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def go() -> list[bytes]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/completions"
        client = Http1Client()
        bodies = []
        try:
            for _ in range(4):
                response = await client.post(url, b"{}", {}, connect_timeout=2, timeout=2, reuse=True)
                bodies.append(await response.read(2))
                client.release(response)
        finally:
            client.close()
            server.close()
        return bodies

    assert asyncio.run(go()) == [b"ok"] * 4
    assert len(connections) == 2  # two answers on the first, then the stale one replaced once
