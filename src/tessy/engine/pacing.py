"""Backpressure: fewer requests in flight while the event loop runs late.

A client that cannot keep up with its streams reads their events late, so it finds each cut
late and the server keeps generating tokens that are thrown away. :class:`Pacer` measures how
late the loop runs (a timer that should fire every ``interval_s``) and bounds the requests in
flight engine-wide: when the lag exceeds ``target_lag_s`` the bound drops to a share of what
is in flight (multiplicative decrease); while the loop is on time and requests wait, it grows
by one a tick (additive increase). A request that finds the bound reached waits its turn (first
come, first served) before it takes its backend's slot.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

__all__ = ["Pacer", "PacerStats"]


@dataclass
class PacerStats:
    """What pacing did: ticks measured, the worst and the last lag seen, how often the bound
    dropped, requests that waited for it, and the bound now (``None``: never bound yet)."""

    ticks: int = 0
    max_lag_s: float = 0.0
    lag_s: float = 0.0
    decreases: int = 0
    waited: int = 0
    limit: int | None = None


class Pacer:
    """Admission of requests by the event loop's lag (see the module docstring)."""

    def __init__(
        self, *, target_lag_s: float = 0.01, interval_s: float = 0.02, min_limit: int = 2, decrease: float = 0.7
    ) -> None:
        if target_lag_s <= 0 or interval_s <= 0:
            raise ValueError("target_lag_s and interval_s must be positive")
        if min_limit < 1 or not 0 < decrease < 1:
            raise ValueError("min_limit must be at least 1 and decrease between 0 and 1")
        self.target_lag_s = target_lag_s
        self.interval_s = interval_s
        self.min_limit = min_limit
        self.decrease = decrease
        self.in_flight = 0
        self.stats = PacerStats()
        self._limit: int | None = None  # None: no bound (the loop has never run late)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    async def __aenter__(self) -> None:
        self._tick_soon()
        if self._waiters or (self._limit is not None and self.in_flight >= self._limit):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self.stats.waited += 1
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self.in_flight -= 1  # admitted, then cancelled: pass the turn on
                    self._wake()
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
            else:
                return  # the slot was counted for us by _wake
        self.in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        """Admit waiters while the bound allows (each admitted one is counted in flight here)."""
        while self._waiters and (self._limit is None or self.in_flight < self._limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def _tick_soon(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._due = loop.time() + self.interval_s
            self._timer = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        lag = max(0.0, loop.time() - self._due)
        self._timer = None
        s = self.stats
        s.ticks += 1
        s.lag_s = lag
        s.max_lag_s = max(s.max_lag_s, lag)
        if lag > self.target_lag_s:
            bound = max(self.min_limit, int(self.in_flight * self.decrease))
            if self._limit is None or bound < self._limit:
                self._limit = bound
                s.decreases += 1
        elif self._limit is not None and self._waiters and lag < self.target_lag_s / 2:
            self._limit += 1
            self._wake()
        s.limit = self._limit
        if self.in_flight or self._waiters:
            self._tick_soon()  # idle: no timer until the next request
