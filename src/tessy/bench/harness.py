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

Two transports:

- ``in-process``: tessy's engine talks to the simulated engines directly, on a virtual clock
  (:mod:`tessy.bench.clock`): wall times are what the servers would take, with no client cost
  in them; the client's CPU seconds per simulated second are reported apart (above 1.0, one
  core could not keep up).
- ``http``: a simulated server runs in a subprocess in real time and tessy reaches it through
  its OpenAI-compatible backend (``backend: openai``), so client costs (HTTP, JSON, rendering)
  count in the wall time too (and machine noise with them). ``in-process`` is the default: its
  ratios are reproducible and hold the servers' side of the cost alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..backends.base import Backend, GenerateRequest, Prompt, SamplingParams
from ..boundary import BoundaryPredictor, LexiconPredictor
from ..engine import Engine, Limits, Role
from ..errors import TessyError
from ..formats import get_format
from ..records import Sample, SampleResult, Source
from .backend import SimBackend
from .clock import run_virtual
from .engine import SimEngine, SimParams, make_engines
from .model import Workload
from .server import READY_PREFIX

__all__ = ["FULL", "QUICK", "BenchConfig", "BenchResult", "BenchRow", "openai_role", "run_bench"]

logger = logging.getLogger(__name__)

Transport = Literal["http", "in-process"]
SETUPS = ("lower", "chunked", "streaming")
TEACHER_MODEL, STUDENT_MODEL = "sim-teacher", "sim-student"
#: Where the tessy package lies, so that the server subprocess imports the same code.
_SRC = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class BenchConfig:
    """What to run. Each concurrency level runs ``max(min_samples, waves * concurrency)`` samples."""

    concurrency: tuple[int, ...] = (1, 16, 64)
    waves: int = 3
    min_samples: int = 6
    chunk_tokens: int = 20
    format: str = "qwen3"
    workload: Workload = field(default_factory=lambda: Workload((1000, 2000), (80, 160)))
    params: SimParams = field(default_factory=SimParams)
    transport: Transport = "in-process"
    #: Replace the predictors' lookahead (tokens a streamed cut waits for past its next token);
    #: ``None`` keeps theirs. A sensitivity knob: the lexicon needs 5, a causal classifier 0.
    lookahead: int | None = None

    def samples_at(self, concurrency: int) -> int:
        return max(self.min_samples, self.waves * concurrency)


#: Seconds on the virtual clock; about four minutes over HTTP in real time.
QUICK = BenchConfig(waves=2, min_samples=3, workload=Workload((300, 600), (30, 60)))
FULL = BenchConfig()


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
    server: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class BenchResult:
    transport: str
    config: BenchConfig
    rows: list[BenchRow]

    def row(self, setup: str, concurrency: int) -> BenchRow:
        return next(r for r in self.rows if r.setup == setup and r.concurrency == concurrency)

    def ratio(self, setup: str, concurrency: int) -> float:
        return self.row(setup, concurrency).ratio

    def to_dict(self) -> dict[str, Any]:
        return {"transport": self.transport, "config": asdict(self.config), "rows": [asdict(r) for r in self.rows]}

    def describe(self) -> str:
        """One line on what was run."""
        c, w, p = self.config, self.config.workload, self.config.params
        clock = "virtual clock, no client cost in wall times" if self.transport == "in-process" else "real time"
        lookahead = "" if c.lookahead is None else f", predictor lookahead {c.lookahead}"
        return (
            f"transport {self.transport} ({clock}); thinking {w.think_tokens[0]}-{w.think_tokens[1]} and answer "
            f"{w.answer_tokens[0]}-{w.answer_tokens[1]} tokens per sample; k = {c.chunk_tokens}{lookahead}; "
            f"decode step {p.decode_step_s * 1e3:g} ms + {p.decode_s_per_seq * 1e3:g} ms/request, prefill "
            f"{p.prefill_s_per_token * 1e6:g} us/token, request overhead {p.request_overhead_s * 1e3:g} ms"
        )

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Column names and formatted rows."""
        names = {
            "lower": "lower bound (teacher only)",
            "chunked": f"TESSY chunked (k={self.config.chunk_tokens})",
            "streaming": "TESSY streaming",
        }
        head = [
            "setup",
            "concurrent",
            "samples",
            "wall s",
            "ratio",
            "tokens/sample",
            "requests/sample",
            "discarded/sample",
            "re-prefill/sample",
            "cache hit",
            "client CPU",
        ]
        rows = [
            [
                names[r.setup] + (f" ({r.failed} failed)" if r.failed else ""),
                str(r.concurrency),
                str(r.samples),
                f"{r.wall_s:.1f}",
                f"{r.ratio:.3f}",
                f"{r.tokens_per_sample:.0f}",
                f"{r.requests_per_sample:.1f}",
                f"{r.discarded_per_sample:.1f}",
                f"{r.reprefill_per_sample:.0f}",
                f"{r.cache_hit:.1%}",
                f"{r.client_cpu:.1%}",
            ]
            for r in self.rows
        ]
        return head, rows

    def ratio_lines(self) -> list[str]:
        """``ratio_<setup>_<concurrency> <value>`` lines, streaming at the highest concurrency last."""
        top = max(self.config.concurrency)
        keys = [
            (s, c) for c in self.config.concurrency for s in ("chunked", "streaming") if (s, c) != ("streaming", top)
        ]
        keys.append(("streaming", top))
        return [f"ratio_{s}_{c} {self.ratio(s, c):.3f}" for s, c in keys]


def openai_role(url: str, model: str, *, fmt: str, chunk_tokens: int, max_concurrency: int) -> dict[str, Any]:
    """A role config for tessy's OpenAI-compatible backend pointed at a simulated server."""
    return {
        "backend": "openai",
        "endpoints": [url],
        "model": model,
        "format": fmt,
        "chunk_tokens": chunk_tokens,
        "max_concurrency": max_concurrency,
        "sampling": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "seed": 0},
    }


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


