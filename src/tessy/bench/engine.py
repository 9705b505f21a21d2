"""A simulated vLLM-like engine: what serving costs, in simulated time.

One engine stands for one model on one accelerator. Its costs (every parameter is in
:class:`SimParams`):

- **per-request overhead**: each request first passes a single front end (HTTP, tokenising,
  scheduling) that takes ``request_overhead_s``, one request at a time;
- **continuous batching under a token budget**: every step runs one decode token for each
  running request plus prompt chunks of waiting or partly prefilled requests, up to
  ``max_batch_tokens`` tokens and ``max_running`` requests (chunked prefill);
- **step time**: ``decode_step_s + decode_s_per_seq * requests in the step +
  prefill_s_per_token * prompt tokens computed in the step``; a request's first token comes
  at the end of the step that finishes its prompt, each later token one step after;
- **prefix cache**: KV is kept in blocks of ``block_size`` tokens; computed full blocks are
  cached by content and reused by any prompt that starts with them; the last partial block is
  always recomputed; free cached blocks are evicted least recently used first when the pool of
  ``cache_blocks`` runs short, and a request that cannot grow preempts the newest one
  (recomputed later, as vLLM does);
- **abort**: a request aborted by its client leaves the batch at the next step.

Time is the event loop's clock: real time under a server, or a virtual clock
(:mod:`tessy.bench.clock`) that jumps over idle waits, where a run takes only the CPU time
its bookkeeping needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .cache import BlockPool, block_hashes
from .model import STUDENT, TEACHER, FakeModel, ModelProfile, Workload, sim_tokenizer

__all__ = ["SimEngine", "SimParams", "SimRequest", "SimRequestError", "make_engines"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimParams:
    """Cost model of a simulated engine. Defaults are of the order of an 8B model on one H100
    (decode ~15 ms a step, prefill ~40k tokens/s) with vLLM's scheduling defaults."""

    #: Tokens per KV block; only full blocks are cached.
    block_size: int = 16
    #: KV blocks the accelerator holds (running requests and the prefix cache share them).
    cache_blocks: int = 32768
    #: Tokens one step may compute (decode tokens plus prompt chunks).
    max_batch_tokens: int = 8192
    #: Requests in one step at most.
    max_running: int = 256
    #: Front-end time per request (parsing, tokenising, scheduling), one request at a time.
    request_overhead_s: float = 0.001
    #: Step time per prompt token computed (uncached).
    prefill_s_per_token: float = 2.5e-5
    #: Time of a decode step with one request.
    decode_step_s: float = 0.015
    #: Extra step time per request in the step.
    decode_s_per_seq: float = 6e-5
    #: Prompt plus output tokens of one request at most.
    max_model_len: int = 32768

    def step_time(self, n_seqs: int, n_prefill_tokens: int) -> float:
        return self.decode_step_s + self.decode_s_per_seq * n_seqs + self.prefill_s_per_token * n_prefill_tokens

    def with_overrides(self, values: dict[str, Any]) -> SimParams:
        unknown = set(values) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown simulation parameters: {', '.join(sorted(unknown))}")
        return SimParams(**{**asdict(self), **values})


