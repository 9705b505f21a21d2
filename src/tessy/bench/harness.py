"""``tessy bench``: how close cooperative synthesis runs to what the servers can do.

On the same prompts and the same simulated servers (a teacher-like and a student-like model,
each its own engine), at each concurrency (samples in flight at once) it runs:

- **lower bound**: teacher-only generation, one request per sample that writes the whole
  response (thinking, ``</think>``, answer) in one go: the servers' own limit for that many
  tokens;
- **TESSY chunked**: the cooperative loop with ``k``-token chunks (k = 20 by default);
- **TESSY streaming**: the cooperative loop streaming tokens and stopping each request at the
  first boundary.

and reports each run's wall time and its ratio to the lower bound, requests and discarded tokens
per sample, prompt tokens the servers had to prefill again past the first prompt
(re-prefill: the tail block prefix caching misses plus the other model's new spans), the
prefix-cache hit rate and the client's own CPU share.

Two transports (:mod:`tessy.bench.targets`):

- ``in-process``: tessy's engine talks to the simulated engines directly, on a virtual clock
  (:mod:`tessy.bench.clock`): wall times are what the servers would take, with no client cost
  in them; the client's CPU seconds per simulated second are reported apart (above 1.0, one
  core could not keep up).
- ``http``: a simulated server runs in a subprocess in real time and tessy reaches it through
  its OpenAI-compatible backend (``backend: openai``), so client costs (HTTP, JSON, rendering)
  count in the wall time too (and machine noise with them). ``in-process`` is the default: its
  ratios are reproducible and hold the servers' side of the cost alone.

Both build tessy's engine from the same run config (:func:`tessy.bench.settings.synth_config`)
through :mod:`tessy.build`. Tables and JSON are :mod:`tessy.bench.present`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..backends.base import GenerateRequest, Prompt
from ..build import build_engine, build_role
from ..config import RoleConfig
from ..records import RunStats, Sample, SampleResult, Source
from .clock import run_virtual
from .engine import make_engines
from .settings import QUICK, BenchConfig, synth_config
from .targets import Http, InProcess, Stats, Target, server_process

__all__ = ["BenchResult", "BenchRow", "make_prompts", "run_bench"]

logger = logging.getLogger(__name__)

SETUPS = ("lower", "chunked", "streaming")
T = TypeVar("T")


@dataclass
class BenchRow:
    """One setup at one concurrency."""

    setup: str
    concurrency: int
    samples: int
    failed: int
    wall_s: float
    tokens_per_sample: float
    requests_per_sample: float
    discarded_per_sample: float
    reprefill_per_sample: float
    cache_hit: float
    client_cpu: float
    ratio: float = float("nan")
    #: Tokens in the written records (the lower bound: the tokens its requests returned).
    kept_tokens: int = 0
    #: Tokens the servers decoded, kept or not (past a cut, after an abort).
    generated_tokens: int = 0
    #: Requests the servers received.
    requests: int = 0
    #: CPU seconds of the client process (the servers' own CPU left out).
    client_cpu_s: float = 0.0
    server: Stats = field(default_factory=dict)

    @property
    def kept_per_s(self) -> float:
        return self.kept_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def client_us_per_kept(self) -> float:
        return 1e6 * self.client_cpu_s / self.kept_tokens if self.kept_tokens else float("nan")

    @property
    def client_us_per_request(self) -> float:
        return 1e6 * self.client_cpu_s / self.requests if self.requests else float("nan")

    @property
    def generated_per_kept(self) -> float:
        return self.generated_tokens / self.kept_tokens if self.kept_tokens else float("nan")


@dataclass
class BenchResult:
    transport: str
    config: BenchConfig
    rows: list[BenchRow]

    def row(self, setup: str, concurrency: int) -> BenchRow:
        return next(r for r in self.rows if r.setup == setup and r.concurrency == concurrency)

    def ratio(self, setup: str, concurrency: int) -> float:
        return self.row(setup, concurrency).ratio


def make_prompts(n: int) -> list[Sample]:
    """``n`` distinct, deterministic prompts."""
    topics = ("sums of lists", "prime checks", "tree edges", "sorted arrays", "modular counts", "pointer walks")
    return [
        Sample.from_prompt(
            f"bench-{i:05d}",
            f"Problem {i}: a question about {topics[i % len(topics)]} with n = {7 + 13 * i % 97}. Show your working.",
        )
        for i in range(n)
    ]


# -- measuring ----------------------------------------------------------------------------------


def _delta(after: Stats, before: Stats) -> Stats:
    out: Stats = {}
    for model, values in after.items():
        prior = before.get(model, {})
        out[model] = {k: v - prior.get(k, 0) for k, v in values.items() if isinstance(v, (int, float))}
    return out


def _total(stats: Stats, key: str) -> float:
    return sum(s.get(key, 0.0) for s in stats.values())


async def _measure(
    target: Target, setup: str, concurrency: int, run: Callable[[], Awaitable[list[T]]], n: int
) -> tuple[BenchRow, list[T]]:
    """Run ``run`` on cold prefix caches; the servers' counters and the clocks around it."""
    await target.reset()
    before = await target.stats()
    loop = asyncio.get_running_loop()
    t0, cpu0 = loop.time(), time.process_time()
    outcomes = await run()
    wall, cpu = loop.time() - t0, time.process_time() - cpu0
    server = _delta(await target.stats(), before)
    client_cpu = max(0.0, cpu - target.server_cpu(server))
    prompt = _total(server, "prompt_tokens")
    row = BenchRow(
        setup=setup,
        concurrency=concurrency,
        samples=n,
        failed=0,
        wall_s=wall,
        tokens_per_sample=0.0,
        requests_per_sample=_total(server, "requests") / n,
        discarded_per_sample=0.0,
        reprefill_per_sample=_total(server, "reprefilled_tokens") / n,
        cache_hit=_total(server, "cached_tokens") / prompt if prompt else 0.0,
        client_cpu=client_cpu / wall if wall > 0 else 0.0,
        generated_tokens=int(_total(server, "decoded_tokens")),
        requests=int(_total(server, "requests")),
        client_cpu_s=client_cpu,
        server=server,
    )
    return row, outcomes


