"""The shared helpers: one backoff policy and failure budget, one bounded worker pool."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from tessy.errors import BackendError
from tessy.retry import Backoff, FailureBudget, call_with_retries
from tessy.workers import map_unordered

# -- retry --------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap():
    b = Backoff(0.5, 30.0)
    assert [b.ceiling(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


@pytest.mark.parametrize("attempt", [1023, 1024, 1075, 10**6, 10**30])
def test_a_huge_attempt_number_does_not_overflow(attempt: int):
    b = Backoff(0.5, 30.0)
    assert b.ceiling(attempt) == 30.0
    assert 0.0 <= b.delay(attempt) <= 30.0


def test_backoff_draws_below_the_ceiling_and_honours_retry_after_up_to_the_cap():
    b = Backoff(1.0, 10.0)
    assert all(0.0 <= b.delay(2) <= 4.0 for _ in range(100))
    assert b.delay(0, retry_after=3.0) == 3.0
    assert b.delay(0, retry_after=99.0) == 10.0
    assert Backoff(0.0, 10.0).delay(5) == 0.0


def test_a_budget_allows_retryable_failures_up_to_its_limit():
    budget = FailureBudget(2)
    flaky = BackendError("reset", retryable=True)
    assert budget.spend(flaky) and budget.spend(flaky)
    assert not budget.spend(flaky)
    assert budget.failures == 3


def test_a_non_retryable_failure_ends_the_budget_at_once():
    budget = FailureBudget(5)
    assert not budget.spend(BackendError("bad request", retryable=False))
    assert budget.failures == 1


async def test_a_call_is_retried_until_it_succeeds():
    errors = [BackendError("reset"), BackendError("reset")]

    async def call() -> str:
        if errors:
            raise errors.pop()
        return "ok"

    budget = FailureBudget(3)
    assert await call_with_retries(call, budget) == "ok"
    assert budget.failures == 2


async def test_the_last_error_is_raised_when_the_budget_is_spent():
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise BackendError(f"reset {calls}")

    with pytest.raises(BackendError, match="reset 3"):
        await call_with_retries(call, FailureBudget(2), backoff=Backoff(0.0, 0.0))
    assert calls == 3


async def test_a_non_retryable_error_is_not_retried():
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        raise BackendError("bad request", retryable=False)

    with pytest.raises(BackendError, match="bad request"):
        await call_with_retries(call, FailureBudget(5))
    assert calls == 1


async def test_retry_after_is_waited_for(monkeypatch: pytest.MonkeyPatch):
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    monkeypatch.setattr("tessy.retry.asyncio.sleep", sleep)
    errors = [BackendError("busy", retry_after=2.5)]

    async def call() -> str:
        if errors:
            raise errors.pop()
        return "ok"

    assert await call_with_retries(call, FailureBudget(1), backoff=Backoff(1.0, 10.0)) == "ok"
    assert waits == [2.5]


# -- workers ------------------------------------------------------------------------------


async def test_results_come_as_they_finish_with_at_most_n_in_flight():
    running = most = 0

    async def work(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02 if i == 0 else 0.001)
        running -= 1
        return i

    out = [r async for r in map_unordered(work, range(10), concurrency=3)]
    assert sorted(out) == list(range(10))
    assert out[0] != 0  # the slow first item did not hold back the others
    assert most == 3


async def test_input_is_read_lazily_from_an_async_iterable():
    read = 0

    async def items():
        nonlocal read
        for i in range(100):
            read += 1
            yield i

    async def work(i: int) -> int:
        return i

    async with aclosing(map_unordered(work, items(), concurrency=4)) as results:
        async for _ in results:
            break
    assert read <= 5


async def test_an_exception_in_a_call_reaches_the_consumer_and_the_rest_are_cancelled():
    cancelled = 0

    async def work(i: int) -> int:
        nonlocal cancelled
        if i == 0:
            raise RuntimeError("a bug")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return i

    with pytest.raises(RuntimeError, match="a bug"):
        async for _ in map_unordered(work, range(5), concurrency=5):
            pass
    assert cancelled == 4


async def test_closing_early_cancels_the_calls_in_flight():
    started: list[int] = []
    cancelled: list[int] = []

    async def work(i: int) -> int:
        started.append(i)
        try:
            await asyncio.sleep(0 if i == 0 else 10)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async with aclosing(map_unordered(work, range(10), concurrency=3)) as results:
        assert await anext(results) == 0
    assert sorted(cancelled) == sorted(set(started) - {0})


def test_concurrency_must_be_positive():
    async def work(i: int) -> int:
        return i

    with pytest.raises(ValueError):
        asyncio.run(anext(map_unordered(work, [1], concurrency=0)))


def test_a_replica_that_failed_thousands_of_times_in_a_row_rests_the_longest_time():
    from tessy.backends.pool import EndpointPool

    pool = EndpointPool(["http://a"], max_concurrency=1, cooldown_s=2.0, max_cooldown_s=60.0)
    ep = pool.endpoints[0]
    ep.failures = 5000  # 2 ** 5000 is past any float
    before = time.monotonic()
    pool.failed(ep)
    assert ep.failures == 5001 and 59.0 < ep.down_until - before <= 60.5


def breaker_pool(answers: list[bool], timeout_s: float = 5.0) -> tuple[object, list[bool]]:
    """A two-replica pool whose health probe answers as ``answers`` says, one per probe round."""
    from tessy.backends.pool import Endpoint, EndpointPool

    rounds: list[bool] = []

    async def probe(ep: Endpoint) -> bool:
        if ep.url == "http://a":
            rounds.append(answers[min(len(rounds), len(answers) - 1)])
        return rounds[-1]

    pool = EndpointPool(
        ["http://a", "http://b"],
        max_concurrency=1,
        probe=probe,
        outage_timeout_s=timeout_s,
        probe_backoff=Backoff(0.01, 0.02),
        name="m",
    )
    return pool, rounds


def test_a_failure_while_a_replica_is_up_is_the_requests_own():
    pool, rounds = breaker_pool([True])

    async def go() -> bool:
        pool.failed(pool.endpoints[0])
        assert not await pool.outage()  # the other replica has not failed: no probe at all
        pool.failed(pool.endpoints[1])
        return await pool.outage()

    assert asyncio.run(go()) is False and rounds == [True]


def test_an_outage_is_waited_out_by_every_caller_with_one_probe():
    pool, rounds = breaker_pool([False, False, False, True])

    async def go() -> list[bool]:
        for ep in pool.endpoints:
            pool.failed(ep)
        waited = await asyncio.gather(*(pool.outage() for _ in range(20)), pool.ready())
        await pool.ready()  # closed again: returns at once
        return waited[:20]

    assert asyncio.run(go()) == [True] * 20
    assert rounds == [False, False, False, True] and pool.outages == 1
    assert all(ep.failures == 0 for ep in pool.endpoints)  # the replicas that answered are healthy again


def test_an_outage_past_its_timeout_ends_with_a_clear_error():
    from tessy.errors import OutageError

    pool, _ = breaker_pool([False], timeout_s=0.1)

    async def go() -> None:
        for ep in pool.endpoints:
            pool.failed(ep)
        with pytest.raises(OutageError, match=r"no replica of m has answered for 0.1 s"):
            await pool.outage()
        with pytest.raises(OutageError):  # and every later request is told so too
            await pool.ready()

    asyncio.run(go())
