"""The one JSONL stack of tessy: append-only writing that never tears a line, torn-tail repair,
lazy reading that skips (and counts) damaged lines, and the fast id scan a resume needs.

Every object is written as a whole line with one ``write`` (a short write is finished, never
left), so a file is valid JSONL after every line. Only a crash at the wrong moment (power loss,
a full disk) can leave a torn *last* line: :func:`repair_tail` cuts it off, and every writer
does so when it opens a file. A damaged line elsewhere is never cut (the lines after it are
good); readers skip it with a ``file:line`` warning.

Lines are read as strict UTF-8 everywhere (tessy writes nothing else): a line with bytes that
are no UTF-8, or that is not one whole JSON object, is damaged, for readers and the resume scan
alike (they agree on which lines hold an object, so a damaged line is never taken as done).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .errors import DataError

__all__ = [
    "JsonlWriter",
    "encode_line",
    "iter_jsonl",
    "read_jsonl",
    "repair_tail",
    "scan_ids",
    "skip_line",
    "tail_jsonl",
    "write_atomic",
]

logger = logging.getLogger(__name__)

#: How far back :func:`repair_tail` reads at a time, looking for the start of the last line.
_BLOCK = 1 << 16


def encode_line(obj: Any) -> bytes:
    """``obj`` as one line of UTF-8 JSON, newline included."""
    try:
        return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # Text with lone surrogates (valid in JSON input as "\ud800") cannot be UTF-8:
        # write this line with ASCII escapes, which any JSON reader turns back.
        return (json.dumps(obj, ensure_ascii=True) + "\n").encode("ascii")


def _decode(raw: bytes) -> Any:
    """The JSON value of a line, or ``None`` when it is not JSON (or not UTF-8, or nested too
    deep for the parser: a line of 5,000 brackets must not end a run)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def _last_line_start(f: IO[bytes], size: int) -> int:
    """Offset of the last line of a file of ``size`` bytes (its final byte may be its newline)."""
    end = size - 1
    while end > 0:
        begin = max(0, end - _BLOCK)
        f.seek(begin)
        i = f.read(end - begin).rfind(b"\n")
        if i >= 0:
            return begin + i + 1
        end = begin
    return 0


def _torn(line: bytes) -> str | None:
    """Why a last line is torn, or ``None`` when it is whole (a JSON object and its newline, or blank)."""
    if not line.strip():
        return None
    if not line.endswith(b"\n"):
        return "no newline at the end"
    if not isinstance(_decode(line), dict):
        return "not a complete JSON object"
    return None


