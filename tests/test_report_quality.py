"""The report's answers section: pass rates of judged answers, pass@1 and pass@n over samples of
one prompt, guard counts and what a default export keeps, per run and mode, in one pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from export_fixtures import record, write_run
from tessy.cli import main
from tessy.export import export_run
from tessy.report import load_run, write_report
from tessy.report.quality import ModeQuality, prompt_key
from tessy.report.runs import run_figures


def test_samples_of_a_prompt_are_grouped_by_prompt_id_or_by_the_id_before_the_hash() -> None:
    assert prompt_key(record("gsm-7#3")) == "gsm-7"
    assert prompt_key(record("a#b#2")) == "a#b"
    assert prompt_key(record("plain")) == "plain"
    assert prompt_key(record("x#0", prompt_id="p-9")) == "p-9"


def test_pass_at_1_and_pass_at_n_count_judged_samples_only() -> None:
    q = ModeQuality("tessy")
    outcomes = {"p1": [True, False, False, False], "p2": [False, False, False, False], "p3": [True, True, True, True]}
    for prompt, results in outcomes.items():
        for k, passed in enumerate(results):
            q.add(record(f"{prompt}#{k}", passed=passed))
    for k in range(4):  # a prompt whose answers could not be judged counts in neither
        q.add(record(f"p4#{k}", passed=None))
    q.add(record("p5#0", guards=("thinking_budget",)))  # not verified, guarded
    at = q.pass_at()
    assert at is not None and (at.prompts, at.min_n, at.max_n) == (3, 4, 4)
    assert at.pass_at_1 == pytest.approx((0.25 + 0 + 1) / 3)
    assert at.pass_at_n == pytest.approx(2 / 3)
    v = q.verdicts
    assert (v.passed, v.failed, v.unjudged, v.unverified) == (5, 7, 4, 1)
    assert v.pass_rate == pytest.approx(5 / 12)
    assert (q.records, q.guarded, q.export_keeps, dict(q.guards)) == (17, 1, 16, {"thinking_budget": 1})
    assert ModeQuality("tessy").pass_at() is None


def test_the_report_shows_answers_per_run_and_mode_and_what_an_export_keeps(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    records = [record(f"q{i}#{k}", passed=(i + k) % 2 == 0) for i in range(3) for k in range(2)]
    records += [record("t1", mode="teacher-only", guards=("thinking_budget",), passed=True)]
    records += [record("t2", mode="teacher-only", passed=None)]
    run = write_run(tmp_path / "run.jsonl", records)
    loaded = load_run(run)
    by_mode = {q.mode: q for q in run_figures(loaded).quality}
    assert set(by_mode) == {"tessy", "teacher-only"}
    tessy, teacher = by_mode["tessy"], by_mode["teacher-only"]
    at = tessy.pass_at()
    assert at is not None and (at.pass_at_1, at.pass_at_n) == (0.5, 1.0)
    assert (teacher.verdicts.passed, teacher.verdicts.unjudged, teacher.export_keeps) == (1, 1, 1)
    # What the report says an export keeps is what a default export writes.
    exported = export_run(run, "trl", tmp_path / "out.jsonl", card=False)
    assert exported.rows == tessy.export_keeps + teacher.export_keeps == 7

    html_path, _ = write_report(run, html=tmp_path / "r.html")
    html = html_path.read_text()
    assert "<h2>Answers and export</h2>" in html
    assert "<td>tessy</td><td>6</td><td>6</td><td>3 (50.0%)</td>" in html
    assert "<td>50.0% of 3 prompts</td><td>100.0% (n = 2)</td><td>none</td><td>6 (100.0%)</td>" in html
    assert "<td>thinking_budget: 1</td><td>1 (50.0%)</td>" in html


def test_the_cli_report_prints_the_pass_rate_and_export_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    run = write_run(tmp_path / "run.jsonl", [record("a", passed=True), record("b", passed=False, guards=("x",))])
    assert main(["report", str(run), "--html", str(tmp_path / "r.html")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "50.0% of 2" in out


def test_a_run_whose_responses_are_all_the_same_gets_a_report_without_a_pca(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from tessy.report.style import pca_points

    same = ["okay", "so", "42"]
    assert pca_points([[same, same], [same, same]]) is None
