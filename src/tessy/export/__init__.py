"""``tessy export``: a run's records in the formats SFT stacks load without glue code.

- ``trl``: JSONL of ``{"messages": [...]}`` (TRL's conversational language-modelling type).
- ``prompt-completion``: JSONL of ``{"prompt": [...messages...], "completion": [assistant]}``
  (TRL's conversational prompt-completion type: the loss falls on the completion only). Only
  the conversational form is written: it leaves rendering to the student's own chat template,
  which a plain-string form would have to copy.
- ``sharegpt``: JSONL of ``{"conversations": [{"from": "human"|"gpt", "value": ...}], "system": ...}``
  as LLaMA-Factory reads it, plus its entry in ``dataset_info.json`` beside the file (other
  entries there are kept).
- ``parquet``: every record field with an explicit schema (see :mod:`.table`), input fields as
  their own columns: one Parquet file when the path ends in ``.parquet``, else a ``datasets``
  ``save_to_disk`` folder (``datasets.load_from_disk``).

What is exported (see :mod:`.filters`): by default every finished sample in which no guard
fired; options keep only passed answers, a minimum teacher share, one copy of a repeated
response. The assistant message is the stored one (thinking inside the content, in the
student's format), or, with a reasoning field, the answer as ``content`` and the thinking under
that field (``reasoning_content`` for Qwen3 and vLLM, ``thinking`` for the gpt-oss template; a
run whose student speaks gpt-oss gets ``thinking`` unless told otherwise). A dataset card
(``README.md``, see :mod:`.card`) goes beside the export, and the export can be pushed to the Hub.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import sidecar_paths
from ..errors import ConfigError, DataError, MissingDependencyError
from ..jsonl import write_atomic
from ..records import Record, read_records
from . import rows
from .card import CardFacts, card_path, dataset_card, push_to_hub
from .filters import FILTERS, ExportFilters, RecordFilter, Verdicts, guarded
from .table import record_schema, records_table, write_parquet

__all__ = [
    "FILTERS",
    "FORMATS",
    "ExportFilters",
    "ExportResult",
    "RecordFilter",
    "Verdicts",
    "export_run",
    "guarded",
    "record_schema",
    "records_dataset",
]

logger = logging.getLogger(__name__)

FORMATS = ("trl", "prompt-completion", "sharegpt", "parquet")


@dataclass
class ExportResult:
    """What an export wrote, and what it left out."""

    format: str
    path: Path
    rows: int
    #: sharegpt rows whose turns do not alternate (left out).
    skipped: int = 0
    extra: list[Path] = field(default_factory=list)
    #: Records left out by each filter (keys of :data:`FILTERS`), and the lines that say so.
    left_out: dict[str, int] = field(default_factory=dict)
    filter_notes: list[str] = field(default_factory=list)
    reasoning_field: str | None = None
    card: Path | None = None
    hub_url: str | None = None


def _records(path: Path) -> Iterator[Record]:
    """The run's finished records, lazily (a record without an assistant message is skipped)."""
    for record in read_records(path):
        if record.response is not None:
            yield record
            continue
        logger.warning("%s: record %s has no assistant message; it is not exported", path, record.id)


def _run_config(run: Path) -> dict[str, Any] | None:
    config_path = sidecar_paths(run)[1]
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        return None
    return config if isinstance(config, dict) else None


def _student_format(config: dict[str, Any] | None) -> str | None:
    student = (config or {}).get("student")
    return str(student.get("format")) if isinstance(student, dict) and student.get("format") else None


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


def _input_fields(run: Path) -> list[str]:
    """Every input field name of the run's records, in the order first seen (one pass)."""
    names: dict[str, None] = {}
    for record in _records(run):
        names.update(dict.fromkeys(record.fields))
    return list(names)


