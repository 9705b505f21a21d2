"""The Parquet and ``datasets`` exports' schema, written out rather than inferred, so that every
run's export has the same column types whatever its records hold (a run in which no guard fired
has ``stats.guards`` as a list of strings, like one in which guards fired), and exports of
different runs load together: ``load_dataset("parquet", data_files=[a, b])``.

Columns: ``id``, ``messages`` (``role``, ``content``, and the reasoning field when one is asked
for), ``spans``, ``stats``, ``mode``, ``config_hash``, ``verification`` (null where the run was
not verified), ``prompt_id``, ``seed`` and ``kept`` (null but with several samples per prompt
or rejection sampling), ``fields`` (every input field, as one JSON object's text) and one column per
input field. An input field's column is always text: a text value as it is, null as null, any
other value (a number, a list, an object) as its JSON text. An input field's type may differ
between runs (``answer: 42`` in one, ``answer: "42"`` in the other) and between records of a run;
a text column holds both, so exports of any two runs agree on its type; read the exact value
from ``fields`` (or ``json.loads`` the column) where the type matters. Which input fields get
columns: every field of the run's records, or the list given (runs with different input fields
load together when each is exported with the same list).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError
from ..records import Record
from .rows import full_row, input_column

__all__ = ["record_schema", "write_parquet"]

#: Rows written to Parquet at a time (memory is bounded by a batch, not by the run).
BATCH = 512

_STATS_INTS = (
    "teacher_tokens",
    "student_tokens",
    "switches",
    "requests",
    "failed_requests",
    "retried_requests",
    "discarded_tokens",
    "prefix_misses",
    "think_tokens",
    "answer_tokens",
    "glued_handoffs",
    "reported_prompt_tokens",
    "cached_prompt_tokens",
)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # the submodule is used through the package
    except ImportError as exc:
        raise MissingDependencyError("pyarrow", "datasets", "The Parquet export") from exc
    return pyarrow


def record_schema(input_fields: Sequence[str], reasoning_field: str | None = None) -> Any:
    """The ``pyarrow.Schema`` of the export's rows (see the module's description)."""
    pa = _pyarrow()
    message = [pa.field("role", pa.string()), pa.field("content", pa.string())]
    if reasoning_field is not None:
        message.append(pa.field(reasoning_field, pa.string()))
    span = pa.struct(
        [
            pa.field("source", pa.string()),
            pa.field("phase", pa.string()),
            pa.field("text", pa.string()),
            pa.field("tokens", pa.int64()),
        ]
    )
    stats = pa.struct(
        [pa.field(name, pa.int64()) for name in _STATS_INTS]
        + [
            pa.field("teacher_share", pa.float64()),
            pa.field("guards", pa.list_(pa.string())),
            pa.field("wall_s", pa.float64()),
        ]
    )
    verification = pa.struct(
        [
            pa.field("kind", pa.string()),
            pa.field("passed", pa.bool_()),
            pa.field("score", pa.float64()),
            pa.field("detail", pa.string()),
        ]
    )
    columns = [
        pa.field("id", pa.string()),
        pa.field("messages", pa.list_(pa.struct(message))),
        pa.field("spans", pa.list_(span)),
        pa.field("stats", stats),
        pa.field("mode", pa.string()),
        pa.field("config_hash", pa.string()),
        pa.field("verification", verification),
        pa.field("prompt_id", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("kept", pa.bool_()),
        pa.field("fields", pa.string()),
    ]
    columns += [pa.field(input_column(name), pa.string()) for name in input_fields]
    return pa.schema(columns)


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def write_parquet(
    records: Iterable[Record], out: Path, input_fields: Sequence[str], reasoning_field: str | None = None
) -> int:
    """Write ``records`` to the Parquet file ``out`` with :func:`record_schema`, a batch at a
    time; returns the number of rows. The file appears whole or not at all."""
    pa = _pyarrow()
    schema = record_schema(input_fields, reasoning_field)
    fields = list(input_fields)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    try:
        with pa.parquet.ParquetWriter(str(tmp), schema) as writer:
            for batch in _batches(full_row(r, fields, reasoning_field) for r in records):
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                n += len(batch)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def records_table(records: Iterable[Record], input_fields: Sequence[str], reasoning_field: str | None = None) -> Any:
    """The records as one ``pyarrow.Table`` with :func:`record_schema` (in memory)."""
    pa = _pyarrow()
    schema = record_schema(input_fields, reasoning_field)
    return pa.Table.from_pylist([full_row(r, list(input_fields), reasoning_field) for r in records], schema=schema)
