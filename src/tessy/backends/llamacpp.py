"""Local llama.cpp servers for GGUF models, and the ``llamacpp`` backend that uses one.

:class:`LlamaServer` starts llama.cpp's own HTTP server (from the ``xllamacpp`` wheel) in a
child process on 127.0.0.1 and a free port, waits until it is healthy, and stops it on
:meth:`LlamaServer.stop`, on error, on Ctrl-C and even when this process is killed (the child
dies with its parent). The server's log goes to a temporary file that a clean stop removes; when
the server fails to start or dies, the file is kept and the error names it.
:class:`LlamaCppBackend` starts one lazily on first use and talks to it
through :class:`~tessy.backends.openai.OpenAICompletionsBackend`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx

from ..errors import ServerStartError
from ..models import resolve
from .base import Backend, GenerateRequest, Generation, StreamDelta
from .openai import OpenAICompletionsBackend

__all__ = ["LlamaCppBackend", "LlamaServer"]

logger = logging.getLogger(__name__)


class LlamaServer:
    """One llama.cpp server process serving one GGUF file."""

    def __init__(
        self,
        model: str | Path,
        *,
        alias: str = "model",
        n_ctx: int = 8192,
        n_parallel: int = 4,
        n_threads: int | None = None,
        startup_timeout_s: float = 180.0,
    ) -> None:
        self.model_path = resolve(str(model))
        self.alias = alias
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        # A run has two servers (teacher, student): by default each gets half the cores. llama.cpp's
        # threads wait on each other at every step, so oversubscribed cores slow it down many-fold.
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.startup_timeout_s = startup_timeout_s
        self.url: str | None = None  # the server's root, e.g. http://127.0.0.1:41941
        self.started_s: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._log: Any = None  # the server's stderr, a temporary file while it runs
        self.log_path: Path | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> str:
        """Start the server and wait until it answers; returns its root URL."""
        if self.url is not None and self.running:
            return self.url
        started = time.perf_counter()
        if self._log is None:
            self._log = tempfile.NamedTemporaryFile(prefix="tessy-llama-", suffix=".log", delete=False)  # noqa: SIM115
            self.log_path = Path(self._log.name)
        args = {
            "model": str(self.model_path),
            "alias": self.alias,
            "n_ctx": self.n_ctx,
            "n_parallel": self.n_parallel,
            "n_threads": self.n_threads,
        }
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tessy.backends.llamacpp_child",
            json.dumps(args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
        )
        try:
            assert self._proc.stdout is not None
            line = await asyncio.wait_for(self._proc.stdout.readline(), self.startup_timeout_s)
            try:
                info: dict[str, Any] = json.loads(line) if line.strip() else {}
            except ValueError:
                info = {}
            if "url" not in info:
                reason = info.get("error") or f"it exited with code {await self._exit_code()}"
                raise ServerStartError(
                    f"the llama.cpp server for {self.model_path.name} did not start: {reason}. {self._log_tail()}"
                )
            self.url = str(info["url"])
            await self._wait_healthy()
        except BaseException:
            await self.stop(keep_log=True)
            raise
        self.started_s = time.perf_counter() - started
        logger.info("llama.cpp server for %s at %s (%.1f s)", self.model_path.name, self.url, self.started_s)
        return self.url

    async def _exit_code(self) -> int | None:
        assert self._proc is not None
        try:
            return await asyncio.wait_for(self._proc.wait(), 5)
        except asyncio.TimeoutError:
            return None

    def _log_tail(self, n: int = 1500) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
        return f"Server log ({self.log_path}):\n{text}" if text.strip() else ""

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if not self.running or time.monotonic() > deadline:
                    raise ServerStartError(
                        f"the llama.cpp server for {self.model_path.name} never became healthy. {self._log_tail()}"
                    )
                await asyncio.sleep(0.1)

    async def stop(self, *, keep_log: bool = False) -> None:
        """Stop the server (idempotent): close its stdin, then terminate, then kill.

        The log file is removed unless ``keep_log`` is set or the server had already died on its
        own (then a warning names the file)."""
        proc, self._proc = self._proc, None
        self.url = None
        if proc is not None and proc.returncode is not None and proc.returncode != 0:
            keep_log = True
            logger.warning(
                "the llama.cpp server for %s had exited with code %s; its log is %s",
                self.model_path.name,
                proc.returncode,
                self.log_path,
            )
        if proc is not None and proc.returncode is None:
            await self._end(proc)
        self._close_log(keep_log)

    def _close_log(self, keep: bool) -> None:
        log, self._log = self._log, None
        if log is None:
            return
        log.close()
        assert self.log_path is not None
        if not keep or not self.log_path.stat().st_size:  # an empty log tells nobody anything
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    @staticmethod
    async def _end(proc: asyncio.subprocess.Process) -> None:
        if proc.stdin is not None:
            proc.stdin.close()
        for action in (None, proc.terminate, proc.kill):
            if action is not None:
                try:
                    action()
                except ProcessLookupError:
                    return
            try:
                await asyncio.wait_for(proc.wait(), 5)
                return
            except asyncio.TimeoutError:
                continue


class LlamaCppBackend(Backend):
    """A local llama.cpp server for a GGUF model, started on first use."""

    supports_streaming = True
    accepts_token_ids = True
    returns_token_ids = False

    def __init__(
        self,
        model: str | Path,
        *,
        n_ctx: int = 8192,
        n_parallel: int = 4,
        n_threads: int | None = None,
        startup_timeout_s: float = 180.0,
        timeout_s: float = 300.0,
        max_retries: int = 2,
    ) -> None:
        super().__init__(max_concurrency=n_parallel)
        self.server = LlamaServer(
            model,
            alias=Path(str(model)).stem,
            n_ctx=n_ctx,
            n_parallel=n_parallel,
            n_threads=n_threads,
            startup_timeout_s=startup_timeout_s,
        )
        self.max_retries = max_retries
        self._options = {"timeout_s": timeout_s, "max_retries": max_retries}
        self._client: OpenAICompletionsBackend | None = None
        self._lock: asyncio.Lock | None = None

    async def start(self) -> OpenAICompletionsBackend:
        """Start the server if it is not running (concurrent callers share one start)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._client is None:
                url = await self.server.start()
                self._client = OpenAICompletionsBackend(
                    model=self.server.alias,
                    endpoints=[f"{url}/v1"],
                    server="llamacpp",
                    max_concurrency=self.server.n_parallel,
                    timeout_s=float(self._options["timeout_s"]),
                    max_retries=int(self._options["max_retries"]),
                )
            return self._client

    async def generate(self, request: GenerateRequest) -> Generation:
        client = await self.start()
        return await client.generate(request)

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamDelta, None]:
        client = await self.start()
        stream = client.stream(request)
        try:
            async for delta in stream:
                yield delta
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        await self.server.stop()
