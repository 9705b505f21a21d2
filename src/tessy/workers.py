"""A bounded pool of concurrent calls over a lazily read input.

:func:`map_unordered` is the one way tessy runs "this async function over all of these, N at a
time": it reads the input only as slots free up (so memory is bounded by ``concurrency``, not
by the input), yields each result as soon as it is ready (a slow item never holds back the
others), re-raises an exception from a call to the consumer, and cancels the calls still in
flight when the consumer stops early or fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

__all__ = ["map_unordered"]

T = TypeVar("T")
R = TypeVar("R")


async def map_unordered(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    concurrency: int,
    name: Callable[[T], str] | None = None,
) -> AsyncGenerator[R, None]:
    """``fn(item)`` for each item, at most ``concurrency`` at once, yielding results in the
    order they finish. ``name`` names each call's task (for debugging).

    Close the generator (``contextlib.aclosing``) to cancel what is still running; an
    exception raised by a call is raised here, when its turn comes, and the rest are cancelled.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    finished: asyncio.Queue[asyncio.Task[R]] = asyncio.Queue()
    running: set[asyncio.Task[R]] = set()

    async def call(item: T) -> R:
        return await fn(item)

    def on_done(task: asyncio.Task[R]) -> None:
        running.discard(task)
        finished.put_nowait(task)

    source = _aiter(items)
    exhausted = False
    pending = 0  # calls started whose result has not been taken
    try:
        while True:
            while not exhausted and pending < concurrency:
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    exhausted = True
                    break
                task = asyncio.create_task(call(item), name=name(item) if name is not None else None)
                running.add(task)
                task.add_done_callback(on_done)
                pending += 1
            if pending == 0:
                return
            task = await finished.get()
            pending -= 1
            yield task.result()  # raises the call's exception
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        while not finished.empty():  # results nobody took: mark their errors as seen
            task = finished.get_nowait()
            if not task.cancelled():
                task.exception()


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
