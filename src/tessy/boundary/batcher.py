"""An asyncio micro-batcher: many concurrent callers, one batched call in a worker thread.

Every sample in flight asks its predictor one question per chunk. Answering them one at a time
would run one model forward per question; the batcher instead queues the questions, lets a
single worker collect up to ``max_batch`` of them (or whatever arrived within ``max_wait_ms`` of
the first), runs one call over the batch in a thread (so the event loop keeps serving the
backends meanwhile), and resolves each caller's future with its own answer.

Failures stay with the item that caused them: an item the ``validate`` hook rejects fails at
submission, an item whose result is an exception gets that exception, and when the batched call
itself raises, each item is retried alone so that only the one that breaks fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..errors import BoundaryError

__all__ = ["BatchStats", "MicroBatcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: What a batch call returns: one result (or the exception for that item) per item, in order.
BatchFn = Callable[[list[T]], Sequence["R | BaseException"]]


@dataclass
class BatchStats:
    """Counters of a batcher, for benchmarks and logs."""

    items: int = 0
    batches: int = 0
    #: Batched calls that raised and were retried one item at a time.
    split_batches: int = 0
    failed_items: int = 0
    #: Seconds spent inside batch calls (worker-thread time).
    busy_s: float = 0.0
    sizes: Counter[int] = field(default_factory=Counter)

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "items": self.items,
            "batches": self.batches,
            "mean_batch": round(self.mean_batch, 2),
            "max_batch": max(self.sizes, default=0),
            "split_batches": self.split_batches,
            "failed_items": self.failed_items,
            "busy_s": round(self.busy_s, 3),
        }


class MicroBatcher(Generic[T, R]):
    """Collects concurrent requests into batches for ``process``.

    ``process`` runs in a worker thread, one batch at a time, so it may hold state that only it
    touches. ``validate`` runs in the caller, before queueing, and raises for a bad item.
    """

    def __init__(
        self,
        process: BatchFn[T, R],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        validate: Callable[[T], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must not be negative")
        self._process = process
        self._validate = validate
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.name = name
        self.stats = BatchStats()
        self._pending: deque[tuple[T, asyncio.Future[R], float]] = deque()
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: list[asyncio.Future[R]] = []  # futures of the batch being processed
        self._closed = False

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (or its own exception)."""
        if self._closed:
            raise BoundaryError(f"{self.name} is closed")
        if self._validate is not None:
            self._validate(item)
        self._ensure_worker()
        assert self._wake is not None and self._full is not None
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, time.perf_counter()))
        self._wake.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return await future

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._worker is not None and self._loop is loop and not self._worker.done():
            return
        # First use, or a new event loop (a script may call asyncio.run more than once).
        self._loop = loop
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._pending.clear()
        self._worker = loop.create_task(self._run(), name=f"tessy-{self.name}")

    async def _run(self) -> None:
        assert self._wake is not None and self._full is not None
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < self.max_batch and self.max_wait_s > 0:
                # Wait for more, counted from when the oldest item arrived, or until the batch is full.
                left = self._pending[0][2] + self.max_wait_s - time.perf_counter()
                if left > 0:
                    self._full.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._full.wait(), left)
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            live = [(item, fut) for item, fut, _ in batch if not fut.done()]  # callers may have given up
            if live:
                self._running = [fut for _, fut in live]
                try:
                    await self._run_batch(live)
                finally:
                    self._running = []

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.sizes[len(items)] += 1
        try:
            results = await self._call(items)
        except Exception as exc:
            if len(batch) == 1:
                self._settle(batch[0][1], exc)
                return
            logger.warning("%s: a batch of %d failed (%s); retrying its items one by one", self.name, len(items), exc)
            self.stats.split_batches += 1
            for item, fut in batch:
                if fut.done():
                    continue
                try:
                    one = await self._call([item])
                except Exception as item_exc:
                    self._settle(fut, item_exc)
                else:
                    self._settle(fut, one[0])
            return
        for (_, fut), result in zip(batch, results, strict=True):
            self._settle(fut, result)

    async def _call(self, items: list[T]) -> Sequence[R | BaseException]:
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._process, items)
        finally:
            self.stats.busy_s += time.perf_counter() - started
        if len(results) != len(items):
            raise BoundaryError(f"{self.name}: the batch call returned {len(results)} results for {len(items)} items")
        return results

    def _settle(self, fut: asyncio.Future[R], result: R | BaseException) -> None:
        if fut.done():
            return
        if isinstance(result, BaseException):
            self.stats.failed_items += 1
            fut.set_exception(result)
        else:
            fut.set_result(result)

    async def aclose(self) -> None:
        """Stop the worker; callers still waiting get a :class:`BoundaryError`."""
        self._closed = True
        # Taken before cancelling: the worker forgets its running batch as it unwinds.
        waiting = [fut for _, fut, _ in self._pending] + self._running
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._pending.clear()
        self._running = []
        for fut in waiting:
            if not fut.done():
                fut.set_exception(BoundaryError(f"{self.name} was closed before answering"))
