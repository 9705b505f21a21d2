"""A record as the rows of each export format: its messages, with the thinking either inside
the assistant's content (as stored) or as its own field of the assistant message."""

from __future__ import annotations

import json
from typing import Any

from ..errors import DataError
from ..records import Record

__all__ = [
    "REASONING_FIELDS",
    "RECORD_COLUMNS",
    "full_row",
    "input_column",
    "input_text",
    "messages",
    "prompt_completion",
    "sharegpt",
    "trl",
]

#: The reasoning fields chat templates read: vLLM's and Qwen3's, and the gpt-oss template's.
REASONING_FIELDS = ("reasoning_content", "thinking")

_SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}


def _split(record: Record) -> tuple[str, str]:
    """The thinking and the answer of a record: from its spans, which say which text is which."""
    if record.spans:
        return record.thinking, record.answer
    response = record.response or ""
    head, sep, tail = response.partition("</think>")
    if sep and head.lstrip().startswith("<think>"):  # an older record without spans, think tags
        return head.lstrip()[len("<think>") :].strip("\n"), tail.lstrip("\n")
    raise DataError(
        f"record {record.id} has no spans, so its thinking cannot be told from its answer; "
        "export it without a reasoning field"
    )


def messages(record: Record, reasoning_field: str | None = None) -> list[dict[str, Any]]:
    """The record's messages. With ``reasoning_field``, the assistant message's ``content`` holds
    only the answer and the thinking goes under that name (``reasoning_content``, ``thinking``)."""
    out: list[dict[str, Any]] = [{"role": m["role"], "content": m["content"]} for m in record.messages]
    if reasoning_field is not None and record.response is not None:
        thinking, answer = _split(record)
        out[-1] = {"role": "assistant", "content": answer, reasoning_field: thinking}
    return out


def trl(record: Record, reasoning_field: str | None = None) -> dict[str, Any]:
    """TRL's conversational language-modelling row."""
    return {"messages": messages(record, reasoning_field)}


def prompt_completion(record: Record, reasoning_field: str | None = None) -> dict[str, Any]:
    """TRL's conversational prompt-completion row (the loss falls on the completion)."""
    msgs = messages(record, reasoning_field)
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def sharegpt(record: Record) -> dict[str, Any] | None:
    """LLaMA-Factory's sharegpt row, or ``None`` when the turns do not alternate human, gpt, ...
    (its turns have no reasoning field: the thinking stays in the gpt turn, as stored)."""
    msgs = messages(record)
    system = "\n\n".join(m["content"] for m in msgs if m["role"] == "system")
    turns = [m for m in msgs if m["role"] != "system"]
    expected = ["user", "assistant"] * (len(turns) // 2)
    if [m["role"] for m in turns] != expected:
        return None
    row: dict[str, Any] = {
        "conversations": [{"from": _SHAREGPT_ROLES[m["role"]], "value": m["content"]} for m in turns],
        "system": system,
    }
    return row


def input_text(value: Any) -> str | None:
    """An input field as its Parquet column holds it: text as it is, ``None`` as null, anything
    else (numbers, lists, objects) as its JSON text, so that the column is text in every run."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def full_row(record: Record, input_fields: list[str], reasoning_field: str | None = None) -> dict[str, Any]:
    """Every field of a record, for the Parquet and ``datasets`` exports (see :mod:`.table`)."""
    msgs = messages(record, reasoning_field)
    if reasoning_field is not None:
        for m in msgs:
            m.setdefault(reasoning_field, None)
    v = record.verification
    row: dict[str, Any] = {
        "id": record.id,
        "messages": msgs,
        "spans": [s.to_json() for s in record.spans],
        "stats": record.stats.to_json(),
        "mode": record.mode,
        "config_hash": record.config_hash,
        "verification": None if v is None else v.to_json(),
        "prompt_id": record.prompt_id,
        "seed": record.seed,
        "kept": record.kept,
        "fields": json.dumps(record.fields, ensure_ascii=False, sort_keys=True),
    }
    for name in input_fields:
        row[input_column(name)] = input_text(record.fields.get(name))
    return row


#: The columns of a record itself; an input field of one of these names is ``input.NAME``.
RECORD_COLUMNS = (
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
)


def input_column(name: str) -> str:
    """The column of input field ``name``: its own name, unless a record column has it."""
    return f"input.{name}" if name in RECORD_COLUMNS or name.startswith("input.") else name