class SimRequestError(ValueError):
    """A request the engine refuses (the server answers it with ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


_ids = itertools.count()


@dataclass(eq=False)
class SimRequest:
    """One request in the engine, and its output so far (read it after ``updated`` fires)."""

    prompt_ids: list[int]
    max_tokens: int
    tokens: Iterator[int]
    think_start: int
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    min_tokens: int = 0
    include_stop_str_in_output: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    #: Output text (chat tags left out) and where it ended after each token, before any stop cut.
    text: str = ""
    text_ends: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    cached_tokens: int = 0
    aborted: bool = False
    updated: asyncio.Event = field(default_factory=asyncio.Event)
    # Scheduling state.
    all_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    hashes: list[int] = field(default_factory=list)
    private: int = 0
    admitted: bool = False
    stop_scan: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def pieces(self, start: int = 0, end: int | None = None) -> list[str]:
        """The text of output tokens ``start .. end`` (cut where a stop string ended the text)."""
        n = len(self.output_ids) if end is None else end
        limit = len(self.text)
        out: list[str] = []
        prev = self.text_ends[start - 1] if start > 0 else 0
        for i in range(start, n):
            e = self.text_ends[i]
            out.append(self.text[min(prev, limit) : min(e, limit)])
            prev = e
        return out


@dataclass
class EngineStats:
    """Counters of one engine since it started (or since :meth:`SimEngine.reset_stats`)."""

    requests: int = 0
    finished: int = 0
    aborted: int = 0
    preempted: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefilled_tokens: int = 0
    reprefilled_tokens: int = 0
    decoded_tokens: int = 0
    steps: int = 0
    busy_s: float = 0.0
    frontend_s: float = 0.0
    max_running: int = 0
    evicted_blocks: int = 0
    cpu_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["busy_s"] = round(self.busy_s, 6)
        out["frontend_s"] = round(self.frontend_s, 6)
        out["cpu_s"] = round(self.cpu_s, 6)
        return out


class SimEngine:
    """Continuous batching, prefix caching and simulated step times for one fake model."""

    def __init__(self, model: FakeModel, params: SimParams | None = None) -> None:
        self.model = model
        self.tok = model.tok
        self.params = params or SimParams()
        self.pool = BlockPool(self.params.cache_blocks, self.params.block_size)
        self.stats = EngineStats()
        self._waiting: deque[SimRequest] = deque()
        self._running: list[SimRequest] = []
        self._wake: asyncio.Event | None = None
        self._frontend: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None

    # -- requests ------------------------------------------------------------------------

    async def submit(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        ignore_eos: bool = False,
        min_tokens: int = 0,
        seed: int | None = None,
        include_stop_str_in_output: bool = False,
    ) -> SimRequest:
        """Queue a request (after the front end's overhead); its tokens arrive step by step."""
        self._ensure_started()
        assert self._frontend is not None and self._wake is not None
        async with self._frontend:
            await asyncio.sleep(self.params.request_overhead_s)
            self.stats.frontend_s += self.params.request_overhead_s
            started = time.process_time()
            try:
                request = self._make(
                    prompt, max_tokens, stop, stop_token_ids, ignore_eos, min_tokens, seed, include_stop_str_in_output
                )
            finally:
                self.stats.cpu_s += time.process_time() - started
        self.stats.requests += 1
        self.stats.prompt_tokens += len(request.prompt_ids)
        self._waiting.append(request)
        self._wake.set()
        return request

    def _make(
        self,
        prompt: str | Sequence[int],
        max_tokens: int,
        stop: Sequence[str],
        stop_token_ids: Sequence[int],
        ignore_eos: bool,
        min_tokens: int,
        seed: int | None,
        include_stop: bool,
    ) -> SimRequest:
        ids = self.tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise SimRequestError("the prompt is empty")
        if any(not 0 <= i < self.tok.vocab_size for i in ids):
            raise SimRequestError(f"token ids must lie in [0, {self.tok.vocab_size})")
        if max_tokens < 1:
            raise SimRequestError(f"max_tokens must be at least 1, got {max_tokens}")
        limit = self.params.max_model_len
        if len(ids) + max_tokens > limit:
            raise SimRequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(ids) + max_tokens} tokens ({len(ids)} in the messages, {max_tokens} in the completion)."
            )
        if -(-(len(ids) + max_tokens) // self.params.block_size) > self.params.cache_blocks:
            raise SimRequestError(f"{len(ids) + max_tokens} tokens do not fit in the KV cache of this engine")
        info = self.model.read(ids)
        return SimRequest(
            prompt_ids=ids,
            max_tokens=max_tokens,
            tokens=self.model.continuation(info, seed=seed, ignore_eos=ignore_eos),
            think_start=info.think_start,
            stop=tuple(s for s in stop if s),
            stop_token_ids=frozenset(stop_token_ids),
            ignore_eos=ignore_eos,
            min_tokens=min_tokens,
            include_stop_str_in_output=include_stop,
            all_ids=list(ids),
        )

    def abort(self, request: SimRequest) -> None:
        """Stop a request (its client went away); it leaves the batch at the next step."""
        if not request.done and not request.aborted:
            request.aborted = True
            if self._wake is not None:
                self._wake.set()

    def reset_prefix_cache(self) -> int:
        """Drop every cached block no running request holds."""
        return self.pool.reset()

    def reset_stats(self) -> None:
        self.stats = EngineStats()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def snapshot(self) -> dict[str, Any]:
        out = self.stats.to_dict()
        out["evicted_blocks"] = self.pool.evicted
        out.update(
            running=self.running, waiting=self.waiting, cached_blocks=self.pool.cached, used_blocks=self.pool.used
        )
        return out

    # -- the engine loop -------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._frontend = asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="tessy-sim-engine")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for r in [*self._running, *self._waiting]:
            if not r.done:
                r.finish_reason = "abort"
                r.updated.set()
        self._running.clear()
        self._waiting.clear()

    async def _loop(self) -> None:
        try:
            await self._steps()
        except Exception as exc:  # a bug: fail every request rather than leave clients waiting
            logger.exception("the simulated engine failed")
            for r in [*self._running, *self._waiting]:
                self._finish(r, "abort", f"engine error: {exc!r}")
            self._running.clear()
            self._waiting.clear()
            raise

    async def _steps(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            t0 = loop.time()
            cpu = time.process_time()
            batch = self._schedule()
            self.stats.cpu_s += time.process_time() - cpu
            if not batch:  # nothing fits (all waiting requests too big for free memory): wait for a change
                self._wake.clear()
                await self._wake.wait()
                continue
            n_prefill = sum(n for _, n, prefill in batch if prefill)
            step = self.params.step_time(len(batch), n_prefill)
            await asyncio.sleep(max(0.0, t0 + step - loop.time()))
            cpu = time.process_time()
            self.stats.steps += 1
            self.stats.busy_s += step
            self._complete(batch)
            self.stats.cpu_s += time.process_time() - cpu

    def _drop_aborted(self) -> None:
        for r in [r for r in self._running if r.aborted]:
            self._running.remove(r)
            self._release(r)
            self._finish(r, "abort")
        if any(r.aborted for r in self._waiting):
            for r in [r for r in self._waiting if r.aborted]:
                self._waiting.remove(r)
                if r.admitted:
                    self._release(r)
                self._finish(r, "abort")

    def _schedule(self) -> list[tuple[SimRequest, int, bool]]:
        """This step's work: ``(request, tokens to compute, whether they are prompt tokens)``."""
        self._drop_aborted()
        p = self.params
        bs = p.block_size
        # A decoding request computes its last token; it may need a new block for it, and when
        # none can be freed the newest running request is preempted (recomputed later).
        for r in list(self._running):
            if r not in self._running or len(r.all_ids) - r.num_computed != 1:
                continue
            need = r.num_computed // bs + 1 - (len(r.hashes) + r.private)
            if need <= 0:
                continue
            while not self.pool.allocate(need):
                victim = self._running[-1]
                self._preempt(victim)
                if victim is r:
                    break
            else:
                r.private += need
        decodes = {r for r in self._running if r.output_ids and len(r.all_ids) - r.num_computed == 1}
        batch: list[tuple[SimRequest, int, bool]] = [(r, 1, False) for r in self._running if r in decodes]
        budget = p.max_batch_tokens - len(batch)
        # Then prompt chunks: requests already prefilling, then new ones in order of arrival.
        for r in self._running:
            if budget <= 0:
                break
            if r not in decodes:
                chunk = min(len(r.all_ids) - r.num_computed, budget)
                batch.append((r, chunk, True))
                budget -= chunk
        while self._waiting and budget > 0 and len(self._running) < p.max_running:
            r = self._waiting[0]
            if not self._admit(r):
                break
            self._waiting.popleft()
            self._running.append(r)
            chunk = min(len(r.all_ids) - r.num_computed, budget)
            batch.append((r, chunk, True))
            budget -= chunk
        self.stats.max_running = max(self.stats.max_running, len(self._running))
        return batch

    def _admit(self, r: SimRequest) -> bool:
        """Find the request's cached prefix and reserve blocks for the rest of its tokens."""
        bs = self.params.block_size
        total = len(r.all_ids)
        # A fully cached prompt still recomputes its last token (it must produce logits).
        hashes = block_hashes(r.all_ids, bs, (total - 1) // bs)
        hit = self.pool.lookup(hashes)
        need = -(-total // bs) - hit
        # Hold the hits first, so that making room cannot evict them.
        self.pool.acquire(hashes[:hit])
        if not self.pool.allocate(need):
            self.pool.release(hashes[:hit], 0)
            return False
        r.hashes = hashes[:hit]
        r.private = need
        r.num_computed = hit * bs
        if not r.admitted:
            r.cached_tokens = hit * bs
            self.stats.cached_tokens += hit * bs
            r.admitted = True
        return True

    def _preempt(self, r: SimRequest) -> None:
        self._running.remove(r)
        self._release(r)
        r.num_computed = 0
        self._waiting.appendleft(r)
        self.stats.preempted += 1

    def _release(self, r: SimRequest) -> None:
        self.pool.release(r.hashes, r.private)
        r.hashes, r.private = [], 0

    def _register_full_blocks(self, r: SimRequest) -> None:
        bs = self.params.block_size
        full = r.num_computed // bs
        have = len(r.hashes)
        if full > have:
            parent = r.hashes[-1] if r.hashes else 0
            for h in block_hashes(r.all_ids, bs, full, have, parent):
                self.pool.register(h)
                r.hashes.append(h)
                r.private -= 1

    def _complete(self, batch: list[tuple[SimRequest, int, bool]]) -> None:
        for r, n, prefill in batch:
            if r.done or r.aborted or r not in self._running:
                continue
            start = r.num_computed
            r.num_computed += n
            if prefill:
                self.stats.prefilled_tokens += n
                self.stats.reprefilled_tokens += max(0, r.num_computed - max(start, r.think_start))
            self._register_full_blocks(r)
            if r.num_computed == len(r.all_ids):
                self._sample(r)

    def _sample(self, r: SimRequest) -> None:
        token = next(r.tokens)
        self.stats.decoded_tokens += 1
        r.output_ids.append(token)
        r.all_ids.append(token)
        tok = self.tok
        piece = "" if token in tok.skip_ids else tok.piece(token)
        r.text += piece
        r.text_ends.append(len(r.text))
        n_out = len(r.output_ids)
        if r.aborted:
            return
        if n_out >= r.min_tokens:
            if token == tok.eos_id and not r.ignore_eos:
                self._stop(r, "stop", None)
                return
            if token in r.stop_token_ids:
                self._stop(r, "stop", token)
                return
            if r.stop and piece:
                longest = max(len(s) for s in r.stop)
                scan = max(0, len(r.text) - len(piece) - longest + 1)
                hits = [(r.text.find(s, scan), s) for s in r.stop]
                found = min(((i, s) for i, s in hits if i >= 0), default=None)
                if found is not None:
                    at, s = found
                    r.text = r.text[: at + len(s)] if r.include_stop_str_in_output else r.text[:at]
                    self._stop(r, "stop", s)
                    return
        if n_out >= r.max_tokens or len(r.all_ids) >= self.params.max_model_len:
            self._stop(r, "length", None)
            return
        r.updated.set()

    def _stop(self, r: SimRequest, reason: str, stop_reason: str | int | None) -> None:
        self._running.remove(r)
        self._release(r)
        self._finish(r, reason, stop_reason)
        self.stats.finished += 1

    def _finish(self, r: SimRequest, reason: str, stop_reason: str | int | None = None) -> None:
        r.finish_reason = reason
        r.stop_reason = stop_reason
        if reason == "abort":
            self.stats.aborted += 1
        r.updated.set()


def make_engines(
    params: SimParams | None = None,
    workload: Workload | None = None,
    models: Mapping[str, ModelProfile] | None = None,
) -> dict[str, SimEngine]:
    """One engine per model name (default: ``sim-teacher`` and ``sim-student``)."""
    tok = sim_tokenizer()
    chosen = models or {"sim-teacher": TEACHER, "sim-student": STUDENT}
    return {name: SimEngine(FakeModel(name, p, workload or Workload(), tok), params) for name, p in chosen.items()}
