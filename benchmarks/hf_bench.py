"""The hf backend under TESSY: what is prefilled, and decode speed against plain ``generate()``.

Runs the same prompts three ways with two real models (default: SmolLM2-135M student,
Qwen2.5-Coder-0.5B teacher, greedy, on the CPU):

1. TESSY with the hf backend as it is: one KV cache per (sample, role), so each request feeds
   only the tokens its model has not seen (the other model's new span, mostly);
2. TESSY with the caches off (``cache_tokens=0``): every request prefills its whole prompt, as
   a server without prefix caching would;
3. plain ``model.generate()`` of as many tokens as each model generated in run 1, one sample at
   a time from that sample's first prompt.

It prints, for each: prefill tokens per generated token, tokens/s, and the wall time.
Run: ``python benchmarks/hf_bench.py`` (``--samples 2 --thinking 64`` for a quicker run,
``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tessy import Engine, Limits, Role, Sample, get_format
from tessy.backends import SamplingParams
from tessy.backends.hf import HFBackend, HFStats
from tessy.boundary import LexiconPredictor
from tessy.records import SampleResult

PROMPTS = Path(__file__).resolve().parent.parent / "examples" / "prompts.jsonl"
GREEDY = SamplingParams(temperature=0)


@dataclass
class Run:
    name: str
    wall_s: float
    cpu_s: float
    stats: dict[str, HFStats]
    results: list[SampleResult]

    @property
    def generated(self) -> int:
        return sum(s.generated_tokens for s in self.stats.values())

    @property
    def prefilled(self) -> int:
        return sum(s.prefill_tokens for s in self.stats.values())

    @property
    def kept(self) -> int:
        return sum(r.stats.total_tokens for r in self.results)


def samples(n: int) -> list[Sample]:
    out = []
    for i, line in enumerate(PROMPTS.read_text(encoding="utf-8").splitlines()):
        data = json.loads(line)
        messages = data.get("messages") or [{"role": "user", "content": data["prompt"]}]
        out.append(Sample(id=str(data.get("id", i)), messages=messages))
    return out[:n]


def tessy(name: str, student: HFBackend, teacher: HFBackend, prompts: list[Sample], args: argparse.Namespace) -> Run:
    def role(kind: Any, backend: HFBackend) -> Role:
        fmt = get_format("chatml", tokenizer=backend.tokenizer)
        return Role(kind, backend, fmt, LexiconPredictor(), args.k, GREEDY, backend.tokenizer)

    engine = Engine(
        role("teacher", teacher),
        role("student", student),
        limits=Limits(max_total_tokens=args.thinking + args.answer, max_thinking_tokens=args.thinking, repetition=None),
    )

    async def go() -> list[SampleResult]:
        return [r async for r in engine.run(prompts)]

    started, cpu = time.perf_counter(), time.process_time()
    results = asyncio.run(go())
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Run(name, wall, cpu, {"student": student.stats, "teacher": teacher.stats}, results)


def plain_generate(backend: HFBackend, prompts: list[Sample], tokens: int) -> tuple[float, float, int]:
    """Wall and CPU seconds ``generate()`` takes for ``tokens`` new tokens spread over the prompts."""
    fmt = get_format("chatml", tokenizer=backend.tokenizer)
    share = [tokens // len(prompts) + (1 if i < tokens % len(prompts) else 0) for i in range(len(prompts))]
    started, cpu = time.perf_counter(), time.process_time()
    made = 0
    for sample, n in zip(prompts, share, strict=True):
        if n == 0:
            continue
        ids = torch.tensor([backend.tokenizer.encode(fmt.render_think(sample.messages))], device=backend.device)
        with torch.inference_mode():
            out = backend.model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        made += out.shape[1] - ids.shape[1]
    return time.perf_counter() - started, time.process_time() - cpu, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--teacher", default="qwen2.5-coder-0.5b")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--k", type=int, default=20, help="chunk tokens")
    parser.add_argument("--thinking", type=int, default=128, help="thinking budget per sample")
    parser.add_argument("--answer", type=int, default=64, help="answer budget per sample")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-naive", action="store_true", help="skip the run without caches")
    args = parser.parse_args()

    t0 = time.perf_counter()
    student = HFBackend.load(args.student, device=args.device, max_batch_size=8)
    teacher = HFBackend.load(args.teacher, device=args.device, max_batch_size=8)
    prompts = samples(args.samples)
    for backend in (student, teacher):  # the first passes through a fresh model are slow: not measured
        plain_generate(backend, prompts[:1], 4)
    print(
        f"loaded and warmed up {args.student} and {args.teacher} on {args.device} in {time.perf_counter() - t0:.1f} s"
    )

    runs = [tessy("tessy, KV reuse", student, teacher, prompts, args)]
    if not args.no_naive:
        naive = [HFBackend(b.model, b.tokenizer, max_batch_size=8, cache_tokens=0) for b in (student, teacher)]
        runs.append(tessy("tessy, re-prefill", *naive, prompts, args))
        for b in naive:
            asyncio.run(b.aclose())

    cached = runs[0]
    gen_s = gen_cpu = 0.0
    gen_tokens = 0
    for kind, backend in (("student", student), ("teacher", teacher)):
        seconds, cpu, made = plain_generate(backend, prompts, cached.stats[kind].generated_tokens)
        gen_s += seconds
        gen_cpu += cpu
        gen_tokens += made
        print(f"generate() {kind}: {made} tokens in {seconds:.1f} s ({made / seconds:.1f} tokens/s)")
    for b in (student, teacher):
        asyncio.run(b.aclose())

    header = f"{'':34}" + "".join(f"{r.name:>20}" for r in runs) + f"{'generate()':>20}"
    print()
    print(header)
    rows: list[tuple[str, list[str], str]] = [
        ("wall s", [f"{r.wall_s:.1f}" for r in runs], f"{gen_s:.1f}"),
        ("CPU s (all threads)", [f"{r.cpu_s:.1f}" for r in runs], f"{gen_cpu:.1f}"),
        ("generated tokens (both models)", [str(r.generated) for r in runs], str(gen_tokens)),
        ("tokens kept in the data", [str(r.kept) for r in runs], "-"),
        ("requests", [str(sum(s.requests for s in r.stats.values())) for r in runs], str(len(prompts) * 2)),
        ("prompt tokens sent", [str(sum(s.prompt_tokens for s in r.stats.values())) for r in runs], "-"),
        ("prefill tokens (fed to a model)", [str(r.prefilled) for r in runs], "-"),
        ("prefill tokens / generated token", [f"{r.prefilled / max(r.generated, 1):.2f}" for r in runs], "-"),
        ("generated tokens/s", [f"{r.generated / r.wall_s:.1f}" for r in runs], f"{gen_tokens / gen_s:.1f}"),
        ("kept tokens/s", [f"{r.kept / r.wall_s:.1f}" for r in runs], "-"),
        (
            "mean decode batch",
            [
                f"{sum(s.decode_rows for s in r.stats.values()) / max(1, sum(s.decode_steps for s in r.stats.values())):.2f}"
                for r in runs
            ],
            "1.00",
        ),
        ("cache misses (backend)", [str(sum(s.cache_misses for s in r.stats.values())) for r in runs], "-"),
        ("prefix misses (engine)", [str(sum(x.stats.prefix_misses for x in r.results)) for r in runs], "-"),
    ]
    for label, values, last in rows:
        print(f"{label:34}" + "".join(f"{v:>20}" for v in values) + f"{last:>20}")
    for kind in ("student", "teacher"):
        s = cached.stats[kind]
        print(
            f"\n{kind}: {s.requests} requests, {s.prompt_tokens} prompt tokens, {s.prefill_tokens} prefilled "
            f"({s.prefill_per_generated:.2f} per generated token; {s.prompt_tokens / max(s.generated_tokens, 1):.2f} "
            f"with re-prefill), {s.generated_tokens} generated"
        )
    failed = [r.failure for r in cached.results if not r.ok]
    if failed:
        print(f"\nfailed samples: {failed}")


if __name__ == "__main__":
    main()
