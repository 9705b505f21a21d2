"""Reading prompts and writing records so that no sample is ever lost.

Input is read lazily, one prompt at a time, from a JSONL file, a Parquet file, a folder (one
saved with ``datasets``' ``save_to_disk``, or data files that ``datasets.load_dataset`` reads)
or a dataset on the Hugging Face Hub, streamed (see :class:`PromptSource`); all but JSONL need
the ``datasets`` package. Output is append-only JSONL (:mod:`tessy.jsonl`) of the records of
:mod:`tessy.records`: every record is written with one ``write`` of a whole line, so the file is
valid JSONL after every record; a line torn by a crash (possible only on power loss or a full
disk) is found and cut off on the next run. Finished ids are skipped on resume; samples that failed go to a sidecar file with
their reason, and so do malformed input lines, so every input line ends up somewhere.

Files beside ``OUT.jsonl``: ``OUT.failed.jsonl`` (failures) and ``OUT.config.json`` (the
resolved config and its hash).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .jsonl import JsonlWriter, scan_ids
from .records import FailureRecord, Message, Mode, Record, Sample, SampleResult

__all__ = [
    "BadLine",
    "OutputStore",
    "PromptSource",
    "prompt_id",
    "read_prompts",
    "sidecar_paths",
]

logger = logging.getLogger(__name__)

_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line (or a dataset's row) that could not be turned into a sample."""

    source: str  # the file, folder or dataset it came from
    line_no: int  # its line (JSONL) or row (other sources), counted from 1
    error: str
    raw: str
    unit: str = "line"

    @property
    def key(self) -> str:
        """Its id in the failure file, e.g. ``prompts.jsonl:7``."""
        return f"{Path(self.source).name}:{self.line_no}"

    def __str__(self) -> str:
        where = f"{self.source}:{self.line_no}" if self.unit == "line" else f"{self.source} {self.unit} {self.line_no}"
        return f"{where}: {self.error}"


#: What ``datasets`` gives a saved dataset's folder (``save_to_disk``), one split or several.
_SAVED_MARKERS = ("state.json", "dataset_dict.json")


