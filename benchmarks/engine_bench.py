"""Engine overhead with zero-latency fake models.

Prints:
1. engine steps (requests) per second at k = 20;
2. the per-step cost for 1K-token and 30K-token responses, and their ratio (it must stay
   under 1.3: no per-step work may grow with the length of the response);
3. resident memory while streaming 100K input prompts (a JSONL file, or with ``--input
   parquet`` a Parquet file) through ``tessy.asynthesize`` to a JSONL file (it must stay flat:
   input is read lazily, output written as samples finish).

The fake models write pseudo-random words (a seeded generator per sample and role), so the
text never repeats and cuts happen at a realistic rate. Run: ``python benchmarks/engine_bench.py``
(``--quick`` for a smaller run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from tessy import Engine, Limits, Role, RunSummary, Sample, asynthesize, get_format, load_config
from tessy.backends import GenerateRequest
from tessy.boundary import LexiconPredictor
from tessy.fakes import ScriptedBackend

WORDS = (
    "the sum of each term gives a bound on n and we check that x is even so the loop ends after "
    "k steps because every edge joins two nodes in the tree hence the answer is odd when m divides "
    "p while the array stays sorted after each swap of i and j"
).split()
STYLE = ["Okay,", "So", "Wait,", "Hmm,", "Let me", "Now", "But", "Then", "Alternatively,"]


def fake_model(role: str, style_rate: float) -> ScriptedBackend:
    """A zero-latency model writing random words; the student opens each turn with a style word."""
    rngs: dict[str, random.Random] = {}

    def respond(request: GenerateRequest) -> list[str]:
        rng = rngs.get(request.sample_id)
        if rng is None:
            rng = rngs[request.sample_id] = random.Random(f"{role}:{request.sample_id}")
        if request.phase == "answer":
            return [" The", " answer", " is", f" {rng.randint(0, 99)}", "."]
        out: list[str] = []
        if role == "student":
            out.append(" " + rng.choice(STYLE))
        while len(out) <= request.max_tokens:
            word = rng.choice(STYLE) if rng.random() < style_rate else rng.choice(WORDS)
            out.append(" " + word)
        return out

    return ScriptedBackend(responder=respond, record=False, max_concurrency=256)


def engine(thinking_tokens: int) -> Engine:
    fmt = get_format("qwen3")
    lexicon = LexiconPredictor()
    return Engine(
        Role("teacher", fake_model("teacher", 0.04), fmt, lexicon, chunk_tokens=20),
        Role("student", fake_model("student", 0.5), fmt, lexicon, chunk_tokens=20),
        limits=Limits(max_total_tokens=thinking_tokens + 64, max_thinking_tokens=thinking_tokens),
    )


async def run_samples(eng: Engine, n: int, tag: str) -> tuple[int, int, float]:
    samples = (Sample.from_prompt(f"{tag}{i}", f"problem {i}") for i in range(n))
    steps = tokens = 0
    started = time.perf_counter()
    async for result in eng.run(samples, max_in_flight=64):
        assert result.ok, result.failure
        steps += result.stats.requests
        tokens += result.stats.think_tokens
    return steps, tokens, time.perf_counter() - started


def bench_steps(quick: bool) -> None:
    short_n, long_n = (40, 2) if quick else (240, 8)
    s_steps, s_tokens, s_wall = asyncio.run(run_samples(engine(1_000), short_n, "s"))
    l_steps, l_tokens, l_wall = asyncio.run(run_samples(engine(30_000), long_n, "l"))
    s_cost, l_cost = s_wall / s_steps * 1e6, l_wall / l_steps * 1e6
    print("== engine steps (zero-latency fakes, k = 20, lexicon predictors) ==")
    print(
        f"1K-token responses : {short_n} samples, {s_steps} steps, {s_steps / s_wall:,.0f} steps/s, {s_cost:.1f} us/step"
    )
    print(
        f"30K-token responses: {long_n} samples, {l_steps} steps, {l_steps / l_wall:,.0f} steps/s, {l_cost:.1f} us/step"
    )
    print(f"tokens per step    : {s_tokens / s_steps:.1f} (1K), {l_tokens / l_steps:.1f} (30K)")
    print(f"per_step_ratio_30k_to_1k {l_cost / s_cost:.3f}  (target < 1.3)")


OFFLINE_CONFIG = """
student: {{backend: scripted, chunk_tokens: 20, responses: [" Okay, so let me see", " Wait, so the next step"], answers: ["Done."]}}
teacher: {{backend: scripted, chunk_tokens: 20, responses: [" we add the two numbers and carry the one.</think>"]}}
guards: {{max_total_tokens: 256, max_thinking_tokens: 128}}
max_in_flight: 256
data: {{input: {input}, output: {output}}}
"""


def write_prompts(folder: Path, n: int, kind: str) -> Path:
    rows = ({"id": f"p{i}", "prompt": f"Problem {i}: add {i} and {i + 1}."} for i in range(n))
    if kind == "parquet":  # row groups of 10K rows, as a dataset's shards usually have
        import pyarrow as pa
        import pyarrow.parquet as pq

        src = folder / "prompts.parquet"
        schema = pa.schema([("id", pa.string()), ("prompt", pa.string())])
        with pq.ParquetWriter(src, schema) as writer:
            batch: list[dict[str, str]] = []
            for row in rows:
                batch.append(row)
                if len(batch) == 10_000:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        return src
    src = folder / "prompts.jsonl"
    with src.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return src


def bench_memory(n: int, kind: str = "jsonl") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = write_prompts(Path(tmp), n, kind), Path(tmp) / "out.jsonl"
        config = load_config(data=yaml.safe_load(OFFLINE_CONFIG.format(input=src, output=out)))
        proc = psutil.Process()
        marks = sorted({n // 10, n // 2, n})
        readings: list[tuple[int, float]] = []

        def progress(summary: RunSummary) -> None:
            if marks and summary.processed >= marks[0]:
                marks.pop(0)
                readings.append((summary.processed, proc.memory_info().rss / 2**20))

        started = time.perf_counter()
        summary = asyncio.run(asynthesize(config, progress=progress))
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"== memory while streaming {n:,} prompts ({kind}) through tessy.asynthesize ==")
        print(f"written {summary.written:,} records ({out.stat().st_size / 2**20:.1f} MiB) in {wall:.1f} s")
        for done, rss in readings:
            print(f"RSS after {done:>7,} prompts: {rss:6.1f} MiB")
        growth = readings[-1][1] - readings[0][1]
        print(
            f"rss_growth_mib {growth:.1f} (from {readings[0][0]:,} to {readings[-1][0]:,} prompts); peak RSS {peak:.1f} MiB"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (seconds)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts for the memory run (default 100000)")
    parser.add_argument(
        "--input", choices=["jsonl", "parquet"], default="jsonl", help="the prompts' file for the memory run"
    )
    parser.add_argument("--memory-only", action="store_true", help="skip the step benchmarks")
    args = parser.parse_args()
    if not args.memory_only:
        bench_steps(args.quick)
    bench_memory(args.prompts or (10_000 if args.quick else 100_000), args.input)
    return 0


if __name__ == "__main__":
    sys.exit(main())
