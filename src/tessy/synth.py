"""A whole synthesis run: prompts in, records out, resumable, with a summary at the end.

The library's face, for scripts and notebooks alike::

    config = tessy.load_config("run.yaml", {"teacher.chunk_tokens": 32})
    summary = tessy.synthesize(config, prompts=["What is 17 + 25?"], output="out.jsonl")
    data = tessy.synthesize(config, prompts=ds, dataset=True)          # a datasets.Dataset

    async with tessy.Synthesis(config, prompts=["What is 17 + 25?"]) as run:
        async for record in run:                                         # tessy.Record
            print(record.answer)
    print(run.summary.teacher_share)

:func:`synthesize` works in a script and inside a running event loop (Jupyter): there it runs
the synthesis on a loop of its own in a worker thread. In a coroutine, ``await asynthesize``.

With ``verify:`` each finished record is verified before it is written. With
``samples_per_prompt: n`` (or ``max_attempts``) a prompt is drawn several times: sample k is
``ID#k``, drawn with its own seed, and resumed on its own. ``keep: first-passing`` draws a
prompt's samples in rounds until n have passed (or ``max_attempts`` are drawn); ``keep: best``
draws ``max_attempts`` and keeps the n best. Every sample drawn is written, ``kept`` saying
which ones the run keeps, so that pass@n can be counted and nothing is lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from .build import build_engine, build_verifier
from .config import SynthConfig, load_config
from .data import OutputStore
from .engine import Engine
from .errors import ConfigError, DataError
from .prompts import BadLine, Prompts, PromptSource, iter_samples
from .records import FailureRecord, Record, RunStats, Sample, SampleResult, read_records
from .records.sample import ratio
from .shard import Shard
from .verify import PassTally, Verifier, attempt_index
from .workers import map_unordered

__all__ = ["RunSummary", "Synthesis", "asynthesize", "count_prompts", "synthesize"]

#: A config as the library takes it: validated, or a YAML path (text or Path), or a dict.
ConfigLike = SynthConfig | str | Path | Mapping[str, Any]
#: Called with the running summary after every sample (and every skipped input).
Progress = Callable[["RunSummary"], None]

logger = logging.getLogger(__name__)


@dataclass
class RunSummary(RunStats):
    """The counters of a run (:class:`RunStats`, added to as each sample ends) and its
    bookkeeping: where it writes, what it skipped, how long it took. Progress callbacks
    receive it."""

    config_hash: str = ""
    output: Path | None = None
    failed_path: Path | None = None
    total: int | None = None
    skipped_done: int = 0
    skipped_failed: int = 0
    bad_lines: int = 0
    wall_s: float = 0.0
    #: The most :attr:`failure_rate` a run may end with and still succeed (``max_failure_rate``).
    max_failure_rate: float = 0.5
    #: ``None`` while running or after a clean end; else why the run stopped early.
    error: str | None = None
    #: Verdicts, pass@1 and pass@n of the output's records (earlier runs' too), with a verifier.
    verification: PassTally | None = None

    @property
    def processed(self) -> int:
        """Inputs dealt with so far: written, failed, skipped or malformed."""
        return self.written + self.n_failed + self.skipped_done + self.skipped_failed + self.bad_lines

    @property
    def failure_rate(self) -> float:
        """The share of the inputs read that have no record: samples that failed (now or, not
        retried, in an earlier run) and lines that were no prompt. Counted over every input
        read, finished ones of earlier runs included, so a resume reports what a single run
        would have."""
        return ratio(self.n_failed + self.skipped_failed + self.bad_lines, self.processed)

    @property
    def too_many_failures(self) -> bool:
        """Whether :attr:`failure_rate` is over :attr:`max_failure_rate` (with 0: any failure)."""
        rate = self.failure_rate
        return rate > 0 if self.max_failure_rate == 0 else rate > self.max_failure_rate

    @property
    def tokens_per_s(self) -> float:
        return self.total_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def samples_per_s(self) -> float:
        """Samples that ran (finished or failed) per second; skipped inputs cost nothing."""
        return (self.written + self.n_failed) / self.wall_s if self.wall_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_hash": self.config_hash,
            "output": str(self.output) if self.output else None,
            "failed_path": str(self.failed_path) if self.failed_path else None,
            "error": self.error,
            "total": self.total,
            "processed": self.processed,
            "written": self.written,
            "failed": dict(self.failed),
            "skipped_done": self.skipped_done,
            "skipped_failed": self.skipped_failed,
            "bad_lines": self.bad_lines,
            "failure_rate": round(self.failure_rate, 4),
            "max_failure_rate": self.max_failure_rate,
            "too_many_failures": self.too_many_failures,
            "teacher_tokens": self.teacher_tokens,
            "student_tokens": self.student_tokens,
            "teacher_share": round(self.teacher_share, 4),
            "switches_per_sample": round(self.switches_per_sample, 3),
            "requests": self.requests,
            "retried_requests": self.retried_requests,
            "discarded_tokens": self.discarded_tokens,
            "prefix_misses": self.prefix_misses,
            "glued_handoffs": self.glued_handoffs,
            "prefix_cache_hit_rate": None if self.cache_hit_rate is None else round(self.cache_hit_rate, 4),
            "score_requests": self.score_requests,
            "candidates": self.candidates,
            "requests_per_kept_token": round(self.requests_per_kept_token, 4),
            "generated_per_kept_token": round(self.generated_per_kept_token, 4),
            "guards": dict(self.guards),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "samples_per_s": round(self.samples_per_s, 3),
            "wall_s": round(self.wall_s, 3),
            **({"verification": self.verification.to_dict()} if self.verification is not None else {}),
        }


def count_prompts(source: PromptSource | Path, limit: int | None = None) -> int | None:
    """How many prompts a source has (for progress totals), capped at ``limit``; None for a stream."""
    return PromptSource.of(source).count(limit)


class Synthesis:
    """One synthesis run: an async context manager that holds the engine (and the output file),
    and an async iterator of the :class:`Record` s of the samples that finish, as they finish.

    ``prompts`` (see :data:`tessy.prompts.Prompts`: a file, a list of strings or dicts, a
    ``datasets.Dataset``) replaces ``config.data``'s source. ``output`` replaces
    ``config.data.output``; with neither, records are kept only in memory (no resume) and
    failures in :attr:`failures`. With an output, the run resumes as ``tessy synth`` does:
    finished ids are skipped and failures go to the failure file. ``engine`` replaces the one
    built from the config (the caller keeps and closes it). ``shard`` runs only the inputs that
    shard owns (see :mod:`tessy.shard`), skipping also the ids it names as done elsewhere.
    """

    def __init__(
        self,
        config: ConfigLike,
        *,
        prompts: Prompts | None = None,
        output: str | Path | None = None,
        engine: Engine | None = None,
        progress: Progress | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.config = config if isinstance(config, SynthConfig) else load_config(config)
        data = self.config.data
        self.prompts: Prompts | None = prompts if prompts is not None else data.source()
        if self.prompts is None:
            raise ConfigError(
                "say where prompts come from: prompts=[...] (or a file), or data.input / data.dataset in the config"
            )
        self.output = Path(output) if output is not None else data.output
        if self.output is not None and self.output.is_dir():
            raise ConfigError(f"the output {self.output} is a folder; give a file name such as out.jsonl")
        self.summary = RunSummary(
            config_hash=self.config.config_hash(),
            output=self.output,
            max_failure_rate=self.config.max_failure_rate,
        )
        #: Failed samples and inputs that were no prompts, when there is no output file.
        self.failures: list[FailureRecord] = []
        self._engine, self._owned = engine, engine is None
        self._progress = progress
        self.shard = shard
        self._store: OutputStore | None = None
        self._started = 0.0
        self._iterator: AsyncGenerator[Record, None] | None = None
        self._verifier: Verifier | None = build_verifier(self.config.verify) if self.config.verifies else None
        if self._verifier is not None:
            self.summary.verification = PassTally(n=self.config.attempts, adaptive=self.config.keep == "first-passing")
        #: Per prompt of an earlier run (several samples per prompt): its attempts and kept samples.
        self._earlier: dict[str, tuple[set[int], int]] = {}

    async def __aenter__(self) -> Synthesis:
        config, data = self.config, self.config.data
        if isinstance(self.prompts, PromptSource):
            try:
                self.prompts.check()
            except DataError as exc:
                raise ConfigError(str(exc)) from None
        self._started = time.perf_counter()
        if self.output is not None:
            self._store = OutputStore.open(
                self.output,
                config=config.dump(),
                config_hash=self.summary.config_hash,
                allow_config_change=data.allow_config_change,
                fsync=data.fsync,
            )
            self.summary.failed_path = self._store.failed_path
            if self.shard is not None:  # what the merged output of a sharded run holds counts as done
                self._store.done_ids |= self.shard.done
                self._store.failed_ids |= self.shard.failed
            self._read_earlier(self.output)
        if self._progress is not None and isinstance(self.prompts, (str, Path, PromptSource)):
            self.summary.total = count_prompts(PromptSource.of(self.prompts), config.limit)
        elif self._progress is not None and hasattr(self.prompts, "__len__"):
            self.summary.total = min(len(self.prompts), config.limit or len(self.prompts))  # type: ignore[arg-type]
        if self.summary.total is not None and (config.keep or "all") == "all":
            self.summary.total *= config.attempts  # progress counts samples: n per prompt
        try:
            if self._engine is None:
                self._engine = build_engine(config)
            await self._engine.check()  # every server answers and serves its model, before any sample
        except BaseException:
            self._close_store()
            if self._owned and self._engine is not None:
                await self._engine.aclose()
                self._engine = None
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._iterator is not None:
                await self._iterator.aclose()  # left early (a break): stop the samples still in flight
        finally:
            self.summary.wall_s = time.perf_counter() - self._started
            if exc is not None:
                self.summary.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            try:
                if self._store is not None:
                    self._store.write_summary(self.summary.to_dict())
            finally:
                self._close_store()
                if self._verifier is not None:
                    await self._verifier.aclose()
                if self._owned and self._engine is not None:
                    await self._engine.aclose()
        logger.info("run finished: %s", self.summary.to_dict())

    def __aiter__(self) -> AsyncIterator[Record]:
        if self._engine is None:
            raise RuntimeError("iterate a Synthesis inside 'async with': it opens the output and the engine")
        if self._iterator is not None:
            raise RuntimeError("a Synthesis runs once; make a new one to run again")
        self._iterator = self._records(self._engine)
        return self._iterator

    async def _records(self, engine: Engine) -> AsyncGenerator[Record, None]:
        config = self.config
        keep = config.keep or "all"
        # A unit is one sample (keep: all) or one prompt's attempts (rejection sampling).
        per_unit = {"all": 1, "first-passing": config.samples_per_prompt or 1}.get(keep, config.attempts)
        concurrency = max(1, config.max_in_flight // per_unit)

        async def unit(sample: Sample) -> list[Record]:
            if keep == "first-passing":
                return await self._first_passing(engine, sample)
            if keep == "best":
                return await self._best(engine, sample)
            return [r for r in [self._emit(*await self._sample(engine, sample))] if r is not None]

        units = map_unordered(unit, self._samples(), concurrency=concurrency, name=lambda s: f"tessy-sample-{s.id}")
        async with aclosing(units):
            async for records in units:
                for record in records:
                    yield record

    async def _sample(self, engine: Engine, sample: Sample) -> tuple[SampleResult, Record | FailureRecord]:
        """One sample run and, where a verifier is set, its record verified (not yet written)."""
        result = await engine.run_sample(sample)
        record = (Record if result.ok else FailureRecord).from_result(
            result, self.summary.config_hash, self.config.mode
        )
        if isinstance(record, Record) and self._verifier is not None:
            record = replace(record, verification=await self._verifier.verify(record))
        return result, record

    def _emit(self, result: SampleResult, record: Record | FailureRecord) -> Record | None:
        """Write one record (where there is an output), count it; the record if it finished."""
        summary = self.summary
        if self._store is not None:
            self._store.write_record(record)
        summary.add(result)
        if summary.verification is not None and isinstance(record, Record):
            summary.verification.add(record)
        summary.wall_s = time.perf_counter() - self._started
        if self._progress is not None:
            self._progress(summary)
        if isinstance(record, Record):
            return record
        if self._store is None:
            self.failures.append(record)
        return None

    def _attempt(self, sample: Sample, k: int) -> Sample:
        """Sample k of a prompt drawn several times: id ``ID#k``, its own seed."""
        base = getattr(self.config.teacher.sampling, "seed", None) or 0
        return replace(sample, id=f"{sample.id}#{k}", prompt_id=sample.id, seed=base + k)

    def _fresh(self, sample: Sample, count: int, used: set[int]) -> list[Sample]:
        """The next ``count`` attempts of a prompt not drawn before (their indexes added to ``used``)."""
        out: list[Sample] = []
        k = 0
        while len(out) < count:
            if k not in used:
                used.add(k)
                out.append(self._attempt(sample, k))
            k += 1
        return out

    async def _first_passing(self, engine: Engine, sample: Sample) -> list[Record]:
        """Draw a prompt's samples until ``samples_per_prompt`` pass or ``max_attempts`` are drawn.

        Each round draws as many samples as passes are still wanted, so every sample that
        passes is kept; every sample drawn is written (``kept`` false when it did not pass)."""
        want, limit = self.config.samples_per_prompt or 1, self.config.attempts
        used, kept = self._earlier.get(sample.id, (set(), 0))
        used = set(used)
        out: list[Record] = []
        while kept < want and len(used) < limit:
            batch = self._fresh(sample, min(want - kept, limit - len(used)), used)
            tasks = [asyncio.ensure_future(self._sample(engine, s)) for s in batch]
            try:
                for done in asyncio.as_completed(tasks):
                    result, record = await done
                    if isinstance(record, Record):
                        passed = record.verification is not None and record.verification.passed is True
                        record = replace(record, kept=passed)
                        kept += passed
                    emitted = self._emit(result, record)
                    if emitted is not None:
                        out.append(emitted)
            finally:  # stopped early (the run was left, or failed): no sample runs on unseen
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return out

    async def _best(self, engine: Engine, sample: Sample) -> list[Record]:
        """Draw ``max_attempts`` samples of a prompt, keep the ``samples_per_prompt`` best
        (passed first, then score, then the earlier attempt), write them all together."""
        drawn = self._fresh(sample, self.config.attempts, set())
        pairs = await asyncio.gather(*(self._sample(engine, s) for s in drawn))
        finished = [r for _, r in pairs if isinstance(r, Record)]

        def rank(r: Record) -> tuple[bool, float, int]:
            v = r.verification
            return (v is not None and v.passed is True, (v.score or 0.0) if v is not None else 0.0, -attempt_index(r))

        best = {r.id for r in sorted(finished, key=rank, reverse=True)[: self.config.samples_per_prompt or 1]}
        out: list[Record] = []
        for result, record in pairs:
            if isinstance(record, Record):
                record = replace(record, kept=record.id in best)
            emitted = self._emit(result, record)
            if emitted is not None:
                out.append(emitted)
        return out

    def _read_earlier(self, output: Path) -> None:
        """What an earlier run left in the output: its verdicts (for pass@n) and, with several
        samples per prompt, each prompt's attempts and kept samples (to resume per sample)."""
        if self._verifier is None and self.config.attempts == 1:
            return
        store = self._store
        assert store is not None
        for record in read_records(output, missing_ok=True):
            if self.summary.verification is not None:
                self.summary.verification.add(record)
            if record.prompt_id is not None:
                used, kept = self._earlier.get(record.prompt_id, (set(), 0))
                self._earlier[record.prompt_id] = (used | {attempt_index(record)}, kept + bool(record.kept))
        if self.config.data.retry_failed:
            return
        for failed in store.failed_ids:
            prompt, _, k = failed.rpartition("#")
            if prompt and k.isdigit():
                used, kept = self._earlier.get(prompt, (set(), 0))
                self._earlier[prompt] = (used | {int(k)}, kept)

    def _samples(self) -> Iterator[Sample]:
        """The samples to run, lazily: malformed inputs recorded, finished (and, unless retried,
        failed) ids of an earlier run skipped, at most ``config.limit`` inputs read."""
        assert self.prompts is not None
        config, data, summary, store = self.config, self.config.data, self.summary, self._store
        items = iter_samples(
            self.prompts,
            prompt_field=data.prompt_field,
            id_field=data.id_field,
            strict=data.strict,
            preset=data.preset,
            fields=data.fields,
        )
        for seen, item in enumerate(items):
            if config.limit is not None and seen >= config.limit:
                return
            if self.shard is not None and not self.shard.owns(item):
                continue
            if isinstance(item, BadLine):
                summary.bad_lines += 1
                if store is None:
                    self.failures.append(
                        FailureRecord.bad_input(item.key, item.error, item.raw, summary.config_hash, item.kind)
                    )
                elif item.key not in store.failed_ids:
                    store.write_bad_line(item)
            else:
                yield from self._todo(item)
                continue
            if self._progress is not None:
                self._progress(summary)

    def _todo(self, item: Sample) -> Iterator[Sample]:
        """What to run of one prompt: the prompt itself, or (keep: all, several samples) each of
        its samples not finished before, or (rejection sampling) the prompt while it needs more
        samples. What is skipped is counted."""
        config, summary, store = self.config, self.summary, self._store
        keep, attempts = config.keep or "all", config.attempts
        if keep != "all":
            used, kept = self._earlier.get(item.id, (set(), 0))
            if (keep == "best" and used) or kept >= (config.samples_per_prompt or 1) or len(used) >= attempts:
                summary.skipped_done += 1
                if self._progress is not None:
                    self._progress(summary)
            else:
                yield item
            return
        for sample in [self._attempt(item, k) for k in range(attempts)] if attempts > 1 else [item]:
            if store is not None and sample.id in store.done_ids:
                summary.skipped_done += 1
            elif store is not None and sample.id in store.failed_ids and not config.data.retry_failed:
                summary.skipped_failed += 1
            else:
                yield sample
                continue
            if self._progress is not None:
                self._progress(summary)

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


