"""TESSY on the demo models and local llama.cpp servers: chunked vs streaming, and vs teacher-only.

For the same shipped prompts it runs:
- teacher-only generation (the reference: one request for the thinking, one for the answer);
- TESSY with fixed chunks of k = 20 tokens;
- TESSY streaming (each request stopped at its boundary).

It prints requests per sample, discarded tokens per sample, tokens per second and wall time of
each, and the wall-time ratio of each TESSY run to teacher-only. Servers are started once and
shared by the runs (their start-up is not timed). Run: ``python benchmarks/serving_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from tessy.backends.llamacpp import LlamaCppBackend
from tessy.boundary import LexiconPredictor
from tessy.demo import DEMO_SYSTEM_PROMPT
from tessy.engine import Engine, Limits, Role
from tessy.formats import get_format
from tessy.prompts import read_prompts
from tessy.records import Mode, Sample


async def run(engine: Engine, samples: list[Sample]) -> dict[str, float]:
    started = time.perf_counter()
    results = [r async for r in engine.run(samples, max_in_flight=8)]
    wall = time.perf_counter() - started
    ok = [r for r in results if r.ok]
    n = len(results)
    tokens = sum(r.stats.total_tokens for r in results)
    return {
        "samples": n,
        "ok": len(ok),
        "requests/sample": sum(r.stats.requests for r in results) / n,
        "discarded/sample": sum(r.stats.discarded_tokens for r in results) / n,
        "switches/sample": sum(r.stats.switches for r in results) / n,
        "tokens/sample": tokens / n,
        "tokens/s": tokens / wall,
        "wall_s": wall,
    }


PROMPTS = Path(__file__).resolve().parents[1] / "src/tessy/demo_data/prompts.jsonl"


async def main_async(samples: list[Sample], teacher_model: str, student_model: str, threads: int | None) -> None:
    teacher = LlamaCppBackend(teacher_model, n_parallel=4, n_ctx=8192, n_threads=threads)
    student = LlamaCppBackend(student_model, n_parallel=4, n_ctx=8192, n_threads=threads)
    await asyncio.gather(teacher.start(), student.start())
    fmt = get_format("chatml", system_prompt=DEMO_SYSTEM_PROMPT)
    limits = Limits(max_total_tokens=1024, max_thinking_tokens=384)

    def engine(mode: Mode, streaming: bool) -> Engine:
        return Engine(
            Role("teacher", teacher, fmt, LexiconPredictor(), chunk_tokens=20),
            Role("student", student, fmt, LexiconPredictor(), chunk_tokens=20),
            mode=mode,
            limits=limits,
            streaming=streaming,
        )

    try:
        rows = {
            "teacher-only": await run(engine(Mode.TEACHER_ONLY, False), samples),
            "tessy chunked k=20": await run(engine(Mode.TESSY, False), samples),
            "tessy streaming": await run(engine(Mode.TESSY, True), samples),
        }
    finally:
        await teacher.aclose()
        await student.aclose()
    cols = ["ok", "requests/sample", "discarded/sample", "switches/sample", "tokens/sample", "tokens/s", "wall_s"]
    print(f"{'run':<20}" + "".join(f"{c:>18}" for c in cols))
    for name, row in rows.items():
        print(f"{name:<20}" + "".join(f"{row[c]:>18.2f}" for c in cols))
    base = rows["teacher-only"]["wall_s"]
    print(f"wall_ratio_chunked_to_teacher_only {rows['tessy chunked k=20']['wall_s'] / base:.3f}")
    print(f"wall_ratio_streaming_to_teacher_only {rows['tessy streaming']['wall_s'] / base:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="qwen2.5-coder-0.5b")
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N demo prompts")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per server (default: all)")
    args = parser.parse_args()
    samples = [s for s in read_prompts(PROMPTS) if isinstance(s, Sample)][: args.limit]
    asyncio.run(main_async(samples, args.teacher, args.student, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
