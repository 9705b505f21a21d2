"""A pool of replicas serving one model: sticky routing, per-replica limits, failover.

All requests of one sample and role go to the same replica while it is healthy, so that
replica's prefix cache holds the sample's context; the choice is rendezvous hashing over the
healthy replicas, which needs no table and moves only the samples of a replica that goes down.
A replica that fails is rested for a while (longer after each failure in a row) and its
samples fail over to the next replica in their ranking.

A circuit breaker covers outages: when every replica is failing, one health probe (shared by
all the requests that failed) asks whether any answers. If one does, the failure was the
request's own (charged to its retry budget as usual). If none does, the breaker is open: no
request is sent, every caller waits (its failure not charged) while the probe goes on, with
backoff, until a replica answers, or until ``outage_timeout_s`` has passed, when
:class:`~tessy.errors.OutageError` ends the run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ..errors import OutageError
from ..retry import Backoff

logger = logging.getLogger(__name__)

__all__ = ["Endpoint", "EndpointPool"]


@dataclass
class Endpoint:
    """One replica: its base URL, its request limit and its health."""

    url: str
    max_concurrency: int
    failures: int = 0  # failures in a row
    down_until: float = 0.0
    requests: int = 0
    _slots: asyncio.Semaphore | None = field(default=None, repr=False)

    @property
    def slots(self) -> asyncio.Semaphore:
        # Created lazily: a semaphore belongs to the event loop that first uses it.
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        return self._slots

    def healthy(self, now: float) -> bool:
        return now >= self.down_until


class EndpointPool:
    """Chooses a replica for each request."""

    def __init__(
        self,
        urls: Iterable[str],
        *,
        max_concurrency: int,
        cooldown_s: float = 2.0,
        max_cooldown_s: float = 60.0,
        probe: Callable[[Endpoint], Awaitable[bool]] | None = None,
        outage_timeout_s: float = 600.0,
        probe_backoff: Backoff | None = None,
        name: str = "",
    ) -> None:
        self.endpoints = [Endpoint(u.rstrip("/"), max_concurrency) for u in urls]
        if not self.endpoints:
            raise ValueError("an endpoint pool needs at least one URL")
        #: How long a replica rests after its n-th failure in a row: cooldown_s doubling, capped.
        self.rest = Backoff(cooldown_s, max_cooldown_s)
        #: Whether a replica answers (a health check); without it there is no circuit breaker.
        self.probe = probe
        self.outage_timeout_s = outage_timeout_s
        self.probe_backoff = probe_backoff or Backoff(0.25, 5.0)
        self.name = name or ", ".join(ep.url for ep in self.endpoints)
        #: Outages waited out, and how long they lasted in all (seconds).
        self.outages = 0
        self.outage_s = 0.0
        self._probing: asyncio.Task[bool] | None = None

    def ranking(self, key: str) -> list[Endpoint]:
        """Replicas in the order a key prefers them (rendezvous hashing)."""

        def score(ep: Endpoint) -> bytes:
            return hashlib.blake2b(f"{key}|{ep.url}".encode(), digest_size=8).digest()

        return sorted(self.endpoints, key=score, reverse=True)

    def choose(self, key: str, avoid: set[str] | None = None) -> Endpoint:
        """The key's preferred healthy replica (not in ``avoid`` where another one is left).

        When none is healthy, the one that comes back soonest is tried rather than none.
        """
        now = time.monotonic()
        ranked = self.ranking(key)
        for ep in ranked:
            if ep.healthy(now) and not (avoid and ep.url in avoid):
                return ep
        for ep in ranked:
            if ep.healthy(now):
                return ep
        return min(ranked, key=lambda ep: ep.down_until)

    def succeeded(self, ep: Endpoint) -> None:
        ep.failures = 0
        ep.down_until = 0.0

    def failed(self, ep: Endpoint) -> None:
        """Rest a replica that failed, longer after each failure in a row."""
        ep.failures += 1
        ep.down_until = time.monotonic() + self.rest.ceiling(ep.failures - 1)

    # -- the circuit breaker -------------------------------------------------------------

    def all_failing(self) -> bool:
        return all(ep.failures > 0 for ep in self.endpoints)

    async def ready(self) -> None:
        """Wait while the breaker is open (an outage is being probed); raises
        :class:`OutageError` once it has lasted past ``outage_timeout_s``."""
        task = self._probing
        if task is not None:
            await asyncio.shield(task)

    async def outage(self) -> bool:
        """Called after a request failed: whether that failure was part of an outage, now over
        (every replica was failing and none answered a probe at first; one answers now). The
        caller then tries again without charging the failure. ``False`` where no outage is
        (a replica answers, or not all are failing): the failure is the request's own."""
        if self.probe is None or not self.all_failing():
            return False
        task = self._probing
        if task is None or task.done():
            task = self._probing = asyncio.get_running_loop().create_task(self._probe_until_up())
            task.add_done_callback(self._probe_done)
        return await asyncio.shield(task)

    def _probe_done(self, task: asyncio.Task[bool]) -> None:
        if self._probing is task and not task.cancelled() and task.exception() is None:
            self._probing = None  # keep a failed probe: later callers get its OutageError too

    async def _answering(self) -> list[Endpoint]:
        assert self.probe is not None
        answers = await asyncio.gather(*(self.probe(ep) for ep in self.endpoints), return_exceptions=True)
        up = [ep for ep, ok in zip(self.endpoints, answers, strict=True) if ok is True]
        for ep in up:
            self.succeeded(ep)
        return up

    async def _probe_until_up(self) -> bool:
        if await self._answering():
            return False
        started = time.monotonic()
        self.outages += 1
        logger.warning("every replica of %s is failing: requests wait until one answers", self.name)
        attempt = 0
        try:
            while True:
                left = self.outage_timeout_s - (time.monotonic() - started)
                if left <= 0:
                    raise OutageError(
                        f"no replica of {self.name} has answered for {self.outage_timeout_s:g} s "
                        "(outage_timeout_s): the run stops here; the records written are kept, and the "
                        "same command resumes the run once the servers are back"
                    )
                await asyncio.sleep(min(self.probe_backoff.ceiling(attempt), left))
                attempt += 1
                if await self._answering():
                    logger.warning("%s answers again after %.1f s", self.name, time.monotonic() - started)
                    return True
        finally:
            self.outage_s += time.monotonic() - started
