"""Where the simulated servers are: the two transports a benchmark runs over.

- :class:`InProcess`: the engines live in this process; tessy reaches them through
  :class:`~tessy.bench.backend.SimBackend` (no HTTP), on whatever clock the loop keeps.
- :class:`Http`: a server in a subprocess (:func:`server_process`), reached through tessy's
  own OpenAI-compatible backend, exactly as a real server would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from ..backends.base import Backend
from ..config import OpenAIRole, RoleConfig
from ..errors import TessyError
from .backend import SimBackend
from .engine import SimEngine
from .server import READY_PREFIX
from .settings import BenchConfig, Transport

__all__ = ["Http", "InProcess", "Stats", "Target", "server_process"]

#: Each served model's counters (see :meth:`SimEngine.snapshot`).
Stats = dict[str, dict[str, float]]
#: Where the tessy package lies, so that the server subprocess imports the same code.
_SRC = str(Path(__file__).resolve().parents[2])


class Target(Protocol):
    """The servers a benchmark runs against."""

    transport: Transport
    #: The base URL the roles' configs point at.
    url: str

    def backend(self, role: RoleConfig) -> Backend | None:
        """The backend that replaces the role's configured one, or ``None`` to build that."""
        ...

    async def stats(self) -> Stats: ...

    async def reset(self) -> None:
        """Empty the servers' prefix caches."""
        ...

    def server_cpu(self, stats: Stats) -> float:
        """CPU seconds the servers spent inside this process (0 when they run elsewhere)."""
        ...

    async def aclose(self) -> None: ...


class InProcess:
    transport: Transport = "in-process"
    #: Never dialled: every role's backend is replaced by one wired to its engine.
    url = "http://in-process.invalid/v1"

    def __init__(self, engines: dict[str, SimEngine]) -> None:
        self.engines = engines

    def backend(self, role: RoleConfig) -> Backend:
        if not isinstance(role, OpenAIRole) or role.model not in self.engines:
            raise TessyError(f"no simulated engine serves this role ({role.backend} backend)")
        return SimBackend(self.engines[role.model], max_concurrency=role.max_concurrency)

    async def stats(self) -> Stats:
        return {name: e.snapshot() for name, e in self.engines.items()}

    async def reset(self) -> None:
        for e in self.engines.values():
            e.reset_prefix_cache()

    def server_cpu(self, stats: Stats) -> float:
        return sum(s["cpu_s"] for s in stats.values())

    async def aclose(self) -> None:
        for e in self.engines.values():
            await e.aclose()


class Http:
    transport: Transport = "http"

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url
        self._client = httpx.AsyncClient(base_url=url.removesuffix("/v1"), timeout=30)

    def backend(self, role: RoleConfig) -> None:
        return None  # the configured one: tessy's OpenAI-compatible backend at self.url

    async def stats(self) -> Stats:
        response = await self._client.get("/stats")
        response.raise_for_status()
        return dict(response.json()["models"])

    async def reset(self) -> None:
        (await self._client.post("/reset_prefix_cache")).raise_for_status()

    def server_cpu(self, stats: Stats) -> float:
        return 0.0

    async def aclose(self) -> None:
        await self._client.aclose()


@contextlib.asynccontextmanager
async def server_process(config: BenchConfig) -> AsyncIterator[str]:
    """A simulated server in a subprocess (its own CPU, as a real server has); yields its URL."""
    w = config.workload
    cmd = [
        sys.executable,
        "-m",
        "tessy.bench",
        "--params",
        json.dumps(asdict(config.params)),
        "--think",
        f"{w.think_tokens[0]},{w.think_tokens[1]}",
        "--answer",
        f"{w.answer_tokens[0]},{w.answer_tokens[1]}",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, env.get("PYTHONPATH", "")) if p)
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode().strip()
        if not line.startswith(READY_PREFIX):
            raise TessyError(f"the simulated server did not start (it said {line!r})")
        yield line[len(READY_PREFIX) :]
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
