"""What the classifier predictor costs during synthesis.

Prints, for each run:
1. predictor tokens encoded per generated token (generated = kept + discarded, both roles), and
   per predictor token of the chunks asked about (1.00 would mean no context is ever re-encoded),
   with causal reuse on and off;
2. the predictor's share of synthesis wall time: the time a predictor forward was running
   (worker-thread busy time over wall time), and the mean share of a sample's time spent waiting
   for its cut decisions;
3. batching: forwards, mean and largest batch.

Two ways to run:

- ``--fake`` (default): fake models that write random words at a simulated decode speed
  (``--decode-tps`` tokens/s per request), with a classifier predictor for each role:
  ``--predictor tiny`` (a random two-layer model, the default), ``--predictor smollm2`` (a randomly
  initialised SmolLM2-135M with its real tokenizer: the real cost), or a trained checkpoint folder.
  The classifier runs on every query, but the lexicon decides the cuts (``--decide classifier``
  to let a trained one decide): a random classifier would cut at random.
- ``--config run.yaml``: a real run config (the demo's llama.cpp servers, say) whose roles use
  classifier predictors; ``--input`` prompts, ``--limit`` samples.

Run: ``python benchmarks/predictor_bench.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tessy import Engine, Limits, Role, Sample, get_format, load_config
from tessy.backends import Backend, GenerateRequest, Generation
from tessy.boundary import BoundaryPredictor, CutQuery, LexiconPredictor
from tessy.boundary.classifier import ClassifierPredictor
from tessy.build import build_engine
from tessy.synth import asynthesize

WORDS = (
    "the sum of each term gives a bound on n and we check that x is even so the loop ends after "
    "k steps because every edge joins two nodes in the tree hence the answer is odd when m divides "
    "p while the array stays sorted after each swap of i and j"
).split()
STYLE = ["Okay,", "So", "Wait,", "Hmm,", "Let me", "Now", "But", "Then", "Alternatively,"]


class FakeModel(Backend):
    """Random words at ``tps`` tokens/s per request (a sleep: the CPU stays free for the predictor)."""

    def __init__(self, role: str, style_rate: float, tps: float) -> None:
        super().__init__(max_concurrency=256)
        self.role, self.style_rate, self.tps = role, style_rate, tps
        self.rngs: dict[str, random.Random] = {}

    async def generate(self, request: GenerateRequest) -> Generation:
        rng = self.rngs.setdefault(request.sample_id, random.Random(f"{self.role}:{request.sample_id}"))
        if request.phase == "answer":
            pieces = [" The", " answer", " is", f" {rng.randint(0, 99)}", "."]
        else:
            pieces = [" " + rng.choice(STYLE)] if self.role == "student" else []
            while len(pieces) < request.max_tokens:
                word = rng.choice(STYLE) if rng.random() < self.style_rate else rng.choice(WORDS)
                pieces.append(" " + word)
            pieces = pieces[: request.max_tokens]
        if self.tps:
            await asyncio.sleep(len(pieces) / self.tps)
        return Generation(pieces=pieces, finish_reason="length" if request.phase == "think" else "stop")


class Shadowed(BoundaryPredictor):
    """Runs the classifier on every query, exactly as it would, but cuts where the lexicon does:
    a random classifier would cut at random, and the cost depends on how often cuts happen."""

    def __init__(self, classifier: ClassifierPredictor) -> None:
        self.classifier, self.lexicon = classifier, LexiconPredictor()
        self.lookahead = max(classifier.lookahead, self.lexicon.lookahead)
        self.context_chars = classifier.context_chars

    async def find_cut(self, query: CutQuery) -> int | None:
        await self.classifier.find_cut(query)
        return await self.lexicon.find_cut(query)

    async def release(self, sample_id: str) -> None:
        await self.classifier.release(sample_id)


class Timed(BoundaryPredictor):
    """Wraps a predictor and adds up how long each sample waited for it."""

    def __init__(self, inner: BoundaryPredictor, waits: dict[str, float]) -> None:
        self.inner, self.waits = inner, waits
        self.lookahead, self.context_chars = inner.lookahead, inner.context_chars

    async def find_cut(self, query: CutQuery) -> int | None:
        started = time.perf_counter()
        try:
            return await self.inner.find_cut(query)
        finally:
            self.waits[query.sample_id] += time.perf_counter() - started

    async def release(self, sample_id: str) -> None:
        await self.inner.release(sample_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_checkpoint(kind: str, folder: Path) -> Path:
    """A predictor checkpoint: a trained folder as given, or a random one of the asked-for size."""
    path = Path(kind)
    if path.is_dir():
        return path
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(0)
    if kind == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_models import save_tiny_backbone

        return save_tiny_backbone(folder / "tiny")
    if kind == "smollm2":
        from tessy import models

        gguf = models.resolve("smollm2-135m")
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, num_labels=2)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForTokenClassification.from_config(config)
        model.save_pretrained(str(folder / "smollm2"))
        tokenizer.save_pretrained(str(folder / "smollm2"))
        return folder / "smollm2"
    raise SystemExit(f"--predictor: give tiny, smollm2 or a checkpoint folder, not {kind!r}")


def report(
    label: str, results: list[Any], predictors: list[ClassifierPredictor], waits: dict[str, float], wall: float
) -> None:
    kept = sum(r.stats.teacher_tokens + r.stats.student_tokens for r in results)
    generated = kept + sum(r.stats.discarded_tokens for r in results)
    encoded = sum(p.stats.tokens_encoded for p in predictors)
    chunk_tokens = sum(p.stats.chunk_tokens for p in predictors)
    batches = [p._batcher.stats for p in predictors]
    sample_time = sum(r.stats.wall_s for r in results)
    switches = sum(r.stats.switches for r in results)
    print(f"\n== {label}")
    print(f"samples {len(results)} (failed {sum(not r.ok for r in results)}), wall {wall:.1f} s")
    print(f"generated tokens {generated} (kept {kept}), switches/sample {switches / max(len(results), 1):.1f}")
    print(f"predictor tokens encoded {encoded}: {encoded / max(generated, 1):.2f} per generated token")
    print(
        f"  ({encoded / max(chunk_tokens, 1):.2f} per predictor token of the chunks asked about; 1.00 = no context re-encoded)"
    )
    busy = ", ".join(f"{p._batcher.stats.busy_s / wall:.1%}" for p in predictors)
    print(f"each predictor's forwards ran for {busy} of wall time (their worker threads run side by side)")
    print(
        f"samples waited for cuts {sum(waits.values()):.1f} s = {sum(waits.values()) / max(sample_time, 1e-9):.1%} of sample time"
    )
    items = sum(b.items for b in batches)
    forwards = sum(b.batches for b in batches)
    print(
        f"queries {items}, forwards {forwards}, mean batch {items / max(forwards, 1):.1f}, largest {max(max(b.sizes, default=0) for b in batches)}"
    )


async def fake_run(checkpoint: Path, args: argparse.Namespace, reuse: bool) -> None:
    waits: dict[str, float] = defaultdict(float)
    preds = [
        ClassifierPredictor.load(checkpoint, device=args.device, reuse=reuse, max_batch=args.max_batch)
        for _ in range(2)
    ]
    fmt = get_format("qwen3")
    deciders: list[BoundaryPredictor] = list(preds) if args.decide == "classifier" else [Shadowed(p) for p in preds]
    engine = Engine(
        Role("teacher", FakeModel("teacher", 0.04, args.decode_tps), fmt, Timed(deciders[0], waits), chunk_tokens=20),
        Role("student", FakeModel("student", 0.5, args.decode_tps), fmt, Timed(deciders[1], waits), chunk_tokens=20),
        limits=Limits(max_total_tokens=args.tokens + 64, max_thinking_tokens=args.tokens, repetition=None),
    )
    samples = [Sample.from_prompt(f"s{i}", f"problem {i}") for i in range(args.samples)]
    started = time.perf_counter()
    results = [r async for r in engine.run(samples, max_in_flight=args.samples)]
    wall = time.perf_counter() - started
    label = f"fake models at {args.decode_tps:g} tok/s, predictor {args.predictor}, cuts by {args.decide}, reuse {'on' if reuse else 'off'}"
    report(label, results, preds, waits, wall)
    for p in preds:
        await p.aclose()


async def config_run(args: argparse.Namespace) -> None:
    config = load_config(Path(args.config), list(args.overrides))
    waits: dict[str, float] = defaultdict(float)
    engine = build_engine(config)
    preds = [r.predictor for r in engine.roles.values() if isinstance(r.predictor, ClassifierPredictor)]
    if not preds:
        raise SystemExit("the config's roles use no classifier predictor")
    for role in engine.roles.values():
        role.predictor = Timed(role.predictor, waits)
    results: list[Any] = []
    original = engine.run_sample

    async def keep(sample: Sample) -> Any:
        result = await original(sample)
        results.append(result)
        return result

    engine.run_sample = keep  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        run = config.model_copy(
            update={
                "data": config.data.model_copy(update={"input": Path(args.input), "output": Path(tmp) / "out.jsonl"}),
                "limit": args.limit,
            }
        )
        started = time.perf_counter()
        try:
            await asynthesize(run, engine=engine)
        finally:
            wall = time.perf_counter() - started
            await engine.aclose()
    report(f"config {args.config}", results, preds, waits, wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a run config with classifier predictors (else fake models)")
    parser.add_argument("--input", default=str(Path(__file__).resolve().parents[1] / "examples" / "prompts.jsonl"))
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--predictor", default="tiny", help="tiny | smollm2 | a checkpoint folder (fake runs)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=512, help="thinking tokens per sample")
    parser.add_argument("--decode-tps", type=float, default=50.0, help="fake decode speed per request")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument(
        "--decide",
        choices=["lexicon", "classifier"],
        default="lexicon",
        help="fake runs: who decides the cuts (the classifier runs on every query either way)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="8 samples of 256 tokens")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.tokens = 8, 256
    if args.config:
        asyncio.run(config_run(args))
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(args.predictor, Path(tmp))
        for reuse in (True, False):
            asyncio.run(fake_run(checkpoint, args, reuse))


if __name__ == "__main__":
    main()
