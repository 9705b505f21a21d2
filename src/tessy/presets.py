"""Rows of common benchmark sources as tessy inputs, with their verification fields where the
verifiers look for them (at the top level of each record):

- ``gsm8k`` (``question``, ``answer`` = worked solution ending ``#### 42``): ``prompt`` is the
  question, ``answer`` the number after ``####`` (thousands commas dropped), ``solution`` the
  worked solution.
- ``math`` (MATH / MATH-500: ``problem``, ``solution`` with a ``\\boxed{...}`` answer, an
  ``answer`` field where the source has one): ``prompt`` is the problem, ``answer`` the source's
  answer, else the last ``\\boxed{}`` of the solution; ``unique_id`` is the id where there is one.
- ``humaneval`` (``task_id``, ``prompt`` = a function's signature and docstring, ``test``
  defining ``check(candidate)``, ``entry_point``): ``prompt`` asks for the completed function,
  ``test`` and ``entry_point`` kept; ``task_id`` is the id.
- ``mbpp`` (``task_id``, ``text`` or ``prompt``, ``test_list`` of asserts, ``test_setup_code`` or
  ``test_imports``): ``prompt`` is the task and its tests (MBPP's own prompt), ``test`` a
  ``check(candidate)`` that runs the asserts (they call the function by its name),
  ``entry_point`` that name.
- ``livecodebench`` (``question_id``, ``question_content``, ``starter_code``,
  ``public_test_cases`` and ``private_test_cases``: JSON text, or, in code_generation_lite,
  base64 of zlib of a pickled JSON text (read without running any pickled code), ``metadata``):
  stdin tests as ``inputs`` / ``outputs`` lists; LeetCode-style (functional) tests as a
  ``test`` with ``check(candidate)`` and ``entry_point`` ``Solution().NAME`` (or ``NAME``).

Then ``fields`` renames any input field: ``{record field: source field}``.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PRESETS", "input_mapper", "last_boxed"]

Row = dict[str, Any]


def _text(row: Row, *names: str) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value.strip():
            return value
    raise ValueError(f"no {' or '.join(repr(n) for n in names)} text field")


def _id(row: Row, name: str) -> None:
    """The source's own id as the sample id (``id``), where the row has no ``id``."""
    if "id" not in row and row.get(name) is not None:
        row["id"] = row.pop(name)


def gsm8k(row: Row) -> Row:
    question, solution = _text(row, "question"), _text(row, "answer")
    _, sep, tail = solution.rpartition("####")
    if not sep or not tail.strip():
        raise ValueError("the GSM8K answer has no '#### ANSWER' line")
    row.pop("question")
    row["prompt"] = question
    row["answer"] = tail.strip().replace(",", "")
    row["solution"] = solution
    return row


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text``, braces matched."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def math(row: Row) -> Row:
    problem = _text(row, "problem")
    answer = row.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        answer = last_boxed(row.get("solution") or "")
        if not answer:
            raise ValueError("no 'answer' field and no \\boxed{} answer in the 'solution'")
    row.pop("problem")
    _id(row, "unique_id")
    row["prompt"] = problem
    row["answer"] = answer.strip()
    return row


def humaneval(row: Row) -> Row:
    code = _text(row, "prompt")
    _text(row, "test")
    _text(row, "entry_point")
    _id(row, "task_id")
    row["prompt"] = (
        "Complete the following Python function. Write the whole function, with its imports, "
        f"in one ```python code block.\n\n```python\n{code.rstrip()}\n```"
    )
    return row


