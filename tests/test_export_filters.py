"""``tessy export``: what it leaves out (and says so), Parquet exports of different runs that
load together, the dataset card, and the push to the Hub (against a local stand-in for it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from export_fixtures import record, write_run
from tessy.cli import main
from tessy.errors import ConfigError, DataError
from tessy.export import ExportFilters, export_run

datasets = pytest.importorskip("datasets")


def ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Six samples: one guarded, answers passed / failed / not judged / not verified, a duplicate."""
    return write_run(
        tmp_path / "run.jsonl",
        [
            record("ok#0", passed=True, answer_text="42"),
            record("guarded#0", passed=True, guards=("thinking_budget",)),
            record("wrong#0", passed=False, prompt="What is 2 + 2?"),
            record("unjudged#0", passed=None, prompt="What is 3 + 3?"),
            record("plain#0", prompt="What is 4 + 4?", teacher_tokens=2, student_tokens=18),
            record("copy#0", passed=True, answer_text="42"),  # the same prompt and response as ok#0
        ],
    )


def test_the_default_export_leaves_out_guarded_samples_and_says_how_many(mixed: Path, tmp_path: Path) -> None:
    result = export_run(mixed, "trl", tmp_path / "out.jsonl", include_id=True)
    assert result.rows == 5 and result.left_out == {"guarded": 1}
    assert "guarded#0" not in ids(tmp_path / "out.jsonl")
    assert result.filter_notes == ["1 left out: a budget or repetition guard fired (the sample was cut short)"]
    everything = export_run(mixed, "trl", tmp_path / "all.jsonl", filters=ExportFilters(include_guarded=True))
    assert everything.rows == 6 and everything.left_out == {}
    assert everything.filter_notes == []
    clean = write_run(tmp_path / "clean.jsonl", [record("a")])
    notes = export_run(clean, "trl", tmp_path / "c.jsonl").filter_notes
    assert notes == ["0 left out: a budget or repetition guard fired (the sample was cut short)"]


def test_only_passed_keeps_judged_passes_and_counts_why_the_rest_went(mixed: Path, tmp_path: Path) -> None:
    result = export_run(mixed, "trl", tmp_path / "out.jsonl", include_id=True, filters=ExportFilters(only_passed=True))
    assert ids(tmp_path / "out.jsonl") == ["ok#0", "copy#0"]
    assert result.left_out == {"guarded": 1, "not_passed": 3}
    assert "(failed: 1, not judged: 1, not verified: 1)" in result.filter_notes[1]


def test_min_teacher_share_and_dedupe(mixed: Path, tmp_path: Path) -> None:
    filters = ExportFilters(min_teacher_share=0.3, dedupe=True)
    result = export_run(mixed, "trl", tmp_path / "out.jsonl", include_id=True, filters=filters)
    assert ids(tmp_path / "out.jsonl") == ["ok#0", "wrong#0", "unjudged#0"]
    assert result.left_out == {"guarded": 1, "teacher_share": 1, "duplicate": 1}
    with pytest.raises(ValueError, match="from 0 to 1"):
        ExportFilters(min_teacher_share=30)


