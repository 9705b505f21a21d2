"""Backends: where continuations come from.

A backend is chosen by the role's explicit ``backend:`` key; :func:`tessy.build.build_backend`
maps that key to the class that implements it, importing heavy dependencies only when that
backend is used.
"""

from __future__ import annotations

from .base import (
    Backend,
    GenerateRequest,
    Generation,
    Prompt,
    SamplingParams,
    Scorer,
    ScoreRequest,
    StreamDelta,
    TokenScores,
)
from .scripted import ScriptedBackend

__all__ = [
    "Backend",
    "GenerateRequest",
    "Generation",
    "Prompt",
    "SamplingParams",
    "ScoreRequest",
    "Scorer",
    "ScriptedBackend",
    "StreamDelta",
    "TokenScores",
]
