"""Boundary predictors: where the active role hands over to the other."""

from __future__ import annotations

from .base import BoundaryPredictor, CutQuery, NextTokenTypePredictor, TokenType, first_switch
from .classifier import ClassifierPredictor  # torch is imported only when a model loads
from .lexicon import DEFAULT_PHRASES, LexiconPredictor

__all__ = [
    "DEFAULT_PHRASES",
    "BoundaryPredictor",
    "ClassifierPredictor",
    "CutQuery",
    "LexiconPredictor",
    "NextTokenTypePredictor",
    "TokenType",
    "first_switch",
]
