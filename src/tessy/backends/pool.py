"""A pool of replicas serving one model: sticky routing, per-replica limits, failover.

All requests of one sample and role go to the same replica while it is healthy, so that
replica's prefix cache holds the sample's context; the choice is rendezvous hashing over the
healthy replicas, which needs no table and moves only the samples of a replica that goes down.
A replica that fails is rested for a while (longer after each failure in a row) and its
samples fail over to the next replica in their ranking.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..retry import Backoff

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
    ) -> None:
        self.endpoints = [Endpoint(u.rstrip("/"), max_concurrency) for u in urls]
        if not self.endpoints:
            raise ValueError("an endpoint pool needs at least one URL")
        #: How long a replica rests after its n-th failure in a row: cooldown_s doubling, capped.
        self.rest = Backoff(cooldown_s, max_cooldown_s)

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