# -- targets: where the servers are -----------------------------------------------------------


class _Target:
    """The servers a benchmark runs against."""

    transport = ""

    def backend(self, model: str, max_concurrency: int) -> Backend:
        raise NotImplementedError

    def engine(self, *, streaming: bool, concurrency: int, config: BenchConfig) -> Engine:
        raise NotImplementedError

    async def stats(self) -> dict[str, dict[str, float]]:
        raise NotImplementedError

    async def reset(self) -> None:
        raise NotImplementedError

    def server_cpu(self, stats: dict[str, dict[str, float]]) -> float:
        """CPU seconds spent by the servers inside this process (0 when they run elsewhere)."""
        return 0.0

    async def aclose(self) -> None:
        pass


class _InProcess(_Target):
    transport = "in-process"

    def __init__(self, engines: dict[str, SimEngine]) -> None:
        self.engines = engines

    def backend(self, model: str, max_concurrency: int) -> Backend:
        return SimBackend(self.engines[model], max_concurrency=max_concurrency)

    def engine(self, *, streaming: bool, concurrency: int, config: BenchConfig) -> Engine:
        fmt = get_format(config.format)

        def role(name: Source, model: str) -> Role:
            backend = self.backend(model, concurrency)
            return Role(name, backend, fmt, LexiconPredictor(), config.chunk_tokens, SamplingParams(seed=0))

        return Engine(
            role("teacher", TEACHER_MODEL), role("student", STUDENT_MODEL), limits=_limits(config), streaming=streaming
        )

    async def stats(self) -> dict[str, dict[str, float]]:
        return {name: e.snapshot() for name, e in self.engines.items()}

    async def reset(self) -> None:
        for e in self.engines.values():
            e.reset_prefix_cache()

    def server_cpu(self, stats: dict[str, dict[str, float]]) -> float:
        return sum(s["cpu_s"] for s in stats.values())

    async def aclose(self) -> None:
        for e in self.engines.values():
            await e.aclose()


class _Http(_Target):
    transport = "http"

    def __init__(self, url: str, config: BenchConfig) -> None:
        import httpx

        self.url = url
        self.config = config
        self._client = httpx.AsyncClient(base_url=url.removesuffix("/v1"), timeout=30)

    def _config(self, *, streaming: bool, concurrency: int, config: BenchConfig) -> Any:
        from ..config import validate_config

        roles = {
            name: openai_role(
                self.url, model, fmt=config.format, chunk_tokens=config.chunk_tokens, max_concurrency=concurrency
            )
            for name, model in (("teacher", TEACHER_MODEL), ("student", STUDENT_MODEL))
        }
        limits = _limits(config)
        return validate_config(
            {
                "mode": "tessy",
                "streaming": streaming,
                "teacher": roles["teacher"],
                "student": roles["student"],
                "guards": {
                    "max_total_tokens": limits.max_total_tokens,
                    "max_thinking_tokens": limits.max_thinking_tokens,
                },
                "max_in_flight": concurrency,
            }
        )

    def backend(self, model: str, max_concurrency: int) -> Backend:
        from ..build import build_backend

        config = self._config(streaming=False, concurrency=max_concurrency, config=self.config)
        role = config.teacher if model == TEACHER_MODEL else config.student
        return build_backend(role)

    def engine(self, *, streaming: bool, concurrency: int, config: BenchConfig) -> Engine:
        from ..build import build_engine

        return build_engine(self._config(streaming=streaming, concurrency=concurrency, config=config))

    async def stats(self) -> dict[str, dict[str, float]]:
        response = await self._client.get("/stats")
        response.raise_for_status()
        return dict(response.json()["models"])

    async def reset(self) -> None:
        (await self._client.post("/reset_prefix_cache")).raise_for_status()

    async def aclose(self) -> None:
        await self._client.aclose()


