"""Which samples a shard of a run owns, and where a shard writes.

A run split over N shards (worker processes on one machine, actors on a Ray cluster) gives each
input to shard ``shard_of(key, N)``: a stable hash of the sample's id (or, for an input line that
is no sample, of its ``file:line`` key). The hash is blake2b, not Python's ``hash()``, which is
salted per process: every process, on every machine and in every rerun, agrees on who owns what.

Shard K of an output ``OUT.jsonl`` writes ``OUT.shard-K.jsonl`` with the sidecars any output
has (``OUT.shard-K.failed.jsonl``, ``.config.json``, ``.summary.json``, ``.lock``); the run
that coordinates the shards merges those files into ``OUT.jsonl`` (see :mod:`tessy.sharded`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .prompts import BadLine
from .records import Sample

__all__ = ["Shard", "shard_of", "shard_output", "shard_outputs"]


def shard_of(key: str, count: int) -> int:
    """The shard (``0 <= shard < count``) that owns the sample or input line ``key``."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def _stem(output: Path) -> str:
    return output.name[: -len(output.suffix)] if output.suffix else output.name


def shard_output(output: Path, index: int) -> Path:
    """Where shard ``index`` of a run on ``output`` writes its records: ``OUT.shard-K.jsonl``."""
    return output.with_name(f"{_stem(output)}.shard-{index}{output.suffix}")


def shard_outputs(output: Path) -> dict[int, Path]:
    """The shard record files that lie beside ``output`` now, by shard index (any shard count)."""
    pattern = re.compile(rf"{re.escape(_stem(output))}\.shard-(\d+){re.escape(output.suffix)}")
    found = {}
    if output.parent.is_dir():
        for path in output.parent.iterdir():
            match = pattern.fullmatch(path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the part of the inputs one process runs.

    ``done`` and ``failed`` are the ids (of this shard) that the merged output already holds:
    the shard skips them as it skips those of its own file.
    """

    index: int
    count: int
    done: frozenset[str] = frozenset()
    failed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count} does not exist")

    def owns(self, item: Sample | BadLine) -> bool:
        """Whether this shard runs (or, for a malformed input, records) ``item``."""
        return shard_of(item.id if isinstance(item, Sample) else item.key, self.count) == self.index

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"
