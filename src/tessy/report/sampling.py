"""What a report keeps of a large run: exact tallies of whole numbers, and a bounded sample of
records that every run of a report draws alike.

The sample is a bottom-k sketch over a seeded hash of the sample id: a run keeps the records
whose ids hash lowest, at most ``size`` of them. The same id hashes the same in every run, so
an id that several runs hold is kept in all of them exactly when it hashes below the lowest of
their thresholds: the ids kept by every run are a uniform random sample of the ids they share,
drawn in one pass per run with no knowledge of the others. A run of at most ``size`` records is
kept whole.
"""

from __future__ import annotations

import hashlib
import heapq
import statistics
from collections import Counter
from dataclasses import dataclass

from ..records import Record

__all__ = ["SAMPLE_SIZE", "Distribution", "IdSample", "Tally", "id_priority"]

#: Records a report keeps of each run (for similarity, PCA, NLL and the viewer).
SAMPLE_SIZE = 2000


def id_priority(sample_id: str, seed: int = 0) -> int:
    """A sample id's place in the seeded random order that every run of a report shares."""
    data = f"{seed}\0{sample_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class IdSample:
    """At most ``size`` records of a run: those whose ids come first in the seeded order."""

    def __init__(self, size: int = SAMPLE_SIZE, seed: int = 0) -> None:
        if size < 0:
            raise ValueError("a sample size cannot be negative")
        self.size = size
        self.seed = seed
        self.offered = 0
        # A max-heap on priority (negated): its top is the kept record to drop first.
        self._heap: list[tuple[int, int, Record]] = []

    def offer(self, record: Record) -> None:
        """Consider the next record of the run (in file order)."""
        entry = (-id_priority(record.id, self.seed), self.offered, record)
        self.offered += 1
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
        elif self._heap and entry[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def __len__(self) -> int:
        return len(self._heap)

    def records(self) -> list[Record]:
        """The kept records, in file order."""
        return [record for _, _, record in sorted(self._heap, key=lambda e: e[1])]


@dataclass(frozen=True)
class Distribution:
    """Summary of a list of numbers."""

    mean: float
    median: float
    p90: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Distribution:
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0)
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        return cls(statistics.fmean(ordered), statistics.median(ordered), p90, ordered[-1])


class Tally:
    """Whole numbers (token counts, switches, requests) counted by value.

    It holds one entry per distinct value, so it is bounded by the largest value (the longest
    response), not by how many values it saw; and it keeps everything a histogram and
    :class:`Distribution` need, exactly: ``distribution()`` equals ``Distribution.of`` of the
    values themselves.
    """

    __slots__ = ("counts", "n")

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.n = 0

    def add(self, value: int) -> None:
        self.counts[value] += 1
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def distribution(self) -> Distribution:
        if not self.n:
            return Distribution(0.0, 0.0, 0.0, 0.0)
        ordered = sorted(self.counts.items())

        def nth(k: int) -> float:
            """The ``k``-th value (from 0) of the values in order."""
            seen = 0
            for value, count in ordered:
                seen += count
                if k < seen:
                    return float(value)
            raise IndexError(k)

        n = self.n
        # Integer sums are exact: the mean is the correctly rounded quotient, as fmean's is.
        mean = sum(v * c for v, c in ordered) / n
        median = nth(n // 2) if n % 2 else (nth(n // 2 - 1) + nth(n // 2)) / 2
        return Distribution(mean, median, nth(min(n - 1, int(0.9 * n))), float(ordered[-1][0]))