def repair_tail(path: Path) -> int:
    """Cut off a torn last line (left by a crash mid-write); return how many bytes were cut.

    Only the last line can be torn by an append: a damaged line before good ones is left alone.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with path.open("r+b") as f:
        start = _last_line_start(f, size)
        f.seek(start)
        why = _torn(f.read())
        if why is None:
            return 0
        logger.warning(
            "%s: cutting off a damaged last line (%d bytes, %s) left by an interrupted run",
            path,
            size - start,
            why,
        )
        f.truncate(start)
    return size - start


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a file name such as out.jsonl")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"{path} cannot be made: {parent} is a file, not a folder")
            break


class JsonlWriter:
    """Appends JSON objects to a file, one whole line per ``write``.

    Opening repairs a torn last line first. ``fsync`` makes each line durable before
    :meth:`write` returns. With ``create`` off, the file (and its folder) is made only by the
    first write, so a writer that writes nothing leaves nothing behind.
    """

    def __init__(self, path: Path, *, fsync: bool = False, create: bool = True) -> None:
        _check_file(path)
        self.path = path
        self.fsync = fsync
        self._fd: int | None = None
        self._size = 0  # the file's size after its last whole line (known once open)
        repair_tail(path)
        if create:
            self._open()

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def write(self, obj: Any) -> None:
        """Append ``obj`` as one line. A write that fails (a full disk, a quota, an I/O error)
        takes back what it wrote of the line and raises :class:`DataError`: no torn line."""
        data = encode_line(obj)
        try:
            fd = self._open()
        except OSError as exc:
            raise DataError(f"cannot write to {self.path}: {exc.strerror or exc}") from None
        written = 0
        try:
            while written < len(data):  # a short write (signals, a nearly full disk) must not tear a line
                written += os.write(fd, data[written:])
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            self._take_back(fd)
            raise DataError(
                f"cannot write to {self.path}: {exc.strerror or exc}; the records written so far are kept, "
                "run the same command again to resume once there is room"
            ) from None
        self._size += len(data)

    def _take_back(self, fd: int) -> None:
        """Cut the file back to its last whole line, after a line that could not be finished.
        The size is this writer's own count: one run appends to an output at a time (see
        :class:`tessy.data.OutputStore`), and a failed ``write`` may have written part of its
        bytes without saying how many."""
        try:
            if os.fstat(fd).st_size > self._size:
                os.ftruncate(fd, self._size)
        except OSError:
            logger.warning("%s: could not cut off a partly written line; the next run will", self.path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def skip_line(path: Path, line_no: int, why: str, damaged: list[int] | None) -> None:
    """Log a line that is skipped as damaged and add it to ``damaged`` (when given)."""
    logger.warning("%s:%d: skipped a damaged line (%s)", path, line_no, why)
    if damaged is not None:
        damaged.append(line_no)


def iter_jsonl(
    path: Path, *, missing_ok: bool = False, damaged: list[int] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every JSON object of a file, lazily.

    Blank lines are passed over; other lines that hold no JSON object (torn, not JSON, not an
    object) are skipped with a warning and their numbers added to ``damaged``. A missing file is
    a :class:`DataError` unless ``missing_ok`` (then it holds nothing).
    """
    _check_file(path)
    if not path.exists():
        if missing_ok:
            return
        raise DataError(f"{path} does not exist; give a JSONL file")
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            obj = _decode(raw)
            if isinstance(obj, dict):
                yield line_no, obj
            else:
                skip_line(path, line_no, "not JSON" if obj is None else "not a JSON object", damaged)


def read_jsonl(path: Path, *, missing_ok: bool = False, damaged: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of a file, lazily (see :func:`iter_jsonl`)."""
    for _, obj in iter_jsonl(path, missing_ok=missing_ok, damaged=damaged):
        yield obj


def tail_jsonl(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of the whole lines a file has gained past byte ``offset``, and the offset
    to read on from: a line still being written (no newline yet) is left for the next call.

    For following a file that another process appends to. A whole line that holds no JSON
    object is skipped with a warning; a file that does not exist yet holds nothing.
    """
    try:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1
    objs: list[dict[str, Any]] = []
    for raw in chunk[:end].splitlines():
        if not raw.strip():
            continue
        obj = _decode(raw)
        if isinstance(obj, dict):
            objs.append(obj)
        else:
            logger.warning("%s: skipped a damaged line past byte %d", path, offset)
    return objs, offset + end


def _id_and_hash(raw: bytes) -> tuple[str, str] | None:
    """``(id, config_hash)`` of a line, or ``None`` if it is not a whole JSON object with an id.

    The whole line is decoded, not just its id and hash read: a line damaged in its middle must
    run again, not count as done. (C's JSON decoder reads a few hundred MB a second, a small
    part of a resume next to the run itself.)"""
    obj = _decode(raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), (str, int)) or isinstance(obj["id"], bool):
        return None
    return str(obj["id"]), str(obj.get("config_hash", ""))


def scan_ids(path: Path) -> tuple[set[str], set[str]]:
    """The ids and config hashes of the objects in a file, after cutting off a torn last line.

    A damaged line elsewhere is left as it is, with a warning: its id is not known, so whatever
    it was will run again, and the good lines after it are kept.
    """
    ids: set[str] = set()
    hashes: set[str] = set()
    _check_file(path)
    if not path.exists():
        return ids, hashes
    repair_tail(path)
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            found = _id_and_hash(raw)
            if found is None:
                logger.warning(
                    "%s: line %d is damaged; it is left as it is and its sample will run again", path, line_no
                )
                continue
            ids.add(found[0])
            hashes.add(found[1])
    return ids, hashes


def write_atomic(path: Path, rows: Iterable[Any]) -> int:
    """Write a whole JSONL file at once (a temporary file, then a rename); return the line count.

    Readers see the old file or the new one, never a part.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("wb") as f:
        for row in rows:
            f.write(encode_line(row))
            n += 1
    os.replace(tmp, path)
    return n
