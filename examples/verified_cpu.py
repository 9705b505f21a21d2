"""Verified SFT data on this CPU, per mode: synthesise, verify, filter, export.

For each mode, 4 samples per prompt of tessy's small math set (examples/verified-cpu.yaml),
each answer checked with math-verify; then the samples that passed are exported for TRL.
Prints pass@1 / pass@4 and the wall time of each mode. Resumes where an earlier run stopped.

    python examples/verified_cpu.py --out /tmp/verified [--limit 6] [--modes teacher-only,tessy]

Measured on a shared 2-core CPU (--limit 6: 6 prompts x 4 samples per mode, math-verify):

    mode                   samples  pass@1  pass@4 unjudged exported  wall s
    teacher-only                23   41.7%   83.3%        0       10   546.3
    tessy                       23   38.9%   83.3%        0        9   288.4
    tessy-teacher-answer        24   50.0%   66.7%        0       12   309.5

(one sample of teacher-only and one of tessy failed on the repetition guard; times include
starting the llama.cpp servers, and other jobs shared the cores.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import tessy
from tessy.export import export_run
from tessy.jsonl import write_atomic

CONFIG = Path(__file__).with_name("verified-cpu.yaml")
MODES = ("teacher-only", "tessy", "tessy-teacher-answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("verified-cpu"), help="folder for the runs and exports")
    parser.add_argument("--limit", type=int, help="use only the first N prompts")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    args = parser.parse_args()
    rows = []
    for mode in args.modes.split(","):
        overrides: dict[str, object] = {"mode": mode}
        if args.limit:
            overrides["limit"] = args.limit
        config = tessy.load_config(CONFIG, overrides)
        run = args.out / f"{mode}.jsonl"
        started = time.perf_counter()
        summary = tessy.synthesize(config, output=run)
        wall = time.perf_counter() - started
        # Filter: the samples whose answer passed (a run keeps every sample it drew).
        passed = args.out / f"{mode}.passed.jsonl"
        kept = [r.to_json() for r in tessy.read_records(run) if r.verification is not None and r.verification.passed]
        write_atomic(passed, kept)
        export_run(passed, "trl", args.out / f"{mode}.trl.jsonl")
        tally = summary.verification
        rows.append((mode, summary.written, tally.pass_at_1, tally.pass_at_n, tally.unjudged, len(kept), wall))
    print(f"{'mode':<22} {'samples':>7} {'pass@1':>7} {'pass@4':>7} {'unjudged':>8} {'exported':>8} {'wall s':>7}")
    for mode, n, p1, pn, unjudged, exported, wall in rows:
        print(f"{mode:<22} {n:>7} {p1:>7.1%} {pn:>7.1%} {unjudged:>8} {exported:>8} {wall:>7.1f}")


if __name__ == "__main__":
    main()