@dataclass(frozen=True, slots=True)
class PromptSource:
    """Where prompts come from.

    ``location`` is a JSONL file (any other suffix than ``.parquet``), a Parquet file, a folder
    (saved with ``save_to_disk``, or holding data files ``datasets.load_dataset`` reads: JSONL,
    JSON, CSV, Parquet), or, with ``hub`` set, a dataset id on the Hugging Face Hub
    (``open-r1/codeforces``), streamed. Every kind is read lazily.
    ``split`` and ``subset`` (the dataset's configuration name) apply to folders and the Hub.
    """

    location: str
    split: str = "train"
    subset: str | None = None
    hub: bool = False

    @classmethod
    def of(cls, value: PromptSource | Path | str) -> PromptSource:
        return value if isinstance(value, PromptSource) else cls(str(value))

    @property
    def path(self) -> Path:
        return Path(self.location).expanduser()

    @property
    def kind(self) -> str:
        """``jsonl``, ``parquet``, ``saved`` (a save_to_disk folder), ``folder`` or ``hub``."""
        if self.hub:
            return "hub"
        path = self.path
        if path.is_dir():
            return "saved" if any((path / m).is_file() for m in _SAVED_MARKERS) else "folder"
        return "parquet" if path.suffix.lower() == ".parquet" else "jsonl"

    def __str__(self) -> str:
        if self.kind in ("jsonl", "parquet"):
            return self.location
        subset = f"/{self.subset}" if self.subset else ""
        return f"{self.location}{subset}[{self.split}]"

    def check(self) -> None:
        """Raise :class:`DataError` when a local source is missing (the Hub is asked on reading)."""
        if self.hub:
            if not self.location.strip():
                raise DataError("the dataset id is empty; give one such as open-r1/codeforces")
            return
        if not self.path.exists():
            raise DataError(
                f"the input {self.location} does not exist; give a JSONL or Parquet file of prompts, "
                "a dataset folder, or a Hub dataset (data.dataset)"
            )

    def count(self, limit: int | None = None) -> int | None:
        """How many prompts there are (capped at ``limit``), where that is cheap to know."""
        kind = self.kind
        if kind == "jsonl":
            n = 0
            with self.path.open("rb") as f:
                for line in f:
                    if line.strip():
                        n += 1
                        if limit is not None and n >= limit:
                            break
            return n
        if kind not in ("parquet", "saved"):
            return None  # a stream: its length is known only at its end
        try:
            if kind == "parquet":
                n = int(_require("pyarrow.parquet", self).ParquetFile(self.path).metadata.num_rows)
            else:
                n = len(self._saved())
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read prompts from {self.describe()}: {exc}") from exc
        return min(n, limit) if limit is not None else n

    def rows(self) -> Iterator[tuple[int, Any, str | None]]:
        """``(number, object or ValueError, raw text or None)`` for every prompt, lazily.

        Numbers are line numbers (blank lines skipped) for JSONL, row numbers from 1 otherwise."""
        kind = self.kind
        if kind == "jsonl":
            yield from _jsonl_rows(self.path)
            return
        try:
            if kind == "parquet":
                pq = _require("pyarrow.parquet", self)
                n = 0
                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=256):
                    for row in batch.to_pylist():
                        n += 1
                        yield n, _jsonable(row), None
                return
            dataset = self._saved() if kind == "saved" else self._streamed()
            for n, row in enumerate(dataset, start=1):
                yield n, _jsonable(row), None
        except DataError:
            raise
        except Exception as exc:  # datasets and pyarrow raise many kinds: each one is a read that failed
            raise DataError(f"cannot read prompts from {self.describe()}: {exc}") from exc

    def describe(self) -> str:
        """The source in words, for errors."""
        if self.hub:
            return f"the Hugging Face Hub dataset {self} (is the Hub reachable, and the id right?)"
        if self.kind in ("saved", "folder"):
            return f"the dataset folder {self}"
        return f"the {self.kind} file {self}"

    def _saved(self) -> Any:
        datasets = _require("datasets", self)
        loaded = datasets.load_from_disk(str(self.path))
        if isinstance(loaded, datasets.DatasetDict):
            if self.split not in loaded:
                raise DataError(f"{self.location} has no split {self.split!r}; it has {sorted(loaded)} (data.split)")
            loaded = loaded[self.split]
        return loaded

    def _streamed(self) -> Any:
        datasets = _require("datasets", self)
        location = self.location if self.hub else str(self.path)
        return datasets.load_dataset(location, self.subset, split=self.split, streaming=True)


def _require(module: str, source: PromptSource) -> Any:
    """Import ``module`` (datasets or pyarrow), or say how to install it."""
    import importlib

    try:
        loaded = importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"reading {source} needs the datasets extra: pip install 'tessy[datasets]' "
            "(or give the prompts as a JSONL file)"
        ) from None
    if module == "datasets":
        loaded.disable_progress_bars()
    return loaded


def _jsonable(value: Any) -> Any:
    """A dataset row as plain JSON values (dates as ISO text, anything else unknown as text)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot read the input {path}: {exc}") from exc
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, ValueError(f"not valid UTF-8 (byte {exc.start})"), line
                continue
            try:
                yield line_no, json.loads(line), line
            except json.JSONDecodeError as exc:
                yield line_no, ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})"), line


def prompt_id(messages: list[Message]) -> str:
    """A stable id for a prompt: the hash of its canonical JSON."""
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _messages(value: Any, field: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"'{field}' is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{field}' must be a string or a non-empty list of chat messages")
    out: list[Message] = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in _ROLES:
            raise ValueError(
                f"'{field}[{i}]' must be an object with 'role' (system, user or assistant) and string 'content'"
            )
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ValueError(f"the last message of '{field}' must be the user's, got {out[-1]['role']!r}")
    return out


def parse_prompt(obj: Any, *, prompt_field: str | None = None, id_field: str = "id") -> Sample:
    """Turn one decoded input object into a :class:`Sample` (``ValueError`` says why it cannot)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if prompt_field is not None:
        field = prompt_field
    elif "messages" in obj:
        field = "messages"
    elif "prompt" in obj:
        field = "prompt"
    else:
        raise ValueError("no 'prompt' or 'messages' field (name another one with data.prompt_field)")
    if field not in obj:
        raise ValueError(f"no {field!r} field")
    messages = _messages(obj[field], field)
    raw_id = obj.get(id_field)
    if raw_id is None:
        sample_id = prompt_id(messages)
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id).strip():
        sample_id = str(raw_id)
    else:
        raise ValueError(f"'{id_field}' must be a non-empty string or an integer")
    fields = {k: v for k, v in obj.items() if k not in (field, id_field)}
    return Sample(id=sample_id, messages=messages, fields=fields)


