"""JSONL files of the predictor pipeline: traces, annotated windows, rejected judge outputs.

Each record is written with one ``write`` of a whole line and flushed, so a file is valid after
every record and a stage killed half-way can be resumed: readers skip (and count) a torn last
line, and stages skip the records they find already written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..errors import DataError

__all__ = ["JsonlWriter", "read_jsonl"]

logger = logging.getLogger(__name__)


def read_jsonl(path: Path, *, missing_ok: bool = False) -> Iterator[dict[str, Any]]:
    """The JSON objects of a file, one a line; undecodable lines are logged and skipped."""
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a JSONL file")
    if not path.exists():
        if missing_ok:
            return
        raise DataError(f"{path} does not exist")
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                logger.warning("%s:%d: skipped an unreadable line (%s)", path, line_no, exc)
                continue
            if isinstance(obj, dict):
                yield obj
            else:
                logger.warning("%s:%d: skipped a line that is not a JSON object", path, line_no)


class JsonlWriter:
    """Appends records to a JSONL file, one flushed line each."""

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            raise DataError(f"{path} is a folder; give a file name such as out.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._repair()
        self._file: IO[bytes] = path.open("ab")

    def _repair(self) -> None:
        """Cut off a torn last line (a crash mid-write) so that appending keeps the file valid."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            f.seek(-1, 2)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)
            logger.warning("%s: removed a torn last line", self.path)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
