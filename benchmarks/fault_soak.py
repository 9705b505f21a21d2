"""Fault soak: does a flaky or dead server ever change the data?

Against the simulated vLLM-like server (output a function of prompt and seed) behind a
fault-injecting proxy (:class:`tessy.bench.faults.FaultProxy`: 500, 429, hang, empty
completion, malformed JSON, reset mid-stream), it runs ``tessy synth`` over the same prompts
at each fault rate, chunked and streaming, and compares every record written with the
fault-free run's record for the same prompt (messages and spans). Then, once per mode, it takes
the server down for ``--outage-s`` seconds in the middle of a run and brings it back on the same
port. It prints, per run: records written, identical, different, failed, retried requests,
faults injected and wall time. Any different record is a bug.

Run: ``python benchmarks/fault_soak.py`` (200 samples, 0/10/30 % faults through the proxy, a 60 s outage; about
five minutes) or ``python benchmarks/fault_soak.py --samples 50 --outage-s 5`` for a quick look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tessy import load_config
from tessy.bench import SimParams, SimServer, Workload, make_engines
from tessy.bench.faults import FaultProxy
from tessy.synth import RunSummary, asynthesize

PARAMS = SimParams(decode_step_s=0.002, decode_s_per_seq=1e-5, prefill_s_per_token=1e-7, request_overhead_s=0.0)


def config(folder: Path, url: str, n: int, *, streaming: bool, name: str, outage_timeout_s: float) -> Path:
    prompts = folder / "in.jsonl"
    if not prompts.exists():
        prompts.write_text(
            "".join(
                json.dumps({"id": f"p{i}", "prompt": f"Problem {i}: add {i} and {3 * i + 1}."}) + "\n" for i in range(n)
            )
        )

    def role(model: str) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": model,
            "endpoints": [url],
            "format": "qwen3",
            "chunk_tokens": 20,
            "max_concurrency": 64,
            "max_retries": 4,
            "backoff_s": 0.05,
            "timeout_s": 3.0,
            "outage_timeout_s": outage_timeout_s,
            "sampling": {"seed": 0},
        }

    body = {
        "streaming": streaming,
        "max_in_flight": 64,
        "teacher": role("sim-teacher"),
        "student": role("sim-student"),
        "guards": {"max_request_failures": 3, "max_total_tokens": 4096, "max_thinking_tokens": 3072},
        "data": {"input": str(prompts), "output": str(folder / f"{name}.jsonl")},
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(body))
    return path


def records(path: Path) -> dict[str, Any]:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "messages" in r and "spans" in r:
            out[r["id"]] = (r["messages"], r["spans"], r["stats"].get("retried_requests", 0))
    return out


async def one(path: Path, *, proxy: FaultProxy | None = None, outage_s: float = 0.0) -> tuple[RunSummary, float]:
    cfg = load_config(path)
    started = time.perf_counter()
    down = asyncio.Event()

    def progress(summary: RunSummary) -> None:
        if outage_s and summary.written >= summary.total // 4 if summary.total else False:
            down.set()

    async def take_down() -> None:
        assert proxy is not None
        await down.wait()
        await proxy.stop()
        await asyncio.sleep(outage_s)
        await proxy.start()

    task = asyncio.create_task(take_down()) if outage_s and proxy is not None else None
    try:
        summary = await asynthesize(cfg, progress=progress)
    finally:
        if task is not None:
            if not down.is_set():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return summary, time.perf_counter() - started


async def main(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="tessy-soak-"))
    rows: list[dict[str, Any]] = []
    bad = 0
    async with SimServer(make_engines(PARAMS, Workload((200, 600), (20, 60)))) as sim:
        for streaming in (False, True):
            mode = "streaming" if streaming else "chunked"
            clean_path = config(
                folder, sim.url, args.samples, streaming=streaming, name=f"{mode}-clean", outage_timeout_s=600
            )
            clean, wall = await one(clean_path)
            expected = records(folder / f"{mode}-clean.jsonl")
            rows.append(
                {
                    "mode": mode,
                    "run": "direct, no proxy",
                    "summary": clean,
                    "wall": wall,
                    "same": len(expected),
                    "diff": 0,
                    "faults": 0,
                    "retried": 0,
                }
            )
            runs = [(f"{rate:.0%} faults", rate, 0.0) for rate in args.rates]
            if args.outage_s:
                runs.append((f"{args.outage_s:g} s outage", 0.0, args.outage_s))
            for label, rate, outage_s in runs:
                async with FaultProxy(sim.url, rate=rate, seed=args.seed, hang_s=4.0) as proxy:
                    name = f"{mode}-{label.replace(' ', '-').replace('%', 'pc')}"
                    path = config(
                        folder,
                        proxy.url,
                        args.samples,
                        streaming=streaming,
                        name=name,
                        outage_timeout_s=max(600, 2 * outage_s),
                    )
                    summary, wall = await one(path, proxy=proxy, outage_s=outage_s)
                    got = records(folder / f"{name}.jsonl")
                    same = sum(1 for k, v in got.items() if v[:2] == expected[k][:2])
                    bad += len(got) - same
                    rows.append(
                        {
                            "mode": mode,
                            "run": label,
                            "summary": summary,
                            "wall": wall,
                            "same": same,
                            "diff": len(got) - same,
                            "faults": sum(proxy.injected.values()),
                            "retried": sum(v[2] for v in got.values()),
                        }
                    )
    header = f"{'mode':<10} {'run':<18} {'written':>7} {'identical':>9} {'different':>9} {'failed':>6} {'retried req':>11} {'faults':>6} {'wall s':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        s: RunSummary = r["summary"]
        print(
            f"{r['mode']:<10} {r['run']:<18} {s.written:>7} {r['same']:>9} {r['diff']:>9} {s.n_failed:>6} "
            f"{r['retried']:>11} {r['faults']:>6} {r['wall']:>7.1f}"
        )
    print(f"\n{args.samples} samples a run; outputs in {folder}")
    return 1 if bad else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--outage-s", type=float, default=60.0, help="server down this long mid-run (0: no outage run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    sys.exit(asyncio.run(main(parser.parse_args())))
