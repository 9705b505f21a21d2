"""``tessy report`` in bounded memory: every figure over every record, a bounded sample of records."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tessy.records import RunStats, read_records
from tessy.report import build_report, load_run
from tessy.report.runs import Distribution
from tessy.report.sampling import IdSample, Tally, id_priority
from tessy.report.style import _CASE_HAZARDS, STYLE_WORDS, StyleCounter, _phrase_regex, word_tokenizer

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

WORDS = "so wait okay the sum is even Hmm let me check let's see x y n but also However, no, yes, é ∑ ×".split()


def synthetic(sample_id: str, rng: random.Random, mode: str = "tessy") -> dict[str, Any]:
    spans = []
    for k in range(rng.randint(1, 6)):
        text = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
        spans.append(
            {"source": ("student", "teacher")[k % 2], "phase": "think", "text": text, "tokens": rng.randint(1, 50)}
        )
    spans.append({"source": "student", "phase": "answer", "text": f" {rng.randint(0, 99)}", "tokens": 1})
    think = "".join(s["text"] for s in spans if s["phase"] == "think")
    return {
        "id": sample_id,
        "messages": [
            {"role": "user", "content": f"question {sample_id}"},
            {"role": "assistant", "content": f"<think>\n{think}\n</think>\n\n{spans[-1]['text']}"},
        ],
        "mode": mode,
        "spans": spans,
        "stats": {
            "teacher_tokens": rng.randint(0, 500),
            "student_tokens": rng.randint(0, 500),
            "switches": len(spans) - 2,
            "requests": rng.randint(1, 30),
            "discarded_tokens": rng.randint(0, 9),
        },
        "config_hash": "h",
    }


def write_run(path: Path, ids: list[str], seed: int, mode: str = "tessy") -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps(synthetic(i, rng, mode)) + "\n" for i in ids), encoding="utf-8")
    return path


def test_a_run_larger_than_the_sample_keeps_exact_figures_and_a_bounded_sample(tmp_path: Path) -> None:
    """300 and 280 records (250 shared ids) with a sample of 40: counts, distributions and style
    rates equal an exact computation over every record; the report holds 40 records a run, the
    same ids in both where they share them, and says what it sampled."""
    a = write_run(tmp_path / "a.jsonl", [f"s{i}" for i in range(300)], seed=1)
    b = write_run(tmp_path / "b.jsonl", [f"s{i}" for i in range(50, 330)], seed=2, mode="student-only")
    runs = [load_run(a, sample_size=40), load_run(b, sample_size=40)]
    report = build_report(runs, samples=6)

    for run, figures in zip(runs, report.figures, strict=True):
        every = list(read_records(run.path))
        exact = RunStats()
        for r in every:
            exact.add(r)
        assert figures.stats == exact
        assert figures.switches == Distribution.of([float(r.stats.switches) for r in every])
        assert figures.response_tokens == Distribution.of([float(r.stats.total_tokens) for r in every])
        assert figures.response_chars == Distribution.of([float(len(r.response or "")) for r in every])
        assert figures.requests_per_sample == Distribution.of([float(r.stats.requests) for r in every])
        thinking = [r.thinking for r in every]
        n_tokens = sum(len(word_tokenizer(t)) for t in thinking)
        counts = {w: sum(len(_phrase_regex(w).findall(t)) for t in thinking) for w in STYLE_WORDS}
        assert report.style[report.runs.index(run)] == {w: 1000.0 * c / n_tokens for w, c in counts.items()}
        # Bounded: the run keeps 40 records (the 40 lowest ids in the seeded order), in file order.
        assert len(run.records) == figures.sampled == 40
        lowest = sorted((r.id for r in every), key=id_priority)[:40]
        assert [r.id for r in run.records] == [r.id for r in every if r.id in set(lowest)]
        assert run.written == len(every) and len(run.ids) == len(every)

    # The samples are drawn alike: an id both runs hold is kept by both or by neither, below the
    # lower of the two thresholds.
    shared = runs[0].ids & runs[1].ids
    kept = [set(r.by_id) for r in runs]
    threshold = min(max(id_priority(i) for i in k) for k in kept)
    assert kept[0] & kept[1] == {i for i in shared if id_priority(i) <= threshold}
    sim = report.similarity
    assert sim is not None and sim.shared == 250 and 0 < sim.common == len(kept[0] & kept[1]) <= 40
    assert f"{sim.common:,} of 250 shared prompts, a seeded random sample" in report.html
    assert "40 of 300 in a, 40 of 280 in b" in report.html
    assert set(report.viewer_ids) <= kept[0] and report.html.count("<details>") == 6


def test_a_run_no_larger_than_the_sample_is_kept_whole_in_file_order(tmp_path: Path) -> None:
    path = write_run(tmp_path / "a.jsonl", [f"s{i}" for i in range(30)], seed=3)
    run = load_run(path, sample_size=30)
    assert [r.id for r in run.records] == [f"s{i}" for i in range(30)]
    report = build_report([run, load_run(path, "again", sample_size=30)])
    assert report.similarity is not None and report.similarity.common == report.similarity.shared == 30
    assert "a seeded random sample" not in report.html and "over every record" not in report.html


def test_id_sample_keeps_the_ids_first_in_the_seeded_order() -> None:
    records = [record for record in _records(100)]
    sample = IdSample(10, seed=7)
    for r in records:
        sample.offer(r)
    expected = sorted((r.id for r in records), key=lambda i: id_priority(i, 7))[:10]
    assert sorted(r.id for r in sample.records()) == sorted(expected) and len(sample) == 10
    assert id_priority("x", 7) != id_priority("x", 8)  # the seed changes the order


def _records(n: int) -> list[Any]:
    from tessy.records import Record

    rng = random.Random(0)
    return [Record.from_json(synthetic(f"r{i}", rng)) for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 11, 500])
def test_a_tally_summarises_exactly_as_the_values_do(n: int) -> None:
    rng = random.Random(n)
    values = [rng.choice([0, 1, 1, 2, 3, 7, 40, 2**40]) if n < 100 else rng.randint(0, 10**6) for _ in range(n)]
    tally = Tally()
    for v in values:
        tally.add(v)
    assert tally.distribution() == Distribution.of([float(v) for v in values])
    assert len(tally) == n and sum(tally.counts.values()) == n


def test_fast_style_counting_agrees_with_the_case_blind_patterns() -> None:
    """Lower-cased text and case-sensitive patterns count what the case-blind patterns count,
    on any text free of the few characters whose case folds reach ASCII (checked on every code
    point); texts holding one take the case-blind patterns."""
    ascii_letter = re.compile(r"[a-z]", re.IGNORECASE)
    kinds = (re.compile(r"[\w-]"), re.compile(r"\s"))
    for cp in range(128, sys.maxunicode + 1):
        c = chr(cp)
        low = c.lower()
        if low == c and c.upper() == c:
            continue  # no case: lower-casing leaves it as it is
        hazard = (
            ascii_letter.fullmatch(c) is not None
            or len(low) != 1
            or low.isascii()
            or low == "’"
            or any(bool(k.match(c)) != bool(k.match(low)) for k in kinds)
        )
        assert hazard == (_CASE_HAZARDS.search(c) is not None), hex(cp)

    rng = random.Random(5)
    alphabet = [*WORDS, "OKAY", "Wait,", "LET’S", "double-check", "so-so", "\u212a", "\u0130", "İ think", "  ", "\n"]
    texts = ["".join(rng.choice(alphabet) + rng.choice(" ,.-") for _ in range(60)) for _ in range(200)]
    for text in texts:
        counter = StyleCounter()
        counter.add(text, 1)
        assert counter.counts == {w: len(_phrase_regex(w).findall(text)) for w in STYLE_WORDS}, text
