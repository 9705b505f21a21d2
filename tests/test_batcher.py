"""The micro-batcher: many concurrent callers, batch limits, failures that stay with their item."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tessy.boundary.batcher import MicroBatcher
from tessy.errors import BoundaryError


class Recorder:
    """A batch function that doubles numbers and records every batch it is given."""

    def __init__(self, *, fail_on: int | None = None, error_on: int | None = None, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self.fail_on = fail_on  # the whole batch raises when it holds this item
        self.error_on = error_on  # only this item's result is an exception
        self.delay_s = delay_s

    def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("the batched forward broke")
        return [ValueError(f"bad item {x}") if x == self.error_on else 2 * x for x in items]


async def test_many_concurrent_callers_each_get_their_own_answer():
    rec = Recorder(delay_s=0.005)
    batcher: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=8, max_wait_ms=2)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(100)))
    assert results == [2 * i for i in range(100)]
    assert sorted(x for b in rec.batches for x in b) == list(range(100))  # each item once
    assert max(len(b) for b in rec.batches) <= 8
    assert len(rec.batches) < 100 and batcher.stats.mean_batch > 1
    assert batcher.stats.items == 100 and batcher.stats.batches == len(rec.batches)
    assert threading.get_ident() not in rec.threads  # the batch ran in a worker thread
    await batcher.aclose()


async def test_a_full_batch_does_not_wait_and_the_rest_waits_at_most_max_wait():
    rec = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=4, max_wait_ms=60_000)
    started = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(8))), 5)
    assert results == [2 * i for i in range(8)]
    assert [len(b) for b in rec.batches] == [4, 4]
    assert time.perf_counter() - started < 5

    short: MicroBatcher[int, int] = MicroBatcher(Recorder(), max_batch=4, max_wait_ms=50)
    started = time.perf_counter()
    assert await short.submit(3) == 6
    waited = time.perf_counter() - started
    assert 0.04 <= waited < 2  # a lone item waits for company, but not for ever
    await batcher.aclose()
    await short.aclose()


async def test_batch_sizes_respect_max_batch_under_a_burst():
    rec = Recorder(delay_s=0.01)
    batcher: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=3, max_wait_ms=1)
    await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    assert all(1 <= len(b) <= 3 for b in rec.batches)
    assert batcher.stats.sizes[3] >= 5
    await batcher.aclose()


async def test_an_item_whose_result_is_an_error_fails_alone():
    rec = Recorder(error_on=5)
    batcher: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=16, max_wait_ms=5)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)), return_exceptions=True)
    assert isinstance(results[5], ValueError)
    assert [r for i, r in enumerate(results) if i != 5] == [2 * i for i in range(10) if i != 5]
    assert batcher.stats.failed_items == 1
    await batcher.aclose()


async def test_a_batch_that_raises_is_retried_item_by_item_so_one_poison_item_fails_alone():
    rec = Recorder(fail_on=7)
    batcher: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=16, max_wait_ms=5)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)), return_exceptions=True)
    assert isinstance(results[7], RuntimeError)
    assert [r for i, r in enumerate(results) if i != 7] == [2 * i for i in range(10) if i != 7]
    assert batcher.stats.split_batches == 1
    # After the failure the batcher still serves batches as usual.
    assert await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3))) == [2, 4, 6]
    await batcher.aclose()


async def test_validation_rejects_a_bad_item_before_it_reaches_a_batch():
    def validate(x: int) -> None:
        if x < 0:
            raise BoundaryError("negative")

    rec = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=8, max_wait_ms=5, validate=validate)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True)
    assert results[0] == 2 and results[2] == 4
    assert isinstance(results[1], BoundaryError)
    assert all(-1 not in b for b in rec.batches)
    await batcher.aclose()


async def test_a_caller_that_gives_up_is_skipped():
    rec = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=8, max_wait_ms=30)
    doomed = asyncio.ensure_future(batcher.submit(99))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await batcher.submit(1) == 2
    assert all(99 not in b for b in rec.batches)
    await batcher.aclose()


async def test_close_fails_the_waiting_callers_and_refuses_new_ones():
    rec = Recorder(delay_s=0.2)
    batcher: MicroBatcher[int, int] = MicroBatcher(rec, max_batch=1, max_wait_ms=0)
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0.05)  # the first is in the worker thread, the others queued
    await batcher.aclose()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, BoundaryError) for r in results)
    with pytest.raises(BoundaryError, match="closed"):
        await batcher.submit(5)


def test_a_batcher_serves_one_event_loop_after_another():
    batcher: MicroBatcher[int, int] = MicroBatcher(Recorder(), max_batch=4, max_wait_ms=1)

    async def some() -> list[int]:
        return list(await asyncio.gather(*(batcher.submit(i) for i in range(5))))

    assert asyncio.run(some()) == [0, 2, 4, 6, 8]
    assert asyncio.run(some()) == [0, 2, 4, 6, 8]


def test_settings_are_checked():
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_wait_ms=-1)
