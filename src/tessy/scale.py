"""The entry point of runs spread over client processes or a Ray cluster:
:func:`synthesize_sharded` (``tessy synth --workers N [--ray [ADDRESS]]``).

How the shards split the work and how their files become one output: :mod:`tessy.sharded`;
the Ray side: :mod:`tessy.ray_runner`.
"""

from __future__ import annotations

from pathlib import Path

from .config import SynthConfig, load_config
from .errors import ConfigError
from .prompts import Prompts
from .sharded import ProcessLauncher, run_sharded
from .synth import ConfigLike, Progress, RunSummary

__all__ = ["synthesize_sharded"]


def synthesize_sharded(
    config: ConfigLike,
    *,
    workers: int | None = None,
    ray: bool | str | None = None,
    prompts: Prompts | None = None,
    output: str | Path | None = None,
    progress: Progress | None = None,
    max_restarts: int = 3,
) -> RunSummary:
    """Run a synthesis as ``workers`` shards, each a client process with its own event loop,
    and return the run's summary; the output is one file, resumed like one process's.

    Without ``ray`` the shards are processes on this machine. With ``ray`` they are actors on a
    Ray cluster (``True``: ``ray.init()``'s default, e.g. ``RAY_ADDRESS``; a string: the
    cluster's address, e.g. ``"auto"`` or ``"ray://head:10001"``); ``workers`` then defaults to
    one per node, the output must be on storage every node shares, and a shard whose actor dies
    is restarted (up to ``max_restarts`` times) and resumes from its own file.
    """
    config = config if isinstance(config, SynthConfig) else load_config(config)
    if ray is None or ray is False:
        if workers is None:
            raise ConfigError("say how many worker processes: workers=N")
        return run_sharded(config, ProcessLauncher(), workers, prompts=prompts, output=output, progress=progress)
    from .ray_runner import RayLauncher

    launcher = RayLauncher(None if ray is True else ray, max_restarts=max_restarts)
    try:
        count = workers if workers is not None else launcher.node_count()
        return run_sharded(config, launcher, count, prompts=prompts, output=output, progress=progress)
    finally:
        launcher.close()
