"""Prompts in: from files, datasets and Python objects, lazily, one :class:`Sample` at a time.

A JSONL file, a Parquet file, a folder (one saved with ``datasets``' ``save_to_disk``, or data
files that ``datasets.load_dataset`` reads) or a dataset on the Hugging Face Hub, streamed (see
:class:`PromptSource`; all but JSONL need the ``datasets`` package); or, from Python, a list of
prompt strings, of dicts, of :class:`Sample` s, or a ``datasets.Dataset`` (:func:`iter_samples`).
An input that is not a prompt comes out as a :class:`BadLine` with its line or row and why, so
every input ends up somewhere: lines that are not strict JSON (``NaN``, ``Infinity``, nesting
too deep to parse), text that cannot be UTF-8 (lone surrogates), and a second input with an id
seen before (``duplicate_id``: only the first is run, whatever the order of a resume).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .presets import input_mapper
from .records import Message, Sample

__all__ = [
    "BadLine",
    "PromptSource",
    "Prompts",
    "iter_samples",
    "parse_prompt",
    "prompt_id",
    "read_prompts",
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
    #: The failure's kind in the failure file: ``bad_input``, or ``duplicate_id``.
    kind: str = "bad_input"

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
    ``preset`` reads a benchmark source's rows (see :mod:`tessy.presets`: ``gsm8k``, ``math``,
    ``humaneval``, ``mbpp``, ``livecodebench``) and ``fields`` renames input fields after it
    (``(record field, source field)`` pairs).
    """

    location: str
    split: str = "train"
    subset: str | None = None
    hub: bool = False
    preset: str | None = None
    fields: tuple[tuple[str, str], ...] = ()

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
                yield line_no, json.loads(line, parse_constant=_no_constant), line
            except json.JSONDecodeError as exc:
                yield line_no, ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})"), line
            except RecursionError:
                yield line_no, ValueError("not valid JSON (nested too deep to read)"), line
            except ValueError as exc:
                yield line_no, exc, line


def _no_constant(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity``: Python's JSON reader takes them, strict JSON (and
    ``jq``, and every record reader) does not."""
    raise ValueError(f"not strict JSON ({name} is no JSON number; write null or a string)")


def _unwritable(obj: Any) -> str | None:
    """Why ``obj`` cannot be written as strict UTF-8 JSON, naming where (a lone surrogate in a
    text, a non-finite number), or ``None``. Iterative: a deep value must not end the run."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"{where or 'the value'} holds a lone surrogate ({value[exc.start]!r} at {exc.start}), not text"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{where or 'the value'} is {value}, which is no JSON number"
        elif isinstance(value, Mapping):
            for key, item in value.items():
                inner = f"{where}.{key}" if where else f"'{key}'"
                stack.append((f"a key of {where or 'the object'}", key))
                stack.append((inner, item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


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
    problem = _unwritable(obj)
    if problem is not None:
        raise ValueError(f"{problem}; every output line must be strict JSON")
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
    prepare = _mapper(source.preset, dict(source.fields))
    label, unit = str(source), "line" if source.kind == "jsonl" else "row"
    seen = _Seen(unit)
    for number, obj, raw in source.rows():
        try:
            if isinstance(obj, ValueError):
                raise obj
            sample = parse_prompt(prepare(obj) if prepare else obj, prompt_field=prompt_field, id_field=id_field)
        except (ValueError, RecursionError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else "nested too deep to read"
            bad = BadLine(label, number, why, raw if raw is not None else _raw(obj), unit)
        else:
            duplicate = seen.duplicate(sample.id, number)
            if duplicate is None:
                yield sample
                continue
            bad = BadLine(label, number, duplicate, raw if raw is not None else _raw(obj), unit, "duplicate_id")
        if strict:
            raise DataError(f"{bad} (data.strict is on; turn it off to record such lines and go on)") from None
        logger.error("skipping malformed input %s", bad)
        yield bad


def _mapper(preset: str | None, fields: Mapping[str, str] | None) -> Any:
    try:
        return input_mapper(preset, fields)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class _Seen:
    """The ids read so far, each with the line (or row, or item) that first had it."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.first: dict[str, int] = {}

    def duplicate(self, sample_id: str, number: int) -> str | None:
        """Why ``sample_id`` at ``number`` is a duplicate, or ``None`` (then it is remembered)."""
        first = self.first.setdefault(sample_id, number)
        if first == number:
            return None
        return f"duplicate id {sample_id!r}: {self.unit} {first} has it too, and only that one is run"


#: What :func:`iter_samples` takes: a file or folder, a :class:`PromptSource`, or prompts in memory
#: (strings, dicts shaped like input lines, :class:`Sample` s, a ``datasets.Dataset``).
Prompts = str | Path | PromptSource | Iterable[str | Mapping[str, Any] | Sample]


def iter_samples(
    prompts: Prompts,
    *,
    prompt_field: str | None = None,
    id_field: str = "id",
    strict: bool = False,
    preset: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> Iterator[Sample | BadLine]:
    """Samples from any :data:`Prompts`, lazily.

    A ``str`` or :class:`~pathlib.Path` is a file or folder of prompts (read as
    :func:`read_prompts` does); to give one prompt text, give a list: ``["What is 2+2?"]``.
    In an iterable, a string is a user prompt, a mapping is parsed as an input line is (``prompt``
    or ``messages``, ``id``, other fields kept), and a :class:`Sample` passes as it is; anything
    else is a :class:`BadLine` numbered from 1 (or a :class:`DataError` when ``strict``).
    ``preset`` and ``fields`` read a benchmark source's rows (see :class:`PromptSource`); a
    :class:`PromptSource` given brings its own.
    """
    if isinstance(prompts, (str, Path)) and (preset or fields):
        prompts = PromptSource(str(prompts), preset=preset, fields=tuple((fields or {}).items()))
    if isinstance(prompts, (str, Path, PromptSource)):
        yield from read_prompts(prompts, prompt_field=prompt_field, id_field=id_field, strict=strict)
        return
    prepare = _mapper(preset, fields)
    label = f"the given {type(prompts).__name__}"
    seen = _Seen("item")
    for number, item in enumerate(prompts, start=1):
        try:
            if isinstance(item, Sample):
                problem = _unwritable({"id": item.id, "messages": item.messages, "fields": item.fields})
                if problem is not None:
                    raise ValueError(f"{problem}; every output line must be strict JSON")
                sample = item
            else:
                if isinstance(item, str):
                    item = {prompt_field or "prompt": item}
                elif isinstance(item, Mapping):
                    item = _jsonable(dict(item))  # a dataset's row may hold dates, arrays...
                    if prepare is not None:
                        item = prepare(item)
                sample = parse_prompt(item, prompt_field=prompt_field, id_field=id_field)
        except (ValueError, RecursionError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else "nested too deep to read"
            bad = BadLine(label, number, why, _raw(item), "item")
        else:
            duplicate = seen.duplicate(sample.id, number)
            if duplicate is None:
                yield sample
                continue
            bad = BadLine(label, number, duplicate, _raw(item), "item", "duplicate_id")
        if strict:
            raise DataError(f"{bad} (strict is on; turn it off to record such items and go on)") from None
        logger.error("skipping malformed prompt %s", bad)
        yield bad


def _raw(item: Any) -> str:
    """An input as text for the failure file (with ASCII escapes where it holds a lone surrogate)."""
    if isinstance(item, Sample):
        item = {"id": item.id, "messages": item.messages, "fields": item.fields}
    try:
        text = json.dumps(item, ensure_ascii=False, default=str)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(item, default=str)
    except (ValueError, RecursionError):
        return repr(item)