async def _lower_bound(target: Target, config: BenchConfig, samples: Sequence[Sample], concurrency: int) -> BenchRow:
    # Not Engine.run: its teacher-only mode stops the thinking at </think> and asks again for the
    # answer (two requests, a re-prefill); the bound is one request that writes it all.
    synth = synth_config(config, target.url, streaming=False, concurrency=concurrency)
    teacher = build_role("teacher", synth.teacher, backend=target.backend(synth.teacher))
    most = config.most_tokens + 16
    gate = asyncio.Semaphore(concurrency)

    async def one(sample: Sample) -> int:
        async with gate:
            request = GenerateRequest(
                Prompt.of(teacher.format.render_think(sample.messages)),
                max_tokens=most,
                sampling=teacher.sampling,
                sample_id=sample.id,
                role="teacher",
            )
            gen = await teacher.backend.generate(request)
            return len(gen.pieces)

    async def run() -> list[int]:
        return list(await asyncio.gather(*(one(s) for s in samples)))

    try:
        row, tokens = await _measure(target, "lower", concurrency, run, len(samples))
    finally:
        await teacher.aclose()
    row.tokens_per_sample = sum(tokens) / len(samples)
    row.kept_tokens = sum(tokens)
    return row


async def _tessy(
    target: Target, config: BenchConfig, samples: Sequence[Sample], concurrency: int, *, streaming: bool
) -> BenchRow:
    synth = synth_config(config, target.url, streaming=streaming, concurrency=concurrency)
    roles: dict[Source, RoleConfig] = {"teacher": synth.teacher, "student": synth.student}
    replaced = {name: b for name, role in roles.items() if (b := target.backend(role)) is not None}
    engine = build_engine(synth, backends=replaced)

    async def run() -> list[SampleResult]:
        return [r async for r in engine.run(samples, max_in_flight=synth.max_in_flight)]

    async with engine:
        row, results = await _measure(target, "streaming" if streaming else "chunked", concurrency, run, len(samples))
    totals = RunStats()
    for r in results:
        totals.add(r)
        if not r.ok:
            logger.warning("bench sample %s failed: %s", r.sample.id, r.failure)
    row.failed = totals.n_failed
    row.tokens_per_sample = totals.total_tokens / max(1, totals.written)
    row.kept_tokens = totals.total_tokens
    row.discarded_per_sample = totals.discarded_tokens / len(samples)
    return row


async def _run_all(target: Target, config: BenchConfig, progress: Callable[[BenchRow], None] | None) -> list[BenchRow]:
    rows: list[BenchRow] = []
    for c in config.concurrency:
        samples = make_prompts(config.samples_at(c))
        level = [
            await _lower_bound(target, config, samples, c),
            await _tessy(target, config, samples, c, streaming=False),
            await _tessy(target, config, samples, c, streaming=True),
        ]
        for row in level:
            row.ratio = row.wall_s / level[0].wall_s if level[0].wall_s > 0 else float("nan")
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


async def _run_on(target: Target, config: BenchConfig, progress: Callable[[BenchRow], None] | None) -> list[BenchRow]:
    try:
        return await _run_all(target, config, progress)
    finally:
        await target.aclose()


def run_bench(config: BenchConfig = QUICK, *, progress: Callable[[BenchRow], None] | None = None) -> BenchResult:
    """Run the benchmark (blocking). ``progress`` receives each row as it is measured."""
    if config.transport == "in-process":

        async def in_process() -> list[BenchRow]:
            return await _run_on(InProcess(make_engines(config.params, config.workload)), config, progress)

        return BenchResult(config.transport, config, run_virtual(in_process()))

    async def over_http() -> list[BenchRow]:
        async with server_process(config) as url:
            return await _run_on(Http(url), config, progress)

    return BenchResult(config.transport, config, asyncio.run(over_http()))