def test_the_cli_prints_what_each_filter_left_out(
    mixed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.jsonl"
    assert main(["export", str(mixed), "--format", "trl", "--out", str(out), "--only-passed", "--dedupe"]) == 0
    captured = capsys.readouterr()
    printed = " ".join((captured.out + captured.err).split())
    assert "exported 1 records as trl" in printed
    assert "1 left out: a budget or repetition guard fired" in printed
    assert "3 left out: the answer did not pass verification" in printed
    assert "1 left out: the same prompt and response" in printed
    assert main(["export", str(mixed), "--format", "trl", "--out", str(out), "--min-teacher-share", "2"]) == 1


def load_parquet(files: list[Path], cache: Path) -> Any:
    return datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", cache_dir=str(cache))


def test_two_runs_parquet_exports_load_together_whether_or_not_guards_fired(tmp_path: Path) -> None:
    # Run a: no guard fired, not verified, answer a number. Run b: a guard fired (kept with
    # --include-guarded), verified, the same field as text.
    a = write_run(tmp_path / "a.jsonl", [record("a1", answer_ref=42), record("a2", answer_ref=[1, 2])])
    b = write_run(
        tmp_path / "b.jsonl",
        [record("b1", guards=("thinking_budget",), passed=True, answer_ref="42"), record("b2", passed=None)],
    )
    pa_ = export_run(a, "parquet", tmp_path / "a.parquet")
    pb = export_run(b, "parquet", tmp_path / "b.parquet", filters=ExportFilters(include_guarded=True))
    ds = load_parquet([pa_.path, pb.path], tmp_path / "cache")
    assert ds["id"] == ["a1", "a2", "b1", "b2"]
    # Input fields are columns, text in every run: text as it is, other values as JSON.
    assert ds["answer_ref"] == ["42", "[1, 2]", "42", None]
    assert [r["stats"]["guards"] for r in ds] == [[], [], ["thinking_budget"], []]
    assert [r["verification"] for r in ds][:2] == [None, None]
    assert ds[2]["verification"] == {"kind": "math", "passed": True, "score": None, "detail": "checked"}
    assert ds[3]["verification"]["passed"] is None
    assert json.loads(ds[1]["fields"]) == {"answer_ref": [1, 2]}  # the exact value


def test_runs_with_different_input_fields_load_together_with_the_same_field_list(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a.jsonl", [record("a1", answer="7")])
    b = write_run(tmp_path / "b.jsonl", [record("b1", test="def check(c): pass", entry_point="f")])
    fields = ["answer", "test", "entry_point"]
    files = [export_run(r, "parquet", tmp_path / f"{r.stem}.parquet", input_fields=fields).path for r in (a, b)]
    ds = load_parquet(files, tmp_path / "cache")
    assert ds["answer"] == ["7", None] and ds["entry_point"] == [None, "f"]


def test_a_datasets_folder_export_has_the_same_schema(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.jsonl", [record("a", answer="7", fields="clash"), record("b")])
    folder = export_run(run, "parquet", tmp_path / "hf").path
    ds = datasets.load_from_disk(str(folder))
    assert ds.column_names[:11] == [
        "id",
        "messages",
        "spans",
        "stats",
        "mode",
        "config_hash",
        "verification",
        "prompt_id",
        "seed",
        "kept",
        "fields",
    ]
    # An input field named like a record column gets its own, prefixed, column.
    assert ds["input.fields"] == ["clash", None] and ds["answer"] == ["7", None]
    assert (folder / "README.md").is_file()


def test_the_dataset_card_says_who_wrote_what_and_what_was_filtered(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "export" / "train.parquet"
    result = export_run(mixed, "parquet", out, filters=ExportFilters(only_passed=True))
    assert result.card == out.parent / "README.md"
    card = result.card.read_text()
    assert card.startswith("---\n") and "path: train.parquet" in card
    for text in (
        "| teacher | big-teacher (openai backend, qwen3 format) |",
        "| student | small-student (openai backend, qwen3 format) |",
        "| mode | tessy (2) |",
        "| config hash | cafe0123 |",
        "| records in the run | 6 |",
        "| records exported | 2 |",
        "| teacher token share | 50.0% |",
        "| pass rate, exported | 2 of 2 judged answers passed (100.0%) |",
        "| pass rate, whole run | 3 of 4 judged answers passed (75.0%); 1 could not be judged; 1 not verified |",
        "only samples whose answer passed verification are kept",
    ):
        assert text in card
    # A README.md tessy did not write is never overwritten.
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "README.md").write_text("my project\n")
    other = export_run(mixed, "trl", folder / "train.jsonl").card
    assert other == folder / "train.README.md" and (folder / "README.md").read_text() == "my project\n"


class StandInHub:
    """Records what tessy asks of the Hub, in place of huggingface_hub's HfApi network calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.files: dict[str, bytes] = {}

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/datasets/{repo_id}"

    def create_commit(self, repo_id: str, operations: list[Any], **kwargs: Any) -> None:
        self.calls.append(("create_commit", {"repo_id": repo_id, **kwargs}))
        for op in operations:
            self.files[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()


def test_push_to_hub_uploads_the_export_and_its_card_in_one_commit(
    mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_mod = pytest.importorskip("huggingface_hub")
    hub = StandInHub()
    monkeypatch.setattr(hub_mod.HfApi, "create_repo", lambda self, repo_id, **kw: hub.create_repo(repo_id, **kw))
    monkeypatch.setattr(
        hub_mod.HfApi, "create_commit", lambda self, repo_id, ops, **kw: hub.create_commit(repo_id, ops, **kw)
    )
    out = tmp_path / "train.parquet"
    result = export_run(mixed, "parquet", out, push_to="me/tessy-data", private=True)
    assert result.hub_url == "https://huggingface.co/datasets/me/tessy-data"
    assert [c[0] for c in hub.calls] == ["create_repo", "create_commit"]
    assert hub.calls[0][1] == {"repo_id": "me/tessy-data", "repo_type": "dataset", "private": True, "exist_ok": True}
    assert hub.calls[1][1]["repo_type"] == "dataset"
    assert hub.files["train.parquet"] == out.read_bytes()
    assert hub.files["README.md"].decode().startswith("---\n")

    def offline(self: Any, repo_id: str, **kw: Any) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub_mod.HfApi, "create_repo", offline)
    with pytest.raises(DataError, match="pushing to the Hub dataset me/tessy-data failed: network is unreachable"):
        export_run(mixed, "trl", tmp_path / "t.jsonl", push_to="me/tessy-data")
    with pytest.raises(ConfigError, match="repository id"):
        export_run(mixed, "trl", tmp_path / "t.jsonl", push_to="no-owner")
    with pytest.raises(ConfigError, match="Parquet file"):
        export_run(mixed, "parquet", tmp_path / "folder", push_to="me/x")


def test_samples_rejection_sampling_did_not_keep_are_left_out_unless_asked_for() -> None:
    from dataclasses import replace

    from tessy.export.filters import RecordFilter

    base = record("p#0")
    kept, rejected, unmarked = replace(base, kept=True), replace(base, id="p#1", kept=False), replace(base, id="q")
    default = RecordFilter()
    assert [default.reason(r) for r in (kept, rejected, unmarked)] == [None, "rejected", None]
    assert "1 left out: rejection sampling did not keep the sample (kept: false)" in default.summary()
    assert RecordFilter(ExportFilters(include_rejected=True)).reason(rejected) is None


def test_a_parquet_export_keeps_each_samples_prompt_seed_and_whether_it_was_kept(tmp_path: Path) -> None:
    from dataclasses import replace

    from tessy.records import SampleStats

    drawn = replace(record("p#1"), prompt_id="p", seed=8, kept=True, stats=SampleStats(glued_handoffs=2))
    run = write_run(tmp_path / "run.jsonl", [record("a"), drawn])
    ds = load_parquet([export_run(run, "parquet", tmp_path / "run.parquet").path], tmp_path / "cache")
    assert [(r["prompt_id"], r["seed"], r["kept"]) for r in ds] == [(None, None, None), ("p", 8, True)]
    assert [r["stats"]["glued_handoffs"] for r in ds] == [None, 2]
