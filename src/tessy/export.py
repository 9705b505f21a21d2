"""``tessy export``: a run's records in the formats SFT stacks load without glue code.

- ``trl``: JSONL of ``{"messages": [...]}`` (TRL's conversational language-modelling type).
- ``prompt-completion``: JSONL of ``{"prompt": [...messages...], "completion": [assistant]}``
  (TRL's conversational prompt-completion type: the loss falls on the completion only). Only
  the conversational form is written: it leaves rendering to the student's own chat template,
  which a plain-string form would have to copy.
- ``sharegpt``: JSONL of ``{"conversations": [{"from": "human"|"gpt", "value": ...}], "system": ...}``
  as LLaMA-Factory reads it, plus its entry in ``dataset_info.json`` beside the file (other
  entries there are kept).
- ``parquet``: every record field (``id``, ``messages``, ``spans``, ``stats``, ``mode``,
  ``config_hash``, and the kept input fields as one JSON string, ``fields``), through
  Hugging Face ``datasets``: one Parquet file when the path ends in ``.parquet``, else a
  ``save_to_disk`` folder (``datasets.load_from_disk``).

In every format the assistant message is the stored one: thinking inside the content, in the
student's format (``<think>\\n...\\n</think>\\n\\n...`` for think-tag students).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, MissingDependencyError
from .jsonl import write_atomic
from .records import Record, read_records

__all__ = ["FORMATS", "ExportResult", "export_run", "records_dataset"]

logger = logging.getLogger(__name__)

FORMATS = ("trl", "prompt-completion", "sharegpt", "parquet")
_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}


@dataclass
class ExportResult:
    """What an export wrote."""

    format: str
    path: Path
    rows: int
    skipped: int = 0
    extra: list[Path] = field(default_factory=list)


def _records(path: Path) -> Iterator[Record]:
    """The run's finished records, lazily (a record without an assistant message is skipped)."""
    for record in read_records(path):
        if record.response is not None:
            yield record
            continue
        logger.warning("%s: record %s has no assistant message; it is not exported", path, record.id)


def _messages(record: Record) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in record.messages]


def _trl(record: Record) -> dict[str, Any]:
    return {"messages": _messages(record)}


def _prompt_completion(record: Record) -> dict[str, Any]:
    messages = _messages(record)
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _sharegpt(record: Record) -> dict[str, Any] | None:
    """LLaMA-Factory's sharegpt row, or ``None`` when the turns do not alternate human, gpt, ..."""
    messages = _messages(record)
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    expected = ["user", "assistant"] * (len(turns) // 2)
    if [m["role"] for m in turns] != expected:
        return None
    return {
        "conversations": [{"from": _SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in turns],
        "system": system,
    }


def _full(record: Record) -> dict[str, Any]:
    return {
        "id": record.id,
        "messages": _messages(record),
        "spans": [s.to_json() for s in record.spans],
        "stats": record.stats.to_json(),
        "mode": record.mode,
        "config_hash": record.config_hash,
        "fields": json.dumps(record.fields, ensure_ascii=False, sort_keys=True),
    }


def _dataset_info_entry(data_file: Path, *, with_system: bool) -> dict[str, Any]:
    columns = {"messages": "conversations"}
    if with_system:
        columns["system"] = "system"
    return {
        "file_name": data_file.name,
        "formatting": "sharegpt",
        "columns": columns,
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
    }


def _update_dataset_info(data_file: Path, name: str, entry: dict[str, Any]) -> Path:
    info_path = data_file.parent / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {info_path} to add the '{name}' entry: {exc}") from exc
        if not isinstance(info, dict):
            raise DataError(f"{info_path} does not hold a JSON object; LLaMA-Factory needs one")
    info[name] = entry
    tmp = info_path.with_name(info_path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, info_path)
    return info_path


def export_run(run: Path, fmt: str, out: Path, *, name: str | None = None, include_id: bool = False) -> ExportResult:
    """Write the records of ``run`` to ``out`` in ``fmt`` (one of :data:`FORMATS`).

    ``name`` is the dataset's name in LLaMA-Factory's ``dataset_info.json`` (default: the file
    stem); ``include_id`` adds each sample's ``id`` to the JSONL formats.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if out.resolve() == run.resolve():
        raise ConfigError(f"the export would overwrite the run {run}; give another --out")
    if fmt == "parquet":
        return _export_parquet(run, out)
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give a file name such as train.jsonl")
    if fmt == "sharegpt":
        skipped = 0
        has_system = False

        def rows() -> Iterator[dict[str, Any]]:
            nonlocal skipped, has_system
            for record in _records(run):
                row = _sharegpt(record)
                if row is None:
                    skipped += 1
                    logger.warning("sample %s: turns do not alternate user/assistant; left out", record.id)
                    continue
                has_system = has_system or bool(row["system"])
                if include_id:
                    row["id"] = record.id
                yield row

        n = write_atomic(out, rows())
        stem = out.name.split(".")[0] or "tessy"
        info = _update_dataset_info(out, name or stem, _dataset_info_entry(out, with_system=has_system))
        return ExportResult(fmt, out, n, skipped, [info])
    convert = _trl if fmt == "trl" else _prompt_completion

    def converted() -> Iterator[dict[str, Any]]:
        for record in _records(run):
            row = convert(record)
            if include_id:
                row = {"id": record.id, **row}
            yield row

    return ExportResult(fmt, out, write_atomic(out, converted()))


def records_dataset(records: Iterable[Record]) -> Any:
    """A ``datasets.Dataset`` of records, one row each, with the columns of the Parquet export
    (``id``, ``messages``, ``spans``, ``stats``, ``mode``, ``config_hash``, and the kept input
    fields as one JSON string, ``fields``): the same schema whatever the records hold."""
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError("datasets", "datasets", "Records as a datasets.Dataset") from exc
    return datasets.Dataset.from_list([_full(r) for r in records])


def _export_parquet(run: Path, out: Path) -> ExportResult:
    ds = records_dataset(_records(run))
    if not len(ds):
        raise DataError(f"{run} holds no finished records to export")
    if out.suffix == ".parquet":
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(out))
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"{out} exists and is not an empty folder; give a new folder or a .parquet file")
        ds.save_to_disk(str(out))
    return ExportResult("parquet", out, len(ds))
