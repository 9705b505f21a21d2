"""``tessy export``: each format loads with its consumer's own loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tessy import ConfigError, load_config, synthesize
from tessy.cli import main
from tessy.export import export_run

datasets = pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = ROOT / "examples" / "offline.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run") / "out.jsonl"
    synthesize(load_config(OFFLINE, [f"data.output={path}"]))
    return path


@pytest.fixture(scope="module")
def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run.read_text(encoding="utf-8").splitlines()]


def load_json(path: Path, cache: Path) -> Any:
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


def test_trl_messages_load_and_keep_thinking_in_the_content(
    run: Path, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    out = export_run(run, "trl", tmp_path / "trl.jsonl")
    assert out.rows == len(records) == 5
    ds = load_json(out.path, tmp_path / "cache")
    assert ds.column_names == ["messages"]
    for row, rec in zip(ds, records, strict=True):
        assert row["messages"] == rec["messages"]
        assistant = row["messages"][-1]
        assert assistant["role"] == "assistant" and assistant["content"].startswith("<think>\n")
        assert "\n</think>\n\n" in assistant["content"]
    # The sample with a system prompt keeps it as the first message.
    assert any(row["messages"][0]["role"] == "system" for row in ds)


def test_prompt_completion_is_conversational(run: Path, records: list[dict[str, Any]], tmp_path: Path) -> None:
    out = export_run(run, "prompt-completion", tmp_path / "pc.jsonl", include_id=True)
    ds = load_json(out.path, tmp_path / "cache")
    assert ds.column_names == ["id", "prompt", "completion"]
    for row, rec in zip(ds, records, strict=True):
        assert row["id"] == rec["id"]
        assert row["prompt"] + row["completion"] == rec["messages"]
        assert [m["role"] for m in row["completion"]] == ["assistant"]


def test_sharegpt_with_its_dataset_info_entry(run: Path, records: list[dict[str, Any]], tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "other.json"}}))
    out = export_run(run, "sharegpt", folder / "tessy_data.jsonl", name="tessy_run")
    assert out.extra == [folder / "dataset_info.json"]
    info = json.loads((folder / "dataset_info.json").read_text())
    assert info["other"] == {"file_name": "other.json"}  # entries of other datasets are kept
    entry = info["tessy_run"]
    assert entry["file_name"] == "tessy_data.jsonl" and entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "conversations", "system": "system"}
    assert entry["tags"] == {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
    ds = load_json(folder / entry["file_name"], tmp_path / "cache")
    for row, rec in zip(ds, records, strict=True):
        conv = row["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"]
        assert conv[1]["value"] == rec["messages"][-1]["content"]
        systems = [m["content"] for m in rec["messages"] if m["role"] == "system"]
        assert row["system"] == (systems[0] if systems else "")


def test_sharegpt_leaves_out_turns_that_do_not_alternate(tmp_path: Path) -> None:
    msgs = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
    run = tmp_path / "run.jsonl"
    good = {"id": "g", "messages": [msgs[0], msgs[2]], "config_hash": "h"}
    run.write_text(json.dumps({"id": "x", "messages": msgs, "config_hash": "h"}) + "\n" + json.dumps(good) + "\n")
    out = export_run(run, "sharegpt", tmp_path / "s.jsonl")
    assert (out.rows, out.skipped) == (1, 1)


def test_parquet_file_and_datasets_folder(run: Path, records: list[dict[str, Any]], tmp_path: Path) -> None:
    out = export_run(run, "parquet", tmp_path / "train.parquet")
    ds = datasets.load_dataset("parquet", data_files=str(out.path), split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == len(records)
    row = ds[0]
    assert row["id"] == records[0]["id"] and row["messages"] == records[0]["messages"]
    assert [s["text"] for s in row["spans"]] == [s["text"] for s in records[0]["spans"]]
    assert row["stats"]["switches"] == records[0]["stats"]["switches"]
    # Input fields other than the prompt come back as JSON.
    by_id = {r["id"]: r for r in ds}
    chat = next(r for r in records if r["id"] == "chat-1")
    assert json.loads(by_id["chat-1"]["fields"]) == {"source": chat["source"]}

    folder = export_run(run, "parquet", tmp_path / "hf").path
    loaded = datasets.load_from_disk(str(folder))
    assert loaded["id"] == ds["id"] and loaded["messages"] == ds["messages"]
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_run(run, "parquet", folder)


def test_trl_accepts_the_conversational_exports(run: Path, tmp_path: Path) -> None:
    """TRL's own format checks (skipped where TRL is not installed)."""
    pytest.importorskip("trl")
    from trl.data_utils import is_conversational, is_conversational_from_value, maybe_convert_to_chatml

    for fmt in ("trl", "prompt-completion"):
        ds = load_json(export_run(run, fmt, tmp_path / f"{fmt}.jsonl").path, tmp_path / "cache")
        assert all(is_conversational(row) for row in ds)
    ds = load_json(export_run(run, "sharegpt", tmp_path / "s.jsonl").path, tmp_path / "cache")
    trl_ds = load_json(export_run(run, "trl", tmp_path / "t.jsonl").path, tmp_path / "cache")
    for row, trl_row in zip(ds, trl_ds, strict=True):
        assert is_conversational_from_value(row)
        # TRL renames the keys; sharegpt's role names (human, gpt) stay LLaMA-Factory's.
        chatml = maybe_convert_to_chatml(dict(row))
        roles = {"human": "user", "gpt": "assistant"}
        converted = [{"role": roles[m["role"]], "content": m["content"]} for m in chatml["messages"]]
        assert converted == [m for m in trl_row["messages"] if m["role"] != "system"]


def test_cli_export(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x" / "trl.jsonl"
    assert main(["export", str(run), "--format", "trl", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 5
    assert main(["export", str(run), "--format", "trl", "--out", str(run)]) == 1
    assert "overwrite" in " ".join(capsys.readouterr().err.split())
