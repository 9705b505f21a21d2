"""``tessy bench``: a simulated vLLM-like serving engine behind a local OpenAI-compatible server,
and a benchmark of cooperative synthesis against it (see :mod:`tessy.bench.harness`).

Inside, each layer imports only those before it: the simulated engine (``tokenizer``,
``model``, ``cache``, ``engine``; ``clock`` and ``backend`` beside it), the server (``http``,
``protocol``, ``server``), then the benchmark (``settings``, ``targets``, ``harness``,
``present``). Nothing here is imported by ``import tessy``; the CLI loads it when asked.
"""

from __future__ import annotations

from .engine import SimEngine, SimParams, make_engines
from .harness import BenchResult, BenchRow, run_bench
from .model import Workload
from .present import client_lines, client_table, describe, ratio_lines, table, to_dict
from .server import SimServer, serve
from .settings import CLIENT, FULL, QUICK, BenchConfig

__all__ = [
    "CLIENT",
    "FULL",
    "QUICK",
    "BenchConfig",
    "BenchResult",
    "BenchRow",
    "SimEngine",
    "SimParams",
    "SimServer",
    "Workload",
    "client_lines",
    "client_table",
    "describe",
    "make_engines",
    "ratio_lines",
    "run_bench",
    "serve",
    "table",
    "to_dict",
]