_CALLED = re.compile(r"assert\s*(?:not\s+)?\(*\s*(?:math\.isclose\(\s*|set\(\s*)?([A-Za-z_]\w*)\s*\(")
_DEFINED = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def mbpp(row: Row) -> Row:
    task = _text(row, "text", "prompt")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("no 'test_list' of assert statements")
    called = _CALLED.search(tests[0]) or _DEFINED.search(str(row.get("code") or ""))
    if called is None:
        raise ValueError("cannot tell the function's name from the first test or the code")
    imports = row.get("test_imports") or []
    setup = "\n".join([*(i for i in imports if isinstance(i, str)), str(row.get("test_setup_code") or "")]).strip()
    row.pop("text", None)
    _id(row, "task_id")
    row["prompt"] = f"{task}\nYour code should pass these tests:\n\n" + "\n".join(tests)
    row["entry_point"] = called.group(1)
    body = "".join(f"    {t.strip()}\n" for t in tests)
    row["test"] = (setup + "\n\n" if setup else "") + f"def check(candidate):\n{body}"
    return row


class _TextOnly(pickle.Unpickler):
    """Reads pickles of plain values only: any class or function in the data is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from test cases")


def _cases(value: Any) -> list[Row]:
    """LiveCodeBench test cases: a list, its JSON text, or (code_generation_lite's private
    tests) base64 of zlib of a pickled JSON text."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            try:
                raw = zlib.decompress(base64.b64decode(value))
                value = json.loads(_TextOnly(io.BytesIO(raw)).load())
            except Exception as exc:  # base64, zlib, pickle and JSON each raise their own kinds
                raise ValueError(f"cannot read the test cases ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, list) or not all(isinstance(c, dict) and "input" in c and "output" in c for c in value):
        raise ValueError("the test cases are not a list of {input, output} objects")
    return value


def livecodebench(row: Row) -> Row:
    content = _text(row, "question_content")
    cases = _cases(row.pop("public_test_cases", None)) + _cases(row.pop("private_test_cases", None))
    if not cases:
        raise ValueError("no test cases")
    starter = str(row.get("starter_code") or "")
    _id(row, "question_id")
    functional = any(c.get("testtype") == "functional" for c in cases)
    if functional:
        meta = row.get("metadata")
        meta = json.loads(meta) if isinstance(meta, str) and meta else meta or {}
        name = meta.get("func_name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError("functional tests without 'metadata.func_name'")
        asserts = "".join(
            f"    assert candidate(*[json.loads(a) for a in {c['input']!r}.splitlines()]) == json.loads({c['output']!r})\n"
            for c in cases
        )
        row["test"] = f"import json\n\n\ndef check(candidate):\n{asserts}"
        row["entry_point"] = f"Solution().{name}" if "class Solution" in starter else name
        how = f"Complete this code and answer with it whole in one ```python code block:\n\n```python\n{starter.rstrip()}\n```"
    else:
        row["inputs"] = [str(c["input"]) for c in cases]
        row["outputs"] = [str(c["output"]) for c in cases]
        how = "Read the input from standard input and write the answer to standard output; answer with the program in one ```python code block."
    row["prompt"] = f"{content.rstrip()}\n\n{how}"
    return row


#: The presets by name.
PRESETS: dict[str, Callable[[Row], Row]] = {
    "gsm8k": gsm8k,
    "math": math,
    "humaneval": humaneval,
    "mbpp": mbpp,
    "livecodebench": livecodebench,
}


def input_mapper(preset: str | None = None, fields: Mapping[str, str] | None = None) -> Callable[[Any], Any] | None:
    """A function that turns a source's row into a tessy input (``ValueError`` says why it
    cannot), or ``None`` when there is nothing to do. ``fields`` renames after the preset:
    ``{record field: source field}``."""
    if preset is None and not fields:
        return None
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown data preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    convert = PRESETS[preset] if preset is not None else None
    renames = dict(fields or {})

    def mapped(obj: Any) -> Any:
        if not isinstance(obj, dict):
            return obj
        row = dict(obj)
        if convert is not None:
            row = convert(row)
        for target, source in renames.items():
            if source not in row:
                raise ValueError(f"no {source!r} field (data.fields maps it to {target!r})")
            row[target] = row.pop(source)
        return row

    return mapped