def read_prompts(
    source: PromptSource | Path | str,
    *,
    prompt_field: str | None = None,
    id_field: str = "id",
    strict: bool = False,
) -> Iterator[Sample | BadLine]:
    """Samples from a :class:`PromptSource` (or a file's path), lazily; malformed lines or rows
    come as :class:`BadLine` (or raise :class:`DataError` if strict)."""
    source = PromptSource.of(source)
    source.check()
    label, unit = str(source), "line" if source.kind == "jsonl" else "row"
    for number, obj, raw in source.rows():
        try:
            if isinstance(obj, ValueError):
                raise obj
            yield parse_prompt(obj, prompt_field=prompt_field, id_field=id_field)
        except ValueError as exc:
            if raw is None:
                raw = json.dumps(obj, ensure_ascii=False)
            bad = BadLine(label, number, str(exc), raw, unit)
            if strict:
                raise DataError(f"{bad} (data.strict is on; turn it off to record such lines and go on)") from None
            logger.error("skipping malformed input %s", bad)
            yield bad


def sidecar_paths(output: Path) -> tuple[Path, Path]:
    """The failure file and the config file that go with an output file."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.failed.jsonl"), output.with_name(f"{stem}.config.json")


class OutputStore:
    """Append-only output with resume. Open it with :meth:`open`; close it when done."""

    def __init__(self, output: Path, *, config_hash: str, fsync: bool = False) -> None:
        self.output = output
        self.failed_path, self.config_path = sidecar_paths(output)
        self.config_hash = config_hash
        self.fsync = fsync
        #: Ids already in the output (finished) and in the failure file.
        self.done_ids: set[str] = set()
        self.failed_ids: set[str] = set()
        # Each file is made by its first line: a run without failures leaves no failure file.
        self._records = JsonlWriter(output, fsync=fsync, create=False)
        self._failures = JsonlWriter(self.failed_path, fsync=fsync, create=False)

    @classmethod
    def open(
        cls,
        output: Path,
        *,
        config: dict[str, Any],
        config_hash: str,
        allow_config_change: bool = False,
        fsync: bool = False,
    ) -> OutputStore:
        if output.is_dir():
            raise DataError(f"the output {output} is a folder; give a file name")
        output.parent.mkdir(parents=True, exist_ok=True)
        store = cls(output, config_hash=config_hash, fsync=fsync)
        store.done_ids, hashes = scan_ids(output)
        store.failed_ids, failed_hashes = scan_ids(store.failed_path)
        # The records themselves say which config made them; an output with none mixes nothing.
        others = (hashes | failed_hashes) - {config_hash}
        if others and not allow_config_change:
            raise DataError(
                f"{output} holds records made with another config (hash {', '.join(sorted(others))}; "
                f"this run is {config_hash}). Write to a new output, or set "
                "data.allow_config_change=true to append anyway."
            )
        store._write_config(config)
        return store

    def _write_config(self, config: dict[str, Any]) -> None:
        text = json.dumps({"config_hash": self.config_hash, "config": config}, indent=2, default=str)
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, self.config_path)

    def write(self, result: SampleResult, mode: Mode | str) -> None:
        """Append a finished sample to the output, or a failed one to the failure file."""
        if result.ok:
            self._records.write(Record.from_result(result, self.config_hash, mode).to_json())
        else:
            self._failures.write(FailureRecord.from_result(result, self.config_hash, mode).to_json())

    def write_bad_line(self, bad: BadLine) -> None:
        self._failures.write(FailureRecord.bad_input(bad.key, bad.error, bad.raw, self.config_hash).to_json())

    def close(self) -> None:
        self._records.close()
        self._failures.close()

    def __enter__(self) -> OutputStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
