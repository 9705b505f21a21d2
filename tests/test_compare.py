"""``tessy compare``: every mode on the same prompts into one folder, resumable per mode, and
the side-by-side report (table, JSON, HTML), with scripted roles."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tessy import load_config
from tessy.cli import main
from tessy.compare import compare, parse_modes
from tessy.errors import ConfigError
from tessy.records import Mode, read_records
from tessy.report import build_report, comparison, load_run

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "examples" / "offline.yaml"
PROMPTS = ROOT / "examples" / "prompts.jsonl"
MODES = "tessy,teacher-only,student-only"


def test_compare_runs_every_mode_into_one_folder_and_reports_them_side_by_side(tmp_path: Path) -> None:
    result = compare(OFFLINE, MODES, output_dir=tmp_path / "cmp", prompts=PROMPTS, limit=3)
    folder = tmp_path / "cmp"
    for mode in ("tessy", "teacher-only", "student-only"):
        records = list(read_records(folder / f"{mode}.jsonl"))
        assert [r.mode for r in records] == [mode] * 3
        assert {r.id for r in records} == {"add-1", "sum-list", "reverse"}  # the same prompts
    assert result.html == folder / "report.html" and "Side by side" in result.html.read_text(encoding="utf-8")
    rows = {r.name: r for r in result.rows}
    assert list(rows) == ["tessy", "teacher-only", "student-only"]  # in the order given
    student, teacher, tessy = rows["student-only"], rows["teacher-only"], rows["tessy"]
    assert (student.teacher_share, teacher.teacher_share) == (0.0, 1.0) and 0 < tessy.teacher_share < 1
    assert student.similarity_to_student == pytest.approx(1.0)
    assert teacher.similarity_to_student < tessy.similarity_to_student < 1
    # The scripted student knows every token it wrote (log 0.5, rank 1): RSR = 1 / ln 2.
    assert student.nll == pytest.approx(math.log(2)) and student.rank == 1.0
    assert student.rsr == pytest.approx(1 / math.log(2)) and student.outside_top_k == 0.0
    # Teacher tokens it does not know are ranked beyond the top-k it lists: censored, at the clip.
    assert teacher.outside_top_k > tessy.outside_top_k > 0 and teacher.censored == teacher.outside_top_k
    assert teacher.rank > tessy.rank > 1
    # Cost from the records' stats: requests and generated tokens per kept token.
    summary = result.summaries["tessy"]
    assert tessy.requests_per_kept == pytest.approx(summary.requests / summary.total_tokens)
    assert tessy.generated_per_kept == pytest.approx(1 + summary.discarded_tokens / summary.total_tokens)
    assert teacher.generated_per_kept == 1.0 and tessy.generated_per_kept > 1
    data = json.loads(result.json.read_text(encoding="utf-8"))
    assert data["modes"] == ["tessy", "teacher-only", "student-only"]
    assert [r["name"] for r in data["runs"]] == ["tessy", "teacher-only", "student-only"]
    assert data["runs"][2]["rsr"] == pytest.approx(1 / math.log(2)) and data["runs"][0]["pass_rate"] is None
    assert data["top_k"] == 20 and data["rank_clip"] == 100 and data["summaries"]["tessy"]["written"] == 3


def test_a_rerun_skips_the_ids_each_mode_finished(tmp_path: Path) -> None:
    folder = tmp_path / "cmp"
    compare(OFFLINE, "teacher-only,student-only", output_dir=folder, prompts=PROMPTS, limit=2)
    more = compare(OFFLINE, "student-only,teacher-only,tessy", output_dir=folder, prompts=PROMPTS, limit=4)
    done = {m: (s.skipped_done, s.written) for m, s in more.summaries.items()}
    assert done == {"student-only": (2, 2), "teacher-only": (2, 2), "tessy": (0, 4)}
    again = compare(OFFLINE, "student-only,teacher-only,tessy", output_dir=folder, prompts=PROMPTS, limit=4)
    assert all((s.skipped_done, s.written, s.requests) == (4, 0, 0) for s in again.summaries.values())
    for mode in ("tessy", "teacher-only", "student-only"):
        assert len(list(read_records(folder / f"{mode}.jsonl"))) == 4  # nothing written twice
    assert [r.name for r in again.rows] == ["student-only", "teacher-only", "tessy"]


def test_every_mode_name_is_accepted_and_an_unknown_one_is_refused_before_any_run(tmp_path: Path) -> None:
    assert parse_modes(",".join(m.value for m in Mode)) == list(Mode)
    assert parse_modes(" tessy, ,teacher-only,tessy") == [Mode.TESSY, Mode.TEACHER_ONLY]
    with pytest.raises(ConfigError, match="the modes are: tessy, teacher-only"):
        compare(OFFLINE, "tessy,nope", output_dir=tmp_path / "cmp", prompts=PROMPTS)
    assert not (tmp_path / "cmp").exists()
    with pytest.raises(ConfigError, match="at least one mode"):
        parse_modes(" , ")


def test_cli_compare_prints_the_table_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--config", str(OFFLINE), "--modes", MODES, "--input", str(PROMPTS), "--output", str(out)]
    assert main([*args, "--limit", "2", "--samples", "1"]) == 0
    printed = capsys.readouterr().out
    assert "RSR" in printed and "teacher-only" in printed and str(out / "report.json") in printed
    assert (out / "report.html").read_text(encoding="utf-8").count("<details>") == 1


def verified(sample_id: str, passed: bool | None) -> dict[str, Any]:
    return {
        "id": sample_id,
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "<think>\nOkay\n</think>\n\n42"},
        ],
        "mode": "teacher-only",
        "spans": [
            {"source": "teacher", "phase": "think", "text": "Okay", "tokens": 1},
            {"source": "teacher", "phase": "answer", "text": "42", "tokens": 1},
        ],
        "stats": {"teacher_tokens": 2, "requests": 2},
        "config_hash": "h",
        "verification": {"kind": "math", "passed": passed, "score": None, "detail": ""},
    }


def test_pass_rates_count_only_the_records_that_were_judged(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    rows = [verified("a", True), verified("b", False), verified("c", True), verified("d", None)]
    unverified = {k: v for k, v in verified("e", True).items() if k != "verification"}
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, unverified]), encoding="utf-8")
    [row] = comparison(build_report([load_run(path)]))
    assert (row.pass_rate, row.judged) == (pytest.approx(2 / 3), 3)
    assert math.isnan(row.similarity_to_student)  # no student-only run to compare with
    assert row.requests_per_kept == pytest.approx(10 / 10)  # 5 samples, 2 requests and 2 tokens each


def test_each_mode_keeps_its_own_config_hash_so_resumes_never_mix_modes(tmp_path: Path) -> None:
    compare(OFFLINE, "tessy,teacher-only", output_dir=tmp_path, prompts=PROMPTS, limit=1)
    hashes = {m: {r.config_hash for r in read_records(tmp_path / f"{m}.jsonl")} for m in ("tessy", "teacher-only")}
    expected = {m: load_config(OFFLINE, [f"mode={m}"]).config_hash() for m in ("tessy", "teacher-only")}
    assert hashes == {m: {h} for m, h in expected.items()} and len(set(expected.values())) == 2