def _limits(config: BenchConfig) -> Limits:
    most = config.workload.think_tokens[1] + config.workload.answer_tokens[1]
    return Limits(max_total_tokens=2 * most + 64, max_thinking_tokens=2 * most, repetition=None)


# -- running ------------------------------------------------------------------------------------


def _delta(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for model, values in after.items():
        prior = before.get(model, {})
        out[model] = {k: v - prior.get(k, 0) for k, v in values.items() if isinstance(v, (int, float))}
    return out


def _total(stats: dict[str, dict[str, float]], key: str) -> float:
    return sum(s.get(key, 0.0) for s in stats.values())


async def _measure(
    target: _Target, setup: str, concurrency: int, run: Callable[[], Any], n: int
) -> tuple[BenchRow, list[Any]]:
    await target.reset()
    before = await target.stats()
    loop = asyncio.get_running_loop()
    t0, cpu0 = loop.time(), time.process_time()
    outcomes: list[Any] = await run()
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
        server=server,
    )
    return row, outcomes


async def _lower_bound(target: _Target, config: BenchConfig, samples: Sequence[Sample], concurrency: int) -> BenchRow:
    fmt = get_format(config.format)
    backend = target.backend(TEACHER_MODEL, concurrency)
    most = config.workload.think_tokens[1] + config.workload.answer_tokens[1] + 16
    gate = asyncio.Semaphore(concurrency)

    async def one(sample: Sample) -> int:
        async with gate:
            request = GenerateRequest(
                Prompt.of(fmt.render_think(sample.messages)),
                max_tokens=most,
                sampling=SamplingParams(seed=0),
                sample_id=sample.id,
                role="teacher",
            )
            gen = await backend.generate(request)
            return len(gen.pieces)

    async def run() -> list[int]:
        return list(await asyncio.gather(*(one(s) for s in samples)))

    try:
        row, tokens = await _measure(target, "lower", concurrency, run, len(samples))
    finally:
        await backend.aclose()
    row.tokens_per_sample = sum(tokens) / len(samples)
    return row


async def _tessy(
    target: _Target, config: BenchConfig, samples: Sequence[Sample], concurrency: int, *, streaming: bool
) -> BenchRow:
    engine = target.engine(streaming=streaming, concurrency=concurrency, config=config)
    if config.lookahead is not None:
        for role in engine.roles.values():
            # A fixed lookahead replaces the predictor's own sense of which pieces are settled.
            predictor = role.predictor
            predictor.lookahead = config.lookahead
            predictor.settled = types.MethodType(BoundaryPredictor.settled, predictor)  # type: ignore[method-assign]

    async def run() -> list[SampleResult]:
        return [r async for r in engine.run(samples, max_in_flight=concurrency)]

    try:
        row, results = await _measure(target, "streaming" if streaming else "chunked", concurrency, run, len(samples))
    finally:
        for role in engine.roles.values():
            await role.backend.aclose()
    ok = [r for r in results if r.ok]
    row.failed = len(results) - len(ok)
    for r in results:
        if not r.ok:
            logger.warning("bench sample %s failed: %s", r.sample.id, r.failure)
    row.tokens_per_sample = sum(r.stats.total_tokens for r in ok) / max(1, len(ok))
    row.discarded_per_sample = sum(r.stats.discarded_tokens for r in results) / len(samples)
    return row


async def _run_all(target: _Target, config: BenchConfig, progress: Callable[[BenchRow], None] | None) -> list[BenchRow]:
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


@contextlib.asynccontextmanager
async def _server_process(config: BenchConfig) -> AsyncIterator[str]:
    """A simulated server in a subprocess (its own CPU, as a real server has); yields its URL."""
    import json

    w = config.workload
    cmd = [
        sys.executable,
        "-m",
        "tessy.bench",
        "--params",
        json.dumps(asdict(config.params)),
        "--think",
        f"{w.think_tokens[0]},{w.think_tokens[1]}",
        "--answer",
        f"{w.answer_tokens[0]},{w.answer_tokens[1]}",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, env.get("PYTHONPATH", "")) if p)
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode().strip()
        if not line.startswith(READY_PREFIX):
            raise TessyError(f"the simulated server did not start (it said {line!r})")
        yield line[len(READY_PREFIX) :]
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


def run_bench(config: BenchConfig = QUICK, *, progress: Callable[[BenchRow], None] | None = None) -> BenchResult:
    """Run the benchmark (blocking). ``progress`` receives each row as it is measured."""
    transport = config.transport
    if transport == "in-process":

        async def main_virtual() -> list[BenchRow]:
            target = _InProcess(make_engines(config.params, config.workload))
            try:
                return await _run_all(target, config, progress)
            finally:
                await target.aclose()

        return BenchResult(transport, config, run_virtual(main_virtual()))

    async def main_http() -> list[BenchRow]:
        async with _server_process(config) as url:
            target = _Http(url, config)
            try:
                return await _run_all(target, config, progress)
            finally:
                await target.aclose()

    return BenchResult(transport, config, asyncio.run(main_http()))
