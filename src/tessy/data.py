"""Records out, so that no sample is ever lost (prompts come in through :mod:`tessy.prompts`).

Output is append-only JSONL (:mod:`tessy.jsonl`) of the records of :mod:`tessy.records`: every
record is written with one ``write`` of a whole line, so the file is valid JSONL after every
record; a line torn by a crash (possible only on power loss or a full disk) is found and cut off
on the next run. Finished ids are skipped on resume; samples that failed go to a sidecar file
with their reason, and so do malformed input lines, so every input line ends up somewhere.

Files beside ``OUT.jsonl``: ``OUT.failed.jsonl`` (failures), ``OUT.config.json`` (the
resolved config and its hash), ``OUT.summary.json`` (the run's summary, written at its end) and
``OUT.lock``: one run writes to an output at a time. The lock is an ``flock`` on that file, held
while the store is open; the kernel releases it when the process ends, however it ends, so a
crashed run never leaves a stale lock (the file itself stays, empty of meaning).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

from .errors import DataError
from .jsonl import JsonlWriter, scan_ids
from .prompts import BadLine
from .records import FailureRecord, Mode, Record, SampleResult

try:
    import fcntl
except ImportError:  # Windows: no flock; runs on one output are not guarded there
    fcntl = None  # type: ignore[assignment]

__all__ = ["OutputStore", "lock_path", "sidecar_paths", "summary_path"]


def _stem(output: Path) -> str:
    return output.name[: -len(output.suffix)] if output.suffix else output.name


def sidecar_paths(output: Path) -> tuple[Path, Path]:
    """The failure file and the config file that go with an output file."""
    stem = _stem(output)
    return output.with_name(f"{stem}.failed.jsonl"), output.with_name(f"{stem}.config.json")


def summary_path(output: Path) -> Path:
    """Where a run's summary goes: ``OUT.summary.json`` beside ``OUT.jsonl``."""
    return output.with_name(f"{_stem(output)}.summary.json")


def lock_path(output: Path) -> Path:
    """The lock file that keeps a second run off an output: ``OUT.lock``."""
    return output.with_name(f"{_stem(output)}.lock")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _Lock:
    """An exclusive, non-blocking ``flock`` on ``OUT.lock``; released by :meth:`release` or by
    the process's end (a crash, a kill)."""

    def __init__(self, path: Path, output: Path) -> None:
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataError(
                f"cannot write in the folder {path.parent} ({_why(exc)}); give an output elsewhere"
            ) from None
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._fd, 64, 0).decode("ascii", errors="replace").strip()
            self.release()
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise DataError(f"cannot lock {path} ({_why(exc)})") from None
            raise DataError(
                f"another tessy run{f' (process {holder})' if holder else ''} is writing to {output}; "
                "wait for it to end, or give another output"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _check_writable(path: Path) -> None:
    """Raise :class:`DataError` now, before any sample runs, if an existing file cannot be
    appended to (a read-only output would otherwise fail at its first record)."""
    if not path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        raise DataError(f"cannot write to {path} ({_why(exc)}); make it writable or give another output") from None


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
        self._lock: _Lock | None = None

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
        for parent in output.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise DataError(f"the output {output} cannot be made: {parent} is a file, not a folder")
                break
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot make the folder {output.parent} ({_why(exc)})") from None
        # Locked first: a second run must not so much as repair the first one's last line.
        lock = _Lock(lock_path(output), output)
        try:
            store = cls(output, config_hash=config_hash, fsync=fsync)
            store._lock = lock
            for path in (output, store.failed_path):
                _check_writable(path)
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
        except BaseException:
            lock.release()
            raise
        return store

    def _write_config(self, config: dict[str, Any]) -> None:
        text = json.dumps({"config_hash": self.config_hash, "config": config}, indent=2, default=str)
        _write_text_atomic(self.config_path, text + "\n")

    def write_summary(self, summary: dict[str, Any]) -> Path:
        """Write the run's summary as ``OUT.summary.json``, atomically (a reader sees the last
        whole summary, never a part); return its path."""
        path = summary_path(self.output)
        _write_text_atomic(path, json.dumps(summary, indent=2, default=str, allow_nan=False) + "\n")
        return path

    def write_record(self, record: Record | FailureRecord) -> None:
        """Append a finished sample's record to the output, or a failure to the failure file."""
        if isinstance(record, Record):
            self._records.write(record.to_json())
        else:
            self._failures.write(record.to_json())

    def write(self, result: SampleResult, mode: Mode | str) -> None:
        """Append an engine result: to the output if it finished, else to the failure file."""
        if result.ok:
            self.write_record(Record.from_result(result, self.config_hash, mode))
        else:
            self.write_record(FailureRecord.from_result(result, self.config_hash, mode))

    def write_bad_line(self, bad: BadLine) -> None:
        self.write_record(FailureRecord.bad_input(bad.key, bad.error, bad.raw, self.config_hash, bad.kind))

    def close(self) -> None:
        self._records.close()
        self._failures.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> OutputStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path} ({_why(exc)})") from None
