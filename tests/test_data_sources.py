"""Prompts from Parquet files, dataset folders and (through the same call) the Hugging Face Hub."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

import pytest

datasets = pytest.importorskip("datasets")

import tessy  # noqa: E402
from tessy import ConfigError, DataError, Sample  # noqa: E402
from tessy.cli import main  # noqa: E402
from tessy.config import load_config  # noqa: E402
from tessy.prompts import BadLine, PromptSource, read_prompts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "examples" / "offline.yaml"

ROWS: list[dict[str, Any]] = [
    {"id": "a", "problem": "What is 17 + 25?", "tags": ["math"], "seen": datetime.datetime(2026, 1, 2, 3, 4, 5)},
    {"id": "b", "problem": "  ", "tags": [], "seen": None},  # an empty prompt: a bad row
    {"id": "c", "problem": "Is 91 prime?", "tags": ["math", "primes"], "seen": None},
]


def dataset(rows: list[dict[str, Any]] = ROWS) -> Any:
    return datasets.Dataset.from_list(rows)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, default=lambda d: d.isoformat()) + "\n" for r in rows), encoding="utf-8")


def read(source: PromptSource | Path | str, **kwargs: Any) -> list[Sample | BadLine]:
    return list(read_prompts(source, prompt_field="problem", **kwargs))


def check_rows(items: list[Sample | BadLine], source: str) -> None:
    """The three rows of ROWS: two samples with their fields as JSON values, one bad row."""
    a, bad, c = items
    assert isinstance(a, Sample) and isinstance(c, Sample)
    assert (a.id, c.id) == ("a", "c")
    assert a.messages == [{"role": "user", "content": "What is 17 + 25?"}]
    assert a.fields == {"tags": ["math"], "seen": "2026-01-02T03:04:05"}
    json.dumps(a.fields)  # everything a dataset holds becomes JSON the output can carry
    assert c.fields["tags"] == ["math", "primes"]
    assert isinstance(bad, BadLine)
    assert (bad.line_no, bad.unit) == (2, "row")
    assert "empty" in bad.error
    assert str(bad).startswith(f"{source} row 2: ")
    assert json.loads(bad.raw)["id"] == "b"


def test_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    dataset().to_parquet(str(path))
    source = PromptSource.of(path)
    assert source.kind == "parquet"
    assert source.count() == 3 and source.count(limit=2) == 2
    items = read(path)
    check_rows(items, str(path))
    bad = items[1]
    assert isinstance(bad, BadLine) and bad.key == "prompts.parquet:2"


def test_folder_saved_with_save_to_disk(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    dataset().save_to_disk(str(folder))
    source = PromptSource.of(folder)
    assert source.kind == "saved"
    assert source.count() == 3
    check_rows(read(folder), f"{folder}[train]")


def test_saved_dataset_dict_picks_the_split(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": dataset(), "test": dataset(ROWS[2:])}).save_to_disk(str(folder))
    test = PromptSource(str(folder), split="test")
    assert test.count() == 1
    assert [s.id for s in read(test)] == ["c"]
    with pytest.raises(DataError, match=r"no split 'validation'; it has \['test', 'train'\]"):
        read(PromptSource(str(folder), split="validation"))


def test_folder_of_data_files_is_streamed(tmp_path: Path) -> None:
    folder = tmp_path / "repo"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "train.jsonl", ROWS)
    source = PromptSource.of(folder)
    assert source.kind == "folder"
    assert source.count() is None  # a stream's length is not known before its end
    check_rows(read(folder), f"{folder}[train]")


def test_a_hub_dataset_is_loaded_streaming_with_its_subset_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def load_dataset(name: str, subset: str | None, *, split: str, streaming: bool) -> Any:
        calls.append((name, subset, split, streaming))
        return iter(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    source = PromptSource("open-r1/codeforces", split="test", subset="verifiable", hub=True)
    assert str(source) == "open-r1/codeforces/verifiable[test]"
    check_rows(read(source), str(source))
    assert calls == [("open-r1/codeforces", "verifiable", "test", True)]


def test_an_unreachable_hub_is_a_data_error_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Couldn't reach 'open-r1/codeforces' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(DataError, match=r"Hub dataset open-r1/codeforces\[train\] \(is the Hub reachable.*Couldn't"):
        read(PromptSource("open-r1/codeforces", hub=True))


def test_unreadable_sources_are_data_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"dataset folder .*empty"):
        read(empty)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"parquet file .*broken\.parquet"):
        read(broken)
    with pytest.raises(DataError, match=r"parquet file .*broken\.parquet"):
        PromptSource.of(broken).count()  # the progress bar's total, asked first
    with pytest.raises(DataError, match="does not exist"):
        read(tmp_path / "missing.parquet")


def test_without_the_datasets_extra_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "saved"
    dataset().save_to_disk(str(folder))
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now fails
    with pytest.raises(DataError, match=r"pip install 'tessy\[datasets\]'"):
        read(folder)


def test_strict_mode_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    dataset().to_parquet(str(path))
    with pytest.raises(DataError, match=r"prompts\.parquet row 2: .*data\.strict"):
        read(path, strict=True)


# -- config and runs -------------------------------------------------------------------------------


def test_config_takes_one_source() -> None:
    config = load_config(OFFLINE, ["data.input=null", "data.dataset=open-r1/codeforces", "data.split=test"])
    assert config.data.source() == PromptSource("open-r1/codeforces", "test", None, hub=True)
    with pytest.raises(ConfigError, match=r"data\.input .* and data\.dataset .* are both set"):
        load_config(OFFLINE, ["data.dataset=open-r1/codeforces"])


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_a_run_from_parquet_records_bad_rows_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "prompts.parquet"
    dataset().to_parquet(str(path))
    out = tmp_path / "out.jsonl"
    config = load_config(OFFLINE, [f"data.input={path}", f"data.output={out}", "data.prompt_field=problem"])
    summary = tessy.synthesize(config)
    assert (summary.written, summary.bad_lines) == (2, 1)
    recs = records(out)
    assert sorted(r["id"] for r in recs) == ["a", "c"]
    assert {r["id"]: r["tags"] for r in recs} == {"a": ["math"], "c": ["math", "primes"]}
    assert any(s["source"] == "teacher" for s in recs[0]["spans"])
    (failed,) = records(tmp_path / "out.failed.jsonl")
    assert failed["id"] == "prompts.parquet:2" and failed["failure"].startswith("bad_input")

    before = out.read_bytes(), (tmp_path / "out.failed.jsonl").read_bytes()
    again = tessy.synthesize(config)
    assert (again.written, again.skipped_done) == (0, 2)
    assert (out.read_bytes(), (tmp_path / "out.failed.jsonl").read_bytes()) == before


def test_cli_dataset_and_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "repo"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS[:1])
    write_jsonl(folder / "test.jsonl", ROWS[2:])
    out = tmp_path / "out.jsonl"
    # --dataset hands its value to datasets.load_dataset, which takes a Hub id or, as here, a folder.
    args = ["synth", "--config", str(OFFLINE), "--dataset", str(folder), "--split", "test", "--output", str(out)]
    assert main([*args, "data.prompt_field=problem"]) == 0
    assert [r["id"] for r in records(out)] == ["c"]
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--config", str(OFFLINE), "--dataset", "x/y", "--input", "p.jsonl"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
