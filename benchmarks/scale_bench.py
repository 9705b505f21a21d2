"""Kept tokens per second against the number of client processes (``tessy synth --workers N``).

A fast simulated vLLM-like server (``python -m tessy.bench``, its own process; a 2 ms decode step
by default, so that it is not what limits the run) serves the teacher and the student; tessy
runs the same prompts with 1, 2, ... worker processes (each a fresh output), over real HTTP.

For each worker count it prints the wall time, kept tokens/s, the workers' CPU (children's
rusage: what the client costs), the coordinator's CPU (merging the shard files), the server's
CPU, and client CPU microseconds per kept token. Then the model of how it extends: one client
core keeps up with ``1e6 / (CPU us per kept token)`` tokens/s, so a node that serves Y tokens/s
needs ``Y x CPU per kept token`` client cores (workers). On a machine with fewer cores than
workers plus the server, the workers share cores and the scaling says so: read the CPU columns.

Run: ``PYTHONPATH=src python benchmarks/scale_bench.py [--samples 64] [--workers 1,2] [--chunked]``.
The last lines are ``name value`` pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tessy import synthesize_sharded
from tessy.bench.server import READY_PREFIX
from tessy.config import validate_config

SRC = Path(__file__).resolve().parents[1] / "src"


def start_server(params: dict[str, float], think: str, answer: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "tessy.bench", "--params", json.dumps(params), "--think", think, "--answer", answer]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith(READY_PREFIX):
        proc.kill()
        raise SystemExit(f"the simulated server did not start: {line!r}")
    return proc, line[len(READY_PREFIX) :]


def run_config(url: str, *, streaming: bool, in_flight: int, most_tokens: int) -> Any:
    def role(model: str) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": model,
            "endpoints": [url + "/v1"] if not url.endswith("/v1") else [url],
            "format": "qwen3",
            "chunk_tokens": 20,
            "logprobs": False,
            "max_concurrency": in_flight,
            "sampling": {"seed": 0},
        }

    return validate_config(
        {
            "mode": "tessy",
            "streaming": streaming,
            "teacher": role("sim-teacher"),
            "student": role("sim-student"),
            "guards": {"max_total_tokens": 2 * most_tokens + 64, "max_thinking_tokens": 2 * most_tokens},
            "max_in_flight": in_flight,
            "progress_interval_s": 0,
        },
        source="the scaling benchmark's run config",
    )


def server_decoded(url: str) -> int:
    base = url.removesuffix("/v1")
    stats = httpx.get(base + "/stats", timeout=10).json()["models"]
    return sum(int(s["decoded_tokens"]) for s in stats.values())


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2,4")
    parser.add_argument("--in-flight", type=int, default=128, help="samples in flight in all (split among workers)")
    parser.add_argument("--chunked", action="store_true", help="k-token requests instead of streaming")
    parser.add_argument("--decode-step-s", type=float, default=0.002)
    parser.add_argument("--think", default="400,800")
    parser.add_argument("--answer", default="40,80")
    parser.add_argument("--targets", default="10000,30000,50000", help="node tokens/s to size workers for")
    args = parser.parse_args()

    params = {"decode_step_s": args.decode_step_s, "request_overhead_s": 0.0002, "decode_s_per_seq": 1e-6}
    server, url = start_server(params, args.think, args.answer)
    most = int(args.think.split(",")[1]) + int(args.answer.split(",")[1])
    config = run_config(url, streaming=not args.chunked, in_flight=args.in_flight, most_tokens=most)
    prompts = [{"id": f"s{i}", "prompt": f"Problem {i}: add {i} and {2 * i}, then check."} for i in range(args.samples)]
    rows: list[dict[str, float]] = []
    try:
        server_ps = psutil.Process(server.pid)
        for workers in (int(w) for w in args.workers.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                decoded0, cpu0, own0 = server_decoded(url), children_cpu(), self_cpu()
                srv0 = sum(server_ps.cpu_times()[:2])
                started = time.perf_counter()
                summary = synthesize_sharded(config, workers=workers, prompts=prompts, output=Path(tmp) / "out.jsonl")
                wall = time.perf_counter() - started
                client = children_cpu() - cpu0
                srv = sum(server_ps.cpu_times()[:2]) - srv0
                generated = server_decoded(url) - decoded0
            kept = summary.total_tokens
            rows.append(
                {
                    "workers": workers,
                    "written": summary.written,
                    "kept_tokens": kept,
                    "wall_s": wall,
                    "kept_tokens_per_s": kept / wall,
                    "client_cpu_s": client,
                    "coordinator_cpu_s": self_cpu() - own0,
                    "server_cpu_s": srv,
                    "client_cpu_us_per_kept_token": 1e6 * client / max(kept, 1),
                    "generated_per_kept": generated / max(kept, 1),
                }
            )
    finally:
        server.terminate()
        server.wait(10)

    cols = list(rows[0])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"mode: {'chunked k=20' if args.chunked else 'streaming'}; {args.samples} samples; cores: {os.cpu_count()}; load average now: {load}"
    )
    print("".join(f"{c:>30}" for c in cols))
    for row in rows:
        print("".join(f"{row[c]:>30.2f}" if isinstance(row[c], float) else f"{row[c]:>30}" for c in cols))
    # The model takes the CPU one process spends per kept token (the first row, fewest workers).
    per_token = rows[0]["client_cpu_us_per_kept_token"]
    one_core = 1e6 / per_token
    print()
    print(f"model: one client process (one core) keeps up with ~{one_core:.0f} kept tokens/s ({per_token:.0f} us each)")
    for target in (int(t) for t in args.targets.split(",")):
        print(f"model: a node serving {target} tokens/s needs ~{target * per_token / 1e6:.1f} client cores (workers)")
    print()
    for row in rows:
        w = int(row["workers"])
        print(f"kept_tokens_per_s_workers_{w} {row['kept_tokens_per_s']:.1f}")
        print(f"client_cpu_us_per_kept_token_workers_{w} {row['client_cpu_us_per_kept_token']:.2f}")
    if len(rows) > 1:
        print(
            f"speedup_workers_{int(rows[-1]['workers'])}_vs_1 {rows[-1]['kept_tokens_per_s'] / rows[0]['kept_tokens_per_s']:.2f}"
        )
    print(f"one_process_kept_tokens_per_s_model {one_core:.0f}")


if __name__ == "__main__":
    main()
