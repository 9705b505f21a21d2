"""One synthesis run split over shards: worker processes on this machine, or actors on a Ray
cluster (:mod:`tessy.ray_runner`), with one output, one failure file and one summary.

One client process tops out at a few thousand kept tokens a second (its CPU: HTTP, SSE, the
predictors), while a GPU node serves tens of thousands; so the client spreads over processes.

How the work is split and put back together:

- Each shard is an ordinary :class:`~tessy.synth.Synthesis` of the inputs it owns (a stable hash
  of the id, :mod:`tessy.shard`), with its own event loop and its own engine, writing its own
  file ``OUT.shard-K.jsonl`` (and ``OUT.shard-K.failed.jsonl``) under its own lock: one writer
  per file, so every file is append-only JSONL whose torn tail, if a kill leaves one, is cut off.
- The coordinator (the process that called :func:`tessy.synthesize_sharded`) holds ``OUT.lock`` for
  the whole run, so a second run on the same output is refused as with one process. While the
  shards run, it follows their files and appends each whole new line to ``OUT.jsonl`` or
  ``OUT.failed.jsonl`` (an id at most once), so the output grows as the run goes; it writes the
  run's one ``OUT.summary.json``. When every shard has ended it merges a last time and removes
  the shard files.
- A shard that dies (a killed process, a lost actor) loses only the samples it had in flight:
  what it wrote is merged; a Ray actor is restarted and resumes from its own file; locally the
  other shards finish and the run ends with a :class:`~tessy.errors.ShardError` (a rerun does
  the rest). A coordinator that dies leaves the shard files: the next run merges them first
  (the ids not yet in ``OUT.jsonl``), and the shards then skip every id the output holds.
- The servers' limits are shared: ``max_in_flight`` and each role's ``max_concurrency`` (per
  replica) are divided among the shards (rounded up), so N shards together load a server as
  one process would. Neither setting is in the config hash, so records carry the run's hash.

Why not N writers on one file: appends from several processes are atomic neither on network
file systems (the shared storage of a cluster) nor, for a long record, when a writer is killed
mid-write: its torn line would sit in the middle of the file, under the lines others append.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections import Counter
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .config import SynthConfig
from .data import OutputStore, sidecar_paths, summary_path
from .data import lock_path as _lock_path
from .errors import ConfigError, DataError, ShardError
from .jsonl import read_jsonl, tail_jsonl
from .prompts import Prompts, PromptSource
from .records import FailureRecord, Record
from .shard import Shard, shard_of, shard_output, shard_outputs
from .synth import Progress, RunSummary, Synthesis, count_prompts
from .verify import PassTally

__all__ = ["Launcher", "ProcessLauncher", "ShardJob", "run_shard", "run_sharded", "split_config"]

logger = logging.getLogger(__name__)

#: Seconds between looks at the shards' files (and progress calls) while they run.
TICK_S = 0.25
#: Backends whose servers the shards share; the others would start a model per shard.
SHARED_BACKENDS = ("openai", "scripted")


@dataclass(frozen=True)
class ShardJob:
    """What one shard runs; it travels (pickled) to a process or a Ray actor."""

    config: SynthConfig
    prompts: Prompts
    #: The shard's own file, ``OUT.shard-K.jsonl``.
    output: Path
    shard: Shard


def run_shard(job: ShardJob) -> dict[str, Any]:
    """Run one shard to its end in this process (on an event loop of its own); return its summary."""

    async def run() -> RunSummary:
        async with Synthesis(job.config, prompts=job.prompts, output=job.output, shard=job.shard) as synthesis:
            async for _ in synthesis:
                pass
        return synthesis.summary

    return asyncio.run(run()).to_dict()


class Launcher(Protocol):
    """Starts shards somewhere (processes, actors) and says when they end."""

    def start(self, job: ShardJob) -> None:
        """Start running ``job`` (shard ``job.shard.index``)."""

    def wait(self, timeout: float) -> list[tuple[int, str | None]]:
        """Wait up to ``timeout`` seconds; return the shards that ended since the last call,
        each with why it ended early (``None``: it ran to its end)."""

    def stop(self) -> None:
        """End every shard still running, and wait for them to be gone."""


def _shard_process(job: ShardJob, report: multiprocessing.connection.Connection) -> None:
    """A worker process's body: run the shard; tell the coordinator how it ended."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when a run stops
    try:
        run_shard(job)
    except BaseException as exc:
        report.send(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        raise SystemExit(1) from None
    report.send(None)


class ProcessLauncher:
    """Shards as processes on this machine (``spawn``: each starts clean, whatever the caller's
    threads and event loops)."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._running: dict[int, tuple[Any, multiprocessing.connection.Connection]] = {}

    def start(self, job: ShardJob) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_shard_process, args=(job, send), name=f"tessy-{job.shard}".replace(" ", "-")
        )
        process.start()
        send.close()
        self._running[job.shard.index] = (process, receive)

    def wait(self, timeout: float) -> list[tuple[int, str | None]]:
        if not self._running:
            return []
        sentinels = [process.sentinel for process, _ in self._running.values()]
        ready = set(multiprocessing.connection.wait(sentinels, timeout))
        ended: list[tuple[int, str | None]] = []
        for index, (process, receive) in list(self._running.items()):
            if process.sentinel in ready:
                process.join()
                ended.append((index, self._why(process.exitcode, receive)))
                receive.close()
                del self._running[index]
        return ended

    @staticmethod
    def _why(code: int | None, receive: multiprocessing.connection.Connection) -> str | None:
        message = None
        try:
            if receive.poll():
                message = receive.recv()
        except (EOFError, OSError):
            pass
        if code is not None and code < 0:
            return f"its process was killed by {signal.Signals(-code).name}"
        if message is not None or code == 0:
            return message
        return f"its process exited with code {code}"

    def stop(self) -> None:
        for process, _ in self._running.values():
            if process.is_alive():
                process.terminate()
        for process, receive in self._running.values():
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()
            receive.close()
        self._running.clear()


def split_config(config: SynthConfig, count: int) -> SynthConfig:
    """The config of one of ``count`` shards: ``max_in_flight`` and each role's
    ``max_concurrency`` divided among them (rounded up); nothing else changes, nor the hash."""

    def share(value: int) -> int:
        return max(1, -(-value // count))

    roles = {
        name: role.model_copy(update={"max_concurrency": share(role.max_concurrency)})
        for name, role in (("teacher", config.teacher), ("student", config.student))
    }
    return config.model_copy(update={**roles, "max_in_flight": share(config.max_in_flight)})


class _Merger:
    """Follows the shards' files and appends each new whole line to the run's output (each id at
    most once), counting what this run made in the summary."""

    def __init__(self, store: OutputStore, summary: RunSummary) -> None:
        self.store = store
        self.summary = summary
        self._offsets: dict[Path, int] = {}
        #: Lines merged from each shard (by its file) this run: records, failures, malformed inputs.
        self.merged: dict[Path, Counter[str]] = {}

    def merge(self, outputs: Iterable[Path]) -> None:
        """Merge what the shard files ``outputs`` (and their failure files) gained."""
        for output in outputs:
            for path, failures in ((output, False), (sidecar_paths(output)[0], True)):
                objs, self._offsets[path] = tail_jsonl(path, self._offsets.get(path, 0))
                self._append(path, objs, failures=failures, counts=self.merged.setdefault(output, Counter()))

    def _append(
        self, path: Path, objs: Iterable[dict[str, Any]], *, failures: bool, counts: Counter[str] | None
    ) -> None:
        store, summary = self.store, self.summary
        for obj in objs:
            try:
                record: Record | FailureRecord = FailureRecord.from_json(obj) if failures else Record.from_json(obj)
            except ValueError as exc:
                logger.warning("%s: skipped a line that is no record (%s)", path, exc)
                continue
            if record.id in store.done_ids or (failures and record.id in store.failed_ids):
                continue
            store.write_record(record)
            (store.failed_ids if failures else store.done_ids).add(record.id)
            if counts is None:
                continue
            if isinstance(record, FailureRecord) and record.raw is not None:
                summary.bad_lines += 1  # an input that was no sample, counted as one process counts it
                counts["bad_lines"] += 1
            else:
                summary.add(record)
                if summary.verification is not None and isinstance(record, Record):
                    summary.verification.add(record)
                counts["failed" if failures else "written"] += 1

    def recover(self, config: SynthConfig) -> None:
        """Merge, then remove, the shard files an earlier run left (its coordinator ended before
        it could). They hold that run's records, so they are not counted in this run's summary.
        Each is opened as an output (its lock taken, its torn tail cut, its config hash checked):
        a worker of that run still writing one is refused, not merged under its feet."""
        left = list(shard_outputs(self.store.output).values())
        for output in left:
            with OutputStore.open(
                output,
                config=config.dump(),
                config_hash=self.store.config_hash,
                allow_config_change=config.data.allow_config_change,
            ) as shard_store:
                for path, failures in ((output, False), (shard_store.failed_path, True)):
                    self._append(path, read_jsonl(path, missing_ok=True), failures=failures, counts=None)
            _remove_shard_files(output)
        if left:
            logger.warning("merged %d shard file(s) an earlier run left into %s", len(left), self.store.output)

    def add_skipped(self, outputs: Iterable[Path]) -> None:
        """Add to the summary the inputs the shards skipped, from their own summaries.

        A shard that ran more than once in this run (a restarted actor) skipped, in its last
        attempt, also what its earlier ones wrote: those were merged and counted as written, so
        what it finished or skipped, less what was merged from it, is what was done before."""
        summary = self.summary
        for output in outputs:
            try:
                last = json.loads(summary_path(output).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a shard that was killed wrote none
            merged = self.merged.get(output, Counter())
            failed = sum((last.get("failed") or {}).values())
            summary.skipped_done += max(0, last["written"] + last["skipped_done"] - merged["written"])
            summary.skipped_failed += max(0, failed + last["skipped_failed"] - merged["failed"])
            # Malformed inputs are counted in every run, recorded or not (as one process does).
            summary.bad_lines += last["bad_lines"] - merged["bad_lines"]


def _remove_shard_files(output: Path) -> None:
    for path in (output, *sidecar_paths(output), summary_path(output), _lock_path(output)):
        path.unlink(missing_ok=True)


def _by_shard(ids: Iterable[str], count: int) -> list[list[str]]:
    groups: list[list[str]] = [[] for _ in range(count)]
    for sample_id in ids:
        groups[shard_of(sample_id, count)].append(sample_id)
    return groups


def _check_shared_servers(config: SynthConfig) -> None:
    if (config.keep or "all") != "all":
        raise ConfigError(
            f"keep: {config.keep} decides among a prompt's samples as they finish, in one process: run it "
            "without --workers / --ray (or with keep: all, which shards: every sample is written and verified)"
        )
    for name, role in (("teacher", config.teacher), ("student", config.student)):
        if role.backend not in SHARED_BACKENDS:
            raise ConfigError(
                f"{name}.backend is {role.backend!r}: each shard would load a model of its own. A sharded "
                "run needs servers the shards share: backend openai (vLLM, SGLang, llama.cpp servers)"
            )


def run_sharded(
    config: SynthConfig,
    launcher: Launcher,
    count: int,
    *,
    prompts: Prompts | None = None,
    output: str | Path | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Run ``config`` as ``count`` shards started by ``launcher`` (see the module's doc)."""
    if count < 1:
        raise ConfigError(f"a sharded run needs at least one shard, not {count}")
    _check_shared_servers(config)
    data = config.data
    prompts = prompts if prompts is not None else data.source()
    if prompts is None:
        raise ConfigError("say where prompts come from: prompts=[...] (or a file), or data.input / data.dataset")
    out = Path(output) if output is not None else data.output
    if out is None:
        raise ConfigError("a sharded run needs an output file: output=... or data.output")
    if isinstance(prompts, PromptSource):
        try:
            prompts.check()
        except DataError as exc:
            raise ConfigError(str(exc)) from None
    started = time.perf_counter()
    config_hash = config.config_hash()
    store = OutputStore.open(
        out,
        config=config.dump(),
        config_hash=config_hash,
        allow_config_change=data.allow_config_change,
        fsync=data.fsync,
    )
    summary = RunSummary(
        config_hash=config_hash, output=out, failed_path=store.failed_path, max_failure_rate=config.max_failure_rate
    )
    if config.verifies:  # pass rates, as one process sums them
        summary.verification = PassTally(n=config.attempts)
    merger = _Merger(store, summary)
    outputs = [shard_output(out, index) for index in range(count)]
    errors: dict[int, str] = {}
    try:
        merger.recover(config)
        if progress is not None and isinstance(prompts, (str, Path, PromptSource)):
            summary.total = count_prompts(PromptSource.of(prompts), config.limit)
        elif progress is not None and isinstance(prompts, Sized):
            summary.total = min(len(prompts), config.limit or len(prompts))
        shard_config = split_config(config, count)
        done, failed = _by_shard(store.done_ids, count), _by_shard(store.failed_ids, count)
        for index, shard_out in enumerate(outputs):
            shard = Shard(index, count, frozenset(done[index]), frozenset(failed[index]))
            launcher.start(ShardJob(shard_config, prompts, shard_out, shard))
        running = set(range(count))
        while running:
            for index, why in launcher.wait(TICK_S):
                running.discard(index)
                if why is not None:
                    errors[index] = why
                    logger.error("shard %d of %d ended early: %s", index, count, why)
            merger.merge(outputs)
            summary.wall_s = time.perf_counter() - started
            if progress is not None:
                progress(summary)
    except BaseException as exc:
        summary.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise
    finally:
        try:
            launcher.stop()
            merger.merge(outputs)
            merger.add_skipped(outputs)
            for shard_out in outputs:
                _remove_shard_files(shard_out)
            summary.wall_s = time.perf_counter() - started
            if errors and summary.error is None:
                summary.error = "; ".join(f"shard {index}: {why}" for index, why in sorted(errors.items()))
            store.write_summary(summary.to_dict())
        finally:
            store.close()
    logger.info("sharded run finished: %s", summary.to_dict())
    if errors:
        raise ShardError(
            f"{len(errors)} of {count} shards ended before their samples did ({summary.error}). "
            f"The {summary.written} records written are in {out}; run the same command again to run the rest."
        )
    return summary
