"""Retrying failed requests: one backoff policy and one failure budget for every caller.

- :class:`Backoff` says how long to wait before try ``n + 1``: exponential (``base_s * 2**n``,
  capped at ``max_s``) with full jitter, or what the server asked for (``Retry-After``, capped).
  The arithmetic is bounded: no attempt number, however large, overflows a float.
- :class:`FailureBudget` counts failures against a limit; it may be shared by many calls (the
  engine gives each sample one budget for all its requests).
- :func:`call_with_retries` awaits a call until it returns, retrying a retryable
  :class:`~tessy.errors.BackendError` while the budget allows, and re-raises the last error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import BackendError

__all__ = ["Backoff", "FailureBudget", "call_with_retries"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: the wait before try ``n + 1`` is at most ``min(max_s, base_s * 2**n)``."""

    base_s: float = 0.5
    max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_s < 0:
            raise ValueError("backoff times must not be negative")

    def ceiling(self, attempt: int) -> float:
        """``min(max_s, base_s * 2**attempt)`` (``attempt`` counts from 0), for any ``attempt``."""
        if self.base_s == 0 or self.max_s == 0:
            return 0.0
        ratio = self.max_s / self.base_s
        # From this many doublings on, the cap is reached; 2.0 ** attempt is never computed past it.
        if ratio <= 1 or attempt >= math.ceil(math.log2(ratio)):
            return self.max_s
        return min(self.max_s, self.base_s * 2.0 ** max(attempt, 0))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before the next try: what the server asked for (capped at ``max_s``), else
        a uniform draw below :meth:`ceiling` (full jitter, so clients that failed together do
        not come back together)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_s)
        return random.uniform(0, self.ceiling(attempt))


class FailureBudget:
    """Allows ``max_failures`` failures of retryable errors; a non-retryable one ends it at once."""

    __slots__ = ("failures", "max_failures")

    def __init__(self, max_failures: int) -> None:
        if max_failures < 0:
            raise ValueError("max_failures must not be negative")
        self.max_failures = max_failures
        #: Failures counted so far (retryable or not).
        self.failures = 0

    def spend(self, exc: BackendError) -> bool:
        """Count one failure; whether another try is allowed."""
        self.failures += 1
        return exc.retryable and self.failures <= self.max_failures


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    budget: FailureBudget,
    *,
    backoff: Backoff | None = None,
    what: str = "request",
) -> T:
    """Await ``call()`` until it returns. A :class:`BackendError` is charged to ``budget``; while
    the budget allows, the call is tried again (after ``backoff.delay``, honouring the error's
    ``retry_after``), else the error is raised."""
    attempt = 0
    while True:
        try:
            return await call()
        except BackendError as exc:
            if not budget.spend(exc):
                raise
            delay = backoff.delay(attempt, exc.retry_after) if backoff is not None else 0.0
            logger.debug("%s failed (%s); trying again in %.2f s", what, exc, delay)
            if delay > 0:
                await asyncio.sleep(delay)
            attempt += 1
