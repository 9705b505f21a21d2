"""A tessy backend wired straight to a simulated engine, without HTTP.

The benchmark uses it on a virtual clock to measure what the cooperative loop costs the
servers (requests, discarded tokens, re-prefill, waiting) apart from any client cost. It is not
a backend for real models, and no config selects it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from ..backends.base import Backend, FinishReason, GenerateRequest, Generation, StreamDelta
from ..errors import BackendError
from .engine import SimEngine, SimRequest, SimRequestError

__all__ = ["SimBackend"]


class SimBackend(Backend):
    """Sends each request to a :class:`SimEngine` in the same event loop."""

    supports_streaming = True

    def __init__(self, engine: SimEngine, *, max_concurrency: int = 64) -> None:
        super().__init__(max_concurrency=max_concurrency)
        self.engine = engine

    async def _submit(self, request: GenerateRequest) -> SimRequest:
        try:
            return await self.engine.submit(
                request.prompt.token_ids if request.prompt.token_ids is not None else request.prompt.text,
                max_tokens=request.max_tokens,
                stop=request.stop,
                seed=request.sampling.seed,
            )
        except SimRequestError as exc:
            raise BackendError(str(exc), retryable=False, status=exc.status) from exc

    @staticmethod
    def _finish(r: SimRequest) -> FinishReason:
        if r.finish_reason == "abort":
            raise BackendError(f"the request was aborted: {r.stop_reason or 'engine closed'}")
        return "length" if r.finish_reason == "length" else "stop"

    async def generate(self, request: GenerateRequest) -> Generation:
        r = await self._submit(request)
        try:
            while not r.done:
                await r.updated.wait()
                r.updated.clear()
        except asyncio.CancelledError:
            self.engine.abort(r)
            raise
        finish = self._finish(r)
        stop = None if r.stop_reason is None else str(r.stop_reason)
        return Generation(
            pieces=[p for p in r.pieces() if p],
            finish_reason=finish,
            stop_reason=stop,
            prompt_tokens=len(r.prompt_ids),
            cached_tokens=r.cached_tokens,
        )

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamDelta, None]:
        """Tokens as the engine makes them. Tokens that may still turn out to begin a stop string
        are held back until they cannot (whole tokens, so that one piece stays one token)."""
        r = await self._submit(request)
        hold = max((len(s) for s in request.stop), default=1) - 1
        sent = 0
        try:
            while True:
                await r.updated.wait()
                r.updated.clear()
                if r.done:
                    finish = self._finish(r)
                    pieces = [p for p in r.pieces(sent) if p]
                    stop = None if r.stop_reason is None else str(r.stop_reason)
                    yield StreamDelta(pieces=pieces, finish_reason=finish, stop_reason=stop)
                    return
                safe = len(r.output_ids)
                limit = len(r.text) - hold
                while safe > sent and r.text_ends[safe - 1] > limit:
                    safe -= 1
                if safe > sent:
                    pieces = [p for p in r.pieces(sent, safe) if p]
                    sent = safe
                    if pieces:
                        yield StreamDelta(pieces=pieces)
        finally:
            if not r.done:
                self.engine.abort(r)

    async def aclose(self) -> None:
        """Nothing to release: the engine belongs to the caller, who may share it."""
