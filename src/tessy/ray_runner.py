"""Shards of a run as actors on a Ray cluster (``tessy synth --ray``; needs ``tessy[ray]``).

One actor per shard (one CPU each), each running the async engine of :func:`tessy.sharded.run_shard`
against the servers the config names; the coordinator (the process that starts the run) follows
their files and merges them as :mod:`tessy.sharded` describes. Every node must see the output's
folder at the same path (shared storage: NFS, Lustre...), and have tessy installed.

An actor that dies (its node lost, its process killed) is restarted by Ray, up to
``max_restarts`` times, and its shard is run again there: it resumes from its own file
(``OUT.shard-K.jsonl``), so the samples it had finished are not run twice.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from .errors import MissingDependencyError
from .sharded import ShardJob, run_shard

__all__ = ["RayLauncher", "actor_name"]

logger = logging.getLogger(__name__)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "ray", "Running shards on a Ray cluster") from None
    return ray


def actor_name(shard_file: Path) -> str:
    """The name of the actor that writes ``shard_file`` (``OUT.shard-K.jsonl``), for
    ``ray.get_actor``: the file's name and a digest of its folder."""
    digest = hashlib.blake2b(str(Path(shard_file).resolve().parent).encode(), digest_size=4).hexdigest()
    return f"tessy-{digest}-{shard_file.name}"


class _ShardActor:
    """Runs one shard; a Ray actor (the class is wrapped by ``ray.remote`` when a run starts)."""

    def run(self, job: ShardJob) -> dict[str, Any]:
        return run_shard(job)


class RayLauncher:
    """Starts shards as Ray actors and restarts those that die (a :class:`tessy.sharded.Launcher`).

    ``address`` is passed to ``ray.init`` (``None``: ``RAY_ADDRESS`` or a cluster of this machine
    alone); a Ray already initialised in this process is used as it is.
    """

    def __init__(self, address: str | None = None, *, max_restarts: int = 3) -> None:
        ray = self._ray = _ray()
        self._owned = not ray.is_initialized()
        if self._owned:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        self.max_restarts = max_restarts
        self._actor_class = ray.remote(num_cpus=1, max_restarts=max_restarts, max_task_retries=0)(_ShardActor)
        self._actors: dict[int, Any] = {}
        self._jobs: dict[int, ShardJob] = {}
        self._pending: dict[Any, int] = {}
        #: Times each shard's actor died and its shard was run again.
        self.restarts: dict[int, int] = {}

    def node_count(self) -> int:
        """The nodes of the cluster that are alive."""
        return max(1, sum(1 for node in self._ray.nodes() if node.get("Alive")))

    def start(self, job: ShardJob) -> None:
        index = job.shard.index
        actor = self._actor_class.options(name=actor_name(job.output)).remote()
        self._actors[index], self._jobs[index], self.restarts[index] = actor, job, 0
        self._pending[actor.run.remote(job)] = index

    def wait(self, timeout: float) -> list[tuple[int, str | None]]:
        ray = self._ray
        if not self._pending:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=timeout, fetch_local=False)
        ended: list[tuple[int, str | None]] = []
        for ref in ready:
            index = self._pending.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                if self.restarts[index] < self.max_restarts:
                    self.restarts[index] += 1
                    logger.warning(
                        "the actor of shard %d died (%s); its shard runs again (restart %d of %d) from its file",
                        index,
                        type(exc).__name__,
                        self.restarts[index],
                        self.max_restarts,
                    )
                    self._pending[self._actors[index].run.remote(self._jobs[index])] = index
                    continue
                ended.append((index, f"its actor died {self.restarts[index] + 1} times"))
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if exc.cause is not None else exc
                ended.append((index, f"{type(cause).__name__}: {cause}"))
            else:
                ended.append((index, None))
            self._release(index)
        return ended

    def _release(self, index: int) -> None:
        actor = self._actors.pop(index, None)
        if actor is not None:
            self._ray.kill(actor, no_restart=True)

    def stop(self) -> None:
        for index in list(self._actors):
            self._release(index)
        self._pending.clear()

    def close(self) -> None:
        """Leave the cluster if this launcher joined it."""
        self.stop()
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
