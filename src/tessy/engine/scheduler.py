"""The engine: many samples at once against bounded backends.

Each sample is its own small state machine (:mod:`tessy.engine.sample`) running as an asyncio
task; many run at once, each backend bounds how many of its requests are in flight (one
semaphore per backend, shared by the roles that use it), and no sample ever waits for another
(there are no lock-step rounds).

A sample is a *session* on both roles: when it ends, for whatever reason (a response, a failure,
an exception, a cancellation), both roles' backends and predictors are told at once to release
what they hold for it (KV caches, encoded windows, cursors); see :meth:`Role.session`.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, asynccontextmanager
from typing import Any

from ..backends.base import Backend
from ..errors import OutageError
from ..records import Failure, Mode, Sample, SampleResult, SampleStats, Source
from ..workers import map_unordered
from .methods import METHOD_RUNS, MethodSettings
from .pacing import Pacer
from .policy import Limits, Role
from .sample import SampleRun

__all__ = ["Engine"]

logger = logging.getLogger(__name__)


@asynccontextmanager
async def _paced(pacer: Pacer, sem: asyncio.Semaphore) -> AsyncIterator[None]:
    async with pacer, sem:
        yield


class Engine:
    """Runs samples through the cooperative loop (or one of the comparison modes)."""

    def __init__(
        self,
        teacher: Role,
        student: Role,
        *,
        mode: Mode | str = Mode.TESSY,
        limits: Limits | None = None,
        streaming: bool = False,
        pacer: Pacer | None = None,
        methods: MethodSettings | None = None,
    ) -> None:
        if teacher.name != "teacher" or student.name != "student":
            raise ValueError("the roles must be named 'teacher' and 'student'")
        self.roles: dict[Source, Role] = {"teacher": teacher, "student": student}
        self.mode = Mode(mode)
        self.limits = limits or Limits()
        self.streaming = streaming
        if streaming:
            for name in self.mode.roles:
                backend = self.roles[name].backend
                if not backend.supports_streaming:
                    raise ValueError(f"streaming is on but the {name}'s backend {type(backend).__name__} cannot stream")
        #: The comparison methods' parameters (used by the modes of :mod:`tessy.engine.methods`).
        self.methods = methods or MethodSettings()
        if self.mode.needs_student_scores and not student.backend.supports_scoring:
            raise ValueError(
                f"mode {self.mode.value} needs the student's log-probabilities of given text, and the student's "
                f"backend ({type(student.backend).__name__}) cannot give them; use backend: hf (in-process), "
                "or backend: openai with server: vllm or sglang (echo with logprobs). llama.cpp returns "
                "log-probabilities of generated tokens only"
            )
        self._slots: dict[int, asyncio.Semaphore] = {}
        #: Bounds requests in flight while the event loop lags (``None``: only the backends'
        #: own limits). Streams need it most: a late reader is a late abort.
        self.pacer = pacer if pacer is not None else (Pacer() if streaming else None)

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every backend and predictor the roles hold (each once: roles may share them)."""
        closed: set[int] = set()
        for role in self.roles.values():
            for thing in (role.backend, role.predictor):
                if id(thing) not in closed:
                    closed.add(id(thing))
                    await thing.aclose()

    def slot(self, backend: Backend) -> AbstractAsyncContextManager[Any]:
        """What a request on ``backend`` holds while in flight: the pacer's admission, then the
        backend's semaphore."""
        sem = self._slots.get(id(backend))
        if sem is None:
            sem = self._slots[id(backend)] = asyncio.Semaphore(backend.max_concurrency)
        return sem if self.pacer is None else _paced(self.pacer, sem)

    @asynccontextmanager
    async def session(self, sample_id: str) -> AsyncIterator[None]:
        """Both roles' sessions for one sample (see :meth:`Role.session`)."""
        async with AsyncExitStack() as stack:
            for role in self.roles.values():
                await stack.enter_async_context(role.session(sample_id))
            yield

    async def check(self) -> None:
        """Ask each backend the mode uses whether it can serve (:meth:`Backend.check`), once
        each, before the first sample: a wrong URL or model ends a run at once, not after
        every sample has failed."""
        checked: set[int] = set()
        for name in self.mode.roles:
            backend = self.roles[name].backend
            if id(backend) not in checked:
                checked.add(id(backend))
                await backend.check()

    async def run_sample(self, sample: Sample) -> SampleResult:
        """Synthesise one response. Failures come back as a result with a reason, not raised;
        so does an exception nobody expected (a server's odd field, a bug): it fails this sample
        as ``unexpected_error`` with where it was raised, and the other samples go on. Only an
        :class:`OutageError` (a model down past ``outage_timeout_s``) is raised: it ends the run."""
        try:
            async with self.session(sample.id):
                if self.mode.is_method:
                    return await METHOD_RUNS[self.mode](
                        sample, self.roles, settings=self.methods, session=self.session, mode=self.mode,
                        limits=self.limits, streaming=self.streaming, slot=self.slot,
                    ).run()  # fmt: skip
                return await SampleRun(
                    sample, self.roles, mode=self.mode, limits=self.limits, streaming=self.streaming, slot=self.slot
                ).run()
        except OutageError:
            raise
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
            failure = Failure("unexpected_error", f"{type(exc).__name__}: {exc}{where}")
            logger.warning("sample %s failed: %s", sample.id, failure, exc_info=logger.isEnabledFor(logging.DEBUG))
            return SampleResult(sample, [], SampleStats(), None, failure)

    async def run(
        self, samples: Iterable[Sample] | AsyncIterable[Sample], *, max_in_flight: int = 256
    ) -> AsyncIterator[SampleResult]:
        """Run many samples at once, yielding each result as soon as it is done.

        At most ``max_in_flight`` samples are in progress; the next one starts as soon as one
        finishes, so input is read lazily and memory does not grow with the input. Closing the
        iterator cancels the samples in flight.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        results = map_unordered(
            self.run_sample, samples, concurrency=max_in_flight, name=lambda s: f"tessy-sample-{s.id}"
        )
        async with aclosing(results):
            async for result in results:
                yield result