def export_run(
    run: Path,
    fmt: str,
    out: Path,
    *,
    name: str | None = None,
    include_id: bool = False,
    filters: ExportFilters | None = None,
    reasoning_field: str | None = None,
    input_fields: Sequence[str] | None = None,
    card: bool = True,
    push_to: str | None = None,
    private: bool = False,
    token: str | None = None,
) -> ExportResult:
    """Write the records of ``run`` that ``filters`` keep to ``out`` in ``fmt`` (one of :data:`FORMATS`).

    ``name`` is the dataset's name in LLaMA-Factory's ``dataset_info.json`` (default: the file
    stem); ``include_id`` adds each sample's ``id`` to the JSONL formats; ``reasoning_field``
    puts the thinking in that field of the assistant message (a gpt-oss student's run: ``thinking``
    by default); ``input_fields`` names the input fields that get Parquet columns (default: every
    one the run has). ``card`` writes the dataset card beside the export; ``push_to`` uploads
    the export and its card to that Hub dataset repository.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if out.resolve() == run.resolve():
        raise ConfigError(f"the export would overwrite the run {run}; give another --out")
    filters = filters or ExportFilters()
    config = _run_config(run)
    if reasoning_field is None and fmt != "sharegpt" and _student_format(config) == "gpt-oss":
        reasoning_field = "thinking"
        logger.info("the student speaks gpt-oss: the thinking is exported as the 'thinking' field")
    if reasoning_field is not None and fmt == "sharegpt":
        raise ConfigError("sharegpt turns have no reasoning field; export trl, prompt-completion or parquet")
    if reasoning_field is not None and (not reasoning_field.isidentifier() or reasoning_field in ("role", "content")):
        raise ConfigError(
            f"the reasoning field must be a name such as reasoning_content or thinking, not {reasoning_field!r}"
        )
    folder_out = fmt == "parquet" and out.suffix != ".parquet"
    if folder_out and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; give a new folder or a .parquet file")
    if not folder_out and out.is_dir():
        raise ConfigError(f"{out} is a folder; give a file name such as train.jsonl")
    if push_to is not None and folder_out:
        raise ConfigError("push a Parquet file or a JSONL export to the Hub: give --out NAME.parquet")

    facts = CardFacts(run, fmt, out.name, filters, config, reasoning_field=reasoning_field)
    kept = RecordFilter(filters)

    def selected() -> Iterator[Record]:
        for record in _records(run):
            keep = kept.keep(record)
            facts.add(record, keep)
            if keep:
                yield record

    result = _write(
        fmt,
        run,
        out,
        selected(),
        name=name,
        include_id=include_id,
        reasoning=reasoning_field,
        input_fields=input_fields,
    )
    result.left_out = dict(kept.left_out)
    result.filter_notes = kept.summary()
    result.reasoning_field = reasoning_field
    for line in result.filter_notes:
        logger.info("%s: %s", run, line)
    if not result.rows:
        logger.warning("%s: no record was exported (%s)", run, "; ".join(result.filter_notes) or "the run is empty")
    if card or push_to is not None:
        folder = out if folder_out else out.parent
        path = card_path(folder, out)
        path.write_text(dataset_card(facts, kept), encoding="utf-8")
        result.card = path
    if push_to is not None:
        assert result.card is not None
        files = [(out, out.name), (result.card, "README.md"), *((p, p.name) for p in result.extra)]
        result.hub_url = push_to_hub(push_to, files, private=private, token=token)
    return result


def _write(
    fmt: str,
    run: Path,
    out: Path,
    records: Iterable[Record],
    *,
    name: str | None,
    include_id: bool,
    reasoning: str | None,
    input_fields: Sequence[str] | None,
) -> ExportResult:
    if fmt == "parquet":
        fields = list(input_fields) if input_fields is not None else _input_fields(run)
        if out.suffix == ".parquet":
            return ExportResult(fmt, out, write_parquet(records, out, fields, reasoning))
        return ExportResult(fmt, out, _save_to_disk(records, out, fields, reasoning))
    if fmt == "sharegpt":
        skipped = 0
        has_system = False

        def sharegpt_rows() -> Iterator[dict[str, Any]]:
            nonlocal skipped, has_system
            for record in records:
                row = rows.sharegpt(record)
                if row is None:
                    skipped += 1
                    logger.warning("sample %s: turns do not alternate user/assistant; left out", record.id)
                    continue
                has_system = has_system or bool(row["system"])
                if include_id:
                    row["id"] = record.id
                yield row

        n = write_atomic(out, sharegpt_rows())
        stem = out.name.split(".")[0] or "tessy"
        info = _update_dataset_info(out, name or stem, _dataset_info_entry(out, with_system=has_system))
        return ExportResult(fmt, out, n, skipped, [info])
    convert: Callable[[Record, str | None], dict[str, Any]] = rows.trl if fmt == "trl" else rows.prompt_completion

    def converted() -> Iterator[dict[str, Any]]:
        for record in records:
            row = convert(record, reasoning)
            if include_id:
                row = {"id": record.id, **row}
            yield row

    return ExportResult(fmt, out, write_atomic(out, converted()))


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError("datasets", "datasets", "Records as a datasets.Dataset") from exc
    datasets.disable_progress_bars()
    return datasets


def _save_to_disk(records: Iterable[Record], out: Path, fields: list[str], reasoning: str | None) -> int:
    """A ``save_to_disk`` folder, through a Parquet file written a batch at a time."""
    datasets = _datasets()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tessy-export-") as tmp:
        staged = Path(tmp) / "rows.parquet"
        n = write_parquet(records, staged, fields, reasoning)
        features = datasets.Features.from_arrow_schema(record_schema(fields, reasoning))
        ds = datasets.Dataset.from_parquet(str(staged), features=features, cache_dir=str(Path(tmp) / "cache"))
        if out.exists():
            shutil.rmtree(out)  # an empty folder (checked above): save_to_disk makes its own
        ds.save_to_disk(str(out))
    return n


def records_dataset(records: Iterable[Record], *, reasoning_field: str | None = None) -> Any:
    """A ``datasets.Dataset`` of records, one row each, with the columns and types of the
    Parquet export (see :mod:`.table`), input fields as their own columns."""
    datasets = _datasets()
    kept = list(records)
    names: dict[str, None] = {}
    for r in kept:
        names.update(dict.fromkeys(r.fields))
    return datasets.Dataset(datasets.table.InMemoryTable(records_table(kept, list(names), reasoning_field)))
