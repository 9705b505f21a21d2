"""``python -m tessy.bench``: run the simulated OpenAI-compatible server (see :mod:`tessy.bench.server`)."""

from __future__ import annotations

import argparse
import asyncio
import json

from . import server
from .engine import SimParams
from .model import Workload
from .server import READY_PREFIX, serve


def _pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    return int(lo), int(hi or lo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tessy.bench", description=(server.__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--params", default="{}", help="JSON overrides of SimParams, e.g. '{\"decode_step_s\": 0.02}'")
    parser.add_argument("--think", default="400,800", help="thinking tokens per sample, LO,HI")
    parser.add_argument("--answer", default="40,80", help="answer tokens per sample, LO,HI")
    args = parser.parse_args(argv)
    params = SimParams().with_overrides(json.loads(args.params))
    workload = Workload(_pair(args.think), _pair(args.answer))
    asyncio.run(serve(args.host, args.port, params, workload, lambda url: print(READY_PREFIX + url, flush=True)))


if __name__ == "__main__":
    main()
