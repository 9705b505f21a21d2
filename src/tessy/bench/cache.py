"""A KV-block pool with automatic prefix caching, as vLLM keeps one.

Memory is counted in blocks of ``block_size`` tokens. A *full* block whose tokens have been
computed is registered under a hash chained from the block before it, so any later prompt that
starts with the same tokens finds it. Blocks of finished requests stay cached, free for reuse,
until the pool runs short: then the least recently used free block is evicted. A partial last
block is never cached, which is why each round of an interleaved loop recomputes its tail.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["BlockPool", "block_hashes"]


def block_hashes(tokens: Sequence[int], block_size: int, n_blocks: int, start: int = 0, parent: int = 0) -> list[int]:
    """Chained hashes of blocks ``start .. n_blocks - 1`` of ``tokens`` (``parent``: the hash before ``start``)."""
    out: list[int] = []
    h = parent
    for b in range(start, n_blocks):
        h = hash((h, tuple(tokens[b * block_size : (b + 1) * block_size])))
        out.append(h)
    return out


class BlockPool:
    """Cached blocks by hash with reference counts, free ones in LRU order, and private blocks
    (partial, or not yet computed) that belong to one request."""

    def __init__(self, capacity: int, block_size: int = 16) -> None:
        if capacity < 1 or block_size < 1:
            raise ValueError("capacity and block_size must be positive")
        self.capacity = capacity
        self.block_size = block_size
        self._refs: dict[int, int] = {}  # cached block hash -> requests using it
        self._free: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody uses, oldest first
        self.private = 0
        self.evicted = 0

    @property
    def used(self) -> int:
        """Blocks that hold KV: cached (used or free) and private."""
        return len(self._refs) + self.private

    @property
    def cached(self) -> int:
        return len(self._refs)

    def lookup(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` are cached (nothing is taken)."""
        n = 0
        for h in hashes:
            if h not in self._refs:
                break
            n += 1
        return n

    def acquire(self, hashes: Sequence[int]) -> None:
        """Take a reference to cached blocks (found by :meth:`lookup`)."""
        for h in hashes:
            if self._refs[h] == 0:
                del self._free[h]
            self._refs[h] += 1

    def allocate(self, n: int) -> bool:
        """Reserve ``n`` private blocks, evicting free cached ones as needed; ``False`` if they do not fit."""
        if n <= 0:
            return True
        short = self.used + n - self.capacity
        if short > len(self._free):
            return False
        for _ in range(max(0, short)):
            h, _ = self._free.popitem(last=False)
            del self._refs[h]
            self.evicted += 1
        self.private += n
        return True

    def register(self, h: int) -> None:
        """A private block is now full and computed: cache it under ``h`` (held by its request)."""
        self.private -= 1
        refs = self._refs.get(h)
        if refs is None:
            self._refs[h] = 1
        else:  # another request computed the same block meanwhile: share it, free ours
            if refs == 0:
                del self._free[h]
            self._refs[h] = refs + 1

    def release(self, hashes: Sequence[int], private: int) -> None:
        """A request is done with its cached blocks (they stay cached, free) and private ones (freed)."""
        for h in hashes:
            refs = self._refs[h] - 1
            self._refs[h] = refs
            if refs == 0:
                self._free[h] = None
        self.private -= private

    def reset(self) -> int:
        """Drop every free cached block (vLLM's ``/reset_prefix_cache``); how many were dropped."""
        n = len(self._free)
        for h in self._free:
            del self._refs[h]
        self._free.clear()
        return n
