"""``tessy bench``: a simulated vLLM-like serving engine behind a local OpenAI-compatible server,
and a benchmark of cooperative synthesis against it (see :mod:`tessy.bench.harness`).
"""

from __future__ import annotations

from .engine import SimEngine, SimParams, make_engines
from .harness import FULL, QUICK, BenchConfig, BenchResult, BenchRow, run_bench
from .model import Workload
from .server import SimServer, serve

__all__ = [
    "FULL",
    "QUICK",
    "BenchConfig",
    "BenchResult",
    "BenchRow",
    "SimEngine",
    "SimParams",
    "SimServer",
    "Workload",
    "make_engines",
    "run_bench",
    "serve",
]
