"""``tessy report`` on large runs: wall time and peak resident memory.

Writes synthetic runs of N records (seeded; each record a few KB of alternating teacher and
student spans with style words, written with tessy's own record types), then builds the report
in a child process and prints its wall time and peak RSS (the child's own ``ru_maxrss``).
With ``--compare 2`` it writes two more runs on the same ids and reports on all three, as
``tessy report A --compare B C`` would. The synthetic files are deleted afterwards.

``--src`` points the child at another checkout's ``src`` (e.g. main's, for the numbers before
a change): ``git archive main src | tar -x -C /tmp/main-src`` then ``--src /tmp/main-src/src``.

Run: ``python benchmarks/report_memory.py`` (``--sizes 20000 200000`` by default;
``--sizes 2000`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tessy.jsonl import JsonlWriter
from tessy.records import Record, SampleStats, Span, Verification

WORDS = (
    "the sum of each term gives a bound on n and we check that x is even so the loop ends after "
    "k steps because every edge joins two nodes in the tree hence the answer is odd when m divides "
    "p while the array stays sorted after each swap of i and j"
).split()
STYLE = ["Okay,", "so", "Wait,", "Hmm,", "let me", "Now", "But", "however", "therefore", "Alternatively,"]
MODES = ("tessy", "teacher-only", "student-only")


def _text(rng: random.Random, n_words: int, style_rate: float) -> str:
    return "".join(
        " " + (rng.choice(STYLE) if rng.random() < style_rate else rng.choice(WORDS)) for _ in range(n_words)
    )


def make_record(i: int, mode: str, rng: random.Random, verified: bool = False) -> Record:
    """One record of ``mode``: 2-12 thinking spans (~2-4 KB) and a short answer; ``verified``:
    four samples per prompt (ids ``ID#k``), each with a verdict (a tenth of them not judged)."""
    spans: list[Span] = []
    roles = {"tessy": ("student", "teacher"), "teacher-only": ("teacher",), "student-only": ("student",)}[mode]
    n_spans = rng.randint(2, 12) if mode == "tessy" else 1
    budget = rng.randint(350, 700)  # words of thinking, ~5.5 characters each
    for k in range(n_spans):
        role = roles[k % len(roles)]
        spans.append(Span(role, "think", _text(rng, max(1, budget // n_spans), 0.06 if role == "student" else 0.02)))
    spans.append(
        Span(roles[-1] if mode != "tessy" else "student", "answer", " The answer is " + str(rng.randint(0, 999)))
    )
    spans = [Span(s.source, s.phase, s.text, len(s.text.split())) for s in spans]
    thinking = "".join(s.text for s in spans if s.phase == "think")
    answer = "".join(s.text for s in spans if s.phase == "answer")
    teacher = sum(s.tokens for s in spans if s.source == "teacher")
    student = sum(s.tokens for s in spans if s.source == "student")
    stats = SampleStats(
        teacher_tokens=teacher,
        student_tokens=student,
        switches=n_spans - 1,
        requests=n_spans + rng.randint(1, 4),
        discarded_tokens=rng.randint(0, 200),
        think_tokens=sum(s.tokens for s in spans if s.phase == "think"),
        answer_tokens=sum(s.tokens for s in spans if s.phase == "answer"),
    )
    prompt = f"Problem {i}: what is {rng.randint(1, 10**6)} modulo {rng.randint(2, 97)}?"
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": f"<think>\n{thinking}\n</think>\n\n{answer}"},
    ]
    if not verified:
        return Record(f"sample-{i:07d}", messages, mode, spans, stats, "bench")
    draw = rng.random()
    verdict = Verification("math", None if draw < 0.1 else draw < 0.55, None, "bench")
    return Record(f"sample-{i // 4:07d}#{i % 4}", messages, mode, spans, stats, "bench", verification=verdict)


def write_run(path: Path, n: int, mode: str, seed: int, verified: bool = False) -> int:
    rng = random.Random(f"{seed}:{mode}")
    with JsonlWriter(path) as out:
        for i in range(n):
            out.write(make_record(i, mode, rng, verified).to_json())
    return path.stat().st_size


CHILD = """
import json, resource, sys, time
from pathlib import Path
from tessy.report import write_report
paths = [Path(p) for p in sys.argv[1:]]
t0 = time.perf_counter()
out, report = write_report(paths[0], paths[1:], html=paths[0].with_suffix(".html"))
wall = time.perf_counter() - t0
rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
print(json.dumps({"wall_s": wall, "peak_rss_mb": rss_kb / 1024, "html_kb": out.stat().st_size / 1024,
                  "written": [f.stats.written for f in report.figures]}))
"""


def measure(paths: list[Path], src: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"the report failed:\n{proc.stderr[-3000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000], help="records per run")
    parser.add_argument("--compare", type=int, default=0, help="runs to compare with (same ids, other modes)")
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src", help="tessy's src")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the synthetic runs (default: a temp one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--verified", action="store_true", help="four samples per prompt, each verified (pass rates, pass@n)"
    )
    args = parser.parse_args()

    free = shutil.disk_usage(args.tmp or tempfile.gettempdir()).free
    need = max(args.sizes) * 6_500 * (1 + args.compare)
    if need > free * 0.8:
        raise SystemExit(f"about {need / 1e9:.1f} GB of synthetic runs would not fit ({free / 1e9:.1f} GB free)")
    print(f"tessy report from {args.src}; {1 + args.compare} run(s) per report")
    print(f"{'records':>9} {'file MB':>9} {'wall s':>8} {'peak RSS MB':>12}")
    for n in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="tessy-report-bench-", dir=args.tmp))
        try:
            paths = [folder / f"{mode}.jsonl" for mode in MODES[: 1 + args.compare]]
            size = sum(write_run(p, n, p.stem, args.seed, args.verified) for p in paths)
            t0 = time.perf_counter()
            result = measure(paths, args.src)
            assert result["written"] == [n] * len(paths), result
            print(
                f"{n:>9,} {size / 1e6:>9,.0f} {result['wall_s']:>8.1f} {result['peak_rss_mb']:>12,.0f}"
                f"   (child {time.perf_counter() - t0:.1f} s with start-up)",
                flush=True,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
