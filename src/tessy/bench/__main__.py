"""``python -m tessy.bench``: run the simulated OpenAI-compatible server (see :mod:`tessy.bench.server`)."""

from .server import main

main()
