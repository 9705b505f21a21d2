"""Records out, so that no sample is ever lost (prompts come in through :mod:`tessy.prompts`).

Output is append-only JSONL (:mod:`tessy.jsonl`) of the records of :mod:`tessy.records`: every
record is written with one ``write`` of a whole line, so the file is valid JSONL after every
record; a line torn by a crash (possible only on power loss or a full disk) is found and cut off
on the next run. Finished ids are skipped on resume; samples that failed go to a sidecar file
with their reason, and so do malformed input lines, so every input line ends up somewhere.

Files beside ``OUT.jsonl``: ``OUT.failed.jsonl`` (failures) and ``OUT.config.json`` (the
resolved config and its hash).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import DataError
from .jsonl import JsonlWriter, scan_ids
from .prompts import BadLine
from .records import FailureRecord, Mode, Record, SampleResult

__all__ = ["OutputStore", "sidecar_paths"]


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
        self._failures.write(FailureRecord.bad_input(bad.key, bad.error, bad.raw, self.config_hash, bad.kind).to_json())

    def close(self) -> None:
        self._records.close()
        self._failures.close()

    def __enter__(self) -> OutputStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
