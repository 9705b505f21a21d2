"""The pacer: requests in flight bounded while the event loop runs late."""

from __future__ import annotations

import asyncio
import time

import pytest

from tessy.engine.pacing import Pacer


def test_a_late_loop_bounds_requests_in_flight_and_an_on_time_one_lets_them_in_again() -> None:
    async def scenario() -> None:
        pacer = Pacer(target_lag_s=0.005, interval_s=0.01, min_limit=2)
        release = asyncio.Event()
        peak = 0

        async def request() -> None:
            nonlocal peak
            async with pacer:
                peak = max(peak, pacer.in_flight)
                await release.wait()

        first = [asyncio.create_task(request()) for _ in range(10)]
        await asyncio.sleep(0)
        assert pacer.in_flight == 10 and pacer.stats.limit is None  # never late: no bound
        time.sleep(0.05)  # noqa: ASYNC251 (the loop is blocked on purpose: the next tick is late)
        await asyncio.sleep(0.03)
        assert pacer.stats.decreases >= 1 and pacer.stats.max_lag_s >= 0.03
        assert pacer.stats.limit is not None and pacer.stats.limit < 10
        later = [asyncio.create_task(request()) for _ in range(10)]
        await asyncio.sleep(0.005)
        assert pacer.in_flight == 10  # the newcomers wait for the bound
        release.set()
        await asyncio.wait_for(asyncio.gather(*first, *later), timeout=5)
        assert pacer.in_flight == 0 and pacer.stats.waited == 10
        assert peak == 10

    asyncio.run(scenario())


def test_a_waiter_cancelled_after_its_turn_passes_the_turn_on() -> None:
    async def scenario() -> None:
        pacer = Pacer()
        pacer._limit = 1  # as after a late tick
        gate = asyncio.Event()

        async def hold() -> None:
            async with pacer:
                await gate.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(hold())
        third = asyncio.create_task(hold())
        await asyncio.sleep(0)
        assert len(pacer._waiters) == 2
        waiting.cancel()
        gate.set()
        await asyncio.wait_for(asyncio.gather(holder, third), timeout=5)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pacer.in_flight == 0

    asyncio.run(scenario())
