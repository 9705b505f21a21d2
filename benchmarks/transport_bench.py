"""Client CPU per streamed event for each HTTP transport: httpx, tessy's own HTTP/1.1 client
(``tessy.backends.http1``, what ``backend: openai`` uses for plain-HTTP completions) and, when
it is installed, aiohttp.

A fast simulated vLLM-like server (``python -m tessy.bench``, its own process, 2 ms decode steps)
streams completions; each transport streams ``--samples`` of them (``--concurrency`` at once),
reading the SSE bytes and counting ``data:`` events (no parsing: the transport alone). ``abort``
rows close each stream after 20 events, as a cut does. Two repetitions each; CPU is this process's.

Run: ``PYTHONPATH=src python benchmarks/transport_bench.py [--samples 256] [--concurrency 32]``.
The last lines are ``name value`` pairs (microseconds of client CPU per event, the better run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from scale_bench import start_server

from tessy.backends.http1 import post_stream

MAX_TOKENS = 120
ABORT_AFTER = 20  # events read before an "abort" row closes its stream, as a cut does
Runner = Callable[[str, bytes, int, int, bool], Awaitable[int]]


async def _gather(samples: int, concurrency: int, one: Callable[[], Awaitable[int]]) -> int:
    slots = asyncio.Semaphore(concurrency)

    async def bounded() -> int:
        async with slots:
            return await one()

    return sum(await asyncio.gather(*(bounded() for _ in range(samples))))


async def run_httpx(url: str, body: bytes, samples: int, concurrency: int, abort: bool) -> int:
    import httpx

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> int:
            n = 0
            headers = {"Content-Type": "application/json"}
            async with client.stream("POST", url, content=body, headers=headers) as response:
                async for chunk in response.aiter_bytes():
                    n += chunk.count(b"data:")
                    if abort and n >= ABORT_AFTER:
                        break
            return n

        return await _gather(samples, concurrency, one)


async def run_aiohttp(url: str, body: bytes, samples: int, concurrency: int, abort: bool) -> int:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2)) as session:

        async def one() -> int:
            n = 0
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                async for chunk in response.content.iter_any():
                    n += chunk.count(b"data:")
                    if abort and n >= ABORT_AFTER:
                        response.close()
                        break
            return n

        return await _gather(samples, concurrency, one)


async def run_http1(url: str, body: bytes, samples: int, concurrency: int, abort: bool) -> int:
    async def one() -> int:
        n = 0
        response = await post_stream(url, body, {"Content-Type": "application/json"}, connect_timeout=10, timeout=60)
        try:
            async for chunk in response.reads(60):
                n += chunk.count(b"data:")
                if abort and n >= ABORT_AFTER:
                    break
        finally:
            response.close()
        return n

    return await _gather(samples, concurrency, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    runners: dict[str, Runner] = {"httpx": run_httpx, "http1": run_http1}
    try:
        import aiohttp  # noqa: F401

        runners["aiohttp"] = run_aiohttp
    except ImportError:
        print("aiohttp is not installed: its rows are left out (pip install aiohttp to compare)")
    proc, base = start_server({"decode_step_s": 0.002}, "400,800", "40,80")
    best: dict[str, float] = {}
    try:
        body: dict[str, Any] = {"model": "sim-teacher", "prompt": "What is 17 + 25?", "max_tokens": MAX_TOKENS}
        raw = json.dumps({**body, "stream": True, "temperature": 0.7}).encode()
        url = f"{base}/completions"
        for abort in (False, True):
            for name, runner in runners.items():
                for _ in range(2):
                    cpu, wall = time.process_time(), time.perf_counter()
                    events = asyncio.run(runner(url, raw, args.samples, args.concurrency, abort))
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                    us = 1e6 * cpu / max(events, 1)
                    key = f"{'abort' if abort else 'whole'}_{name}_us_per_event"
                    best[key] = min(best.get(key, float("inf")), us)
                    print(
                        f"{'abort' if abort else 'whole'} {name:8s} events {events:6d}  cpu {cpu:6.2f} s  "
                        f"wall {wall:6.2f} s  {us:7.1f} us/event"
                    )
    finally:
        proc.kill()
    for key, value in best.items():
        print(f"{key} {value:.1f}")


if __name__ == "__main__":
    main()