async def asynthesize(
    config: ConfigLike,
    *,
    prompts: Prompts | None = None,
    output: str | Path | None = None,
    engine: Engine | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Run a synthesis to the end (see :class:`Synthesis` for the arguments) and return its summary.

    Without ``prompts``/``output`` the config's ``data`` section says where prompts come from
    and where records go; an existing output is resumed. A run needs an output here (its records
    would be lost otherwise): to keep records in memory, iterate a :class:`Synthesis` or call
    ``synthesize(..., dataset=True)``.
    """
    config = config if isinstance(config, SynthConfig) else load_config(config)
    if output is None and config.data.output is None:
        raise ConfigError(
            "say where records go: output=... or data.output (with data.input or data.dataset, or prompts=..., "
            "for the prompts); to keep records in memory iterate tessy.Synthesis or use synthesize(dataset=True)"
        )
    async with Synthesis(config, prompts=prompts, output=output, engine=engine, progress=progress) as run:
        async for _ in run:
            pass
    return run.summary


def synthesize(
    config: ConfigLike,
    *,
    prompts: Prompts | None = None,
    output: str | Path | None = None,
    dataset: bool = False,
    **kwargs: Any,
) -> Any:
    """The blocking form of :func:`asynthesize`, for scripts and notebooks.

    Returns the :class:`RunSummary`; with ``dataset=True`` a ``datasets.Dataset`` of the records
    instead (every finished record of the output file, resumed ones included; or, without an
    output, those of this run). Inside a running event loop (Jupyter) the synthesis runs on a
    loop of its own in a worker thread, and this call waits for it.
    """
    if not dataset:
        return _run_blocking(asynthesize(config, prompts=prompts, output=output, **kwargs))

    async def collect() -> tuple[RunSummary, list[Record]]:
        kept: list[Record] = []
        async with Synthesis(config, prompts=prompts, output=output, **kwargs) as run:
            async for record in run:
                if run.output is None:
                    kept.append(record)
        return run.summary, kept

    from .export import records_dataset

    summary, kept = _run_blocking(collect())
    return records_dataset(read_records(summary.output) if summary.output is not None else kept)


def _run_blocking(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # A loop runs in this thread (a notebook): asyncio.run would refuse, so use another thread.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tessy-synthesize") as pool:
        return pool.submit(asyncio.run, coro).result()
