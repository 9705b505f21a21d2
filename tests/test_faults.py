"""Faults never change the data: against a server that fails a share of its requests (all six
kinds: 500, 429, hang, empty completion, malformed JSON, reset mid-stream), every record written
is identical to the fault-free run's record for the same prompt, streaming and chunked.

The simulated server's output is a function of the prompt and seed, so the fault-free run is
reproducible; the faults come from a proxy in front of it (:class:`tessy.bench.faults.FaultProxy`).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tessy import load_config
from tessy.bench import SimParams, SimServer, Workload, make_engines
from tessy.bench.faults import FAULT_KINDS, FaultProxy
from tessy.errors import OutageError
from tessy.synth import RunSummary, asynthesize

pytestmark = pytest.mark.contract

FAST = SimParams(decode_step_s=0.001, decode_s_per_seq=0.0, prefill_s_per_token=0.0, request_overhead_s=0.0)
WORKLOAD = Workload((40, 80), (5, 10))
N = 16


def write_config(tmp: Path, url: str, *, streaming: bool, name: str, **extra: Any) -> Path:
    (tmp / "in.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"Problem {i}: add {i} and {2 * i}."}) + "\n" for i in range(N))
    )

    def role(model: str) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": model,
            "endpoints": [url],
            "format": "qwen3",
            "chunk_tokens": 16,
            "max_retries": 4,
            "backoff_s": 0.0,
            "timeout_s": 0.5,
            "sampling": {"seed": 0},
            **extra,
        }

    config = {
        "streaming": streaming,
        "teacher": role("sim-teacher"),
        "student": role("sim-student"),
        "guards": {"max_request_failures": 3, "max_total_tokens": 2048, "max_thinking_tokens": 1536},
        "data": {"input": str(tmp / "in.jsonl"), "output": str(tmp / f"{name}.jsonl")},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps(config))
    return path


def records(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "id" in r and "messages" in r:
            out[r["id"]] = {"messages": r["messages"], "spans": r["spans"]}
    return out


def stats(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line)["stats"] for line in path.read_text().splitlines() if '"stats"' in line]


async def synth(path: Path, *overrides: str, progress: Any = None) -> RunSummary:
    return await asynthesize(load_config(path, list(overrides)), progress=progress)


@pytest.mark.parametrize("streaming", [False, True], ids=["chunked", "streaming"])
async def test_faults_never_change_the_data(tmp_path: Path, streaming: bool) -> None:
    async with SimServer(make_engines(FAST, WORKLOAD)) as sim:
        clean = await synth(write_config(tmp_path, sim.url, streaming=streaming, name="clean"))
        assert clean.written == N and not clean.failed
        expected = records(tmp_path / "clean.jsonl")
        for rate in (0.1, 0.3):
            name = f"faults{int(rate * 100)}"
            async with FaultProxy(sim.url, rate=rate, seed=7, hang_s=1.0) as proxy:
                path = write_config(tmp_path, proxy.url, streaming=streaming, name=name)
                summary = await synth(path)
                # Every kind of fault happened, and none of them changed a record.
                assert set(proxy.injected) == set(FAULT_KINDS), proxy.injected
                got = records(tmp_path / f"{name}.jsonl")
                assert got and all(got[k] == expected[k] for k in got), rate
                assert sum(s["retried_requests"] for s in stats(tmp_path / f"{name}.jsonl")) > 0
                # A sample that ran out of tries says why; a rerun completes it.
                if summary.failed:
                    failed = (tmp_path / f"{name}.failed.jsonl").read_text().splitlines()
                    assert all(json.loads(line)["failure"] for line in failed)
                    proxy.rate = 0.0
                    again = await synth(path, "data.retry_failed=true")
                    assert again.written == summary.n_failed and not again.failed
                    got = records(tmp_path / f"{name}.jsonl")
                assert got == expected


class Outage:
    """Takes the server down once ``after`` records are written (told by the run's progress
    callback) and brings it back after ``down_s`` seconds (never, for None)."""

    def __init__(self, proxy: FaultProxy, *, after: int, down_s: float | None) -> None:
        self.proxy, self.after, self.down_s = proxy, after, down_s
        self.reached = asyncio.Event()
        self.written_before = 0
        self.task = asyncio.create_task(self._run())

    def progress(self, summary: RunSummary) -> None:
        if summary.written >= self.after and not self.reached.is_set():
            self.written_before = summary.written
            self.reached.set()

    async def _run(self) -> None:
        await self.reached.wait()
        await self.proxy.stop()
        if self.down_s is not None:
            await asyncio.sleep(self.down_s)
            await self.proxy.start()


SLOW = SimParams(decode_step_s=0.004, decode_s_per_seq=0.0, prefill_s_per_token=0.0, request_overhead_s=0.0)


@pytest.mark.parametrize("streaming", [False, True], ids=["chunked", "streaming"])
async def test_an_outage_pauses_the_run_and_it_completes(tmp_path: Path, streaming: bool) -> None:
    async with SimServer(make_engines(SLOW, WORKLOAD)) as sim:
        await synth(write_config(tmp_path, sim.url, streaming=streaming, name="clean"))
        expected = records(tmp_path / "clean.jsonl")
        async with FaultProxy(sim.url, rate=0.0) as proxy:
            path = write_config(tmp_path, proxy.url, streaming=streaming, name="outage", outage_timeout_s=30)
            down = Outage(proxy, after=3, down_s=2.0)
            summary = await synth(path, "max_in_flight=8", progress=down.progress)
            await down.task
            written_before = down.written_before
        # The server went down in the middle of the run; samples waited, none failed.
        assert 3 <= written_before < N
        assert summary.written == N and not summary.failed
        assert records(tmp_path / "outage.jsonl") == expected


async def test_an_outage_past_the_timeout_ends_the_run_with_the_records_kept(tmp_path: Path) -> None:
    async with SimServer(make_engines(SLOW, WORKLOAD)) as sim:
        await synth(write_config(tmp_path, sim.url, streaming=False, name="clean"))
        expected = records(tmp_path / "clean.jsonl")
        async with FaultProxy(sim.url, rate=0.0) as proxy:
            path = write_config(tmp_path, proxy.url, streaming=False, name="dead", outage_timeout_s=1.0)
            down = Outage(proxy, after=3, down_s=None)
            started = time.monotonic()
            with pytest.raises(OutageError, match=r"sim-(teacher|student).*1 s \(outage_timeout_s\)"):
                await synth(path, "max_in_flight=8", progress=down.progress)
            assert time.monotonic() - started < 15
            await down.task
            written_before = down.written_before
        kept = records(tmp_path / "dead.jsonl")
        assert written_before <= len(kept) < N and all(kept[k] == expected[k] for k in kept)
        assert not (tmp_path / "dead.failed.jsonl").exists() or not (tmp_path / "dead.failed.jsonl").read_text()
        # The same command resumes once the server is back.
        async with FaultProxy(sim.url, rate=0.0, port=proxy.port) as back:
            assert back.url == proxy.url
            summary = await synth(path)
        assert summary.written == N - len(kept) and not summary.failed
        assert records(tmp_path / "dead.jsonl") == expected
