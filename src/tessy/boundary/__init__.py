"""Boundary predictors: where the active role hands over to the other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import BoundaryPredictor, CutQuery, NextTokenTypePredictor, TokenType, first_switch
from .classifier import ClassifierPredictor  # torch is imported only when a model loads
from .lexicon import DEFAULT_PHRASES, LexiconPredictor

if TYPE_CHECKING:
    from ..config import PredictorConfig

__all__ = [
    "DEFAULT_PHRASES",
    "BoundaryPredictor",
    "ClassifierPredictor",
    "CutQuery",
    "LexiconPredictor",
    "NextTokenTypePredictor",
    "TokenType",
    "create_predictor",
    "first_switch",
]


def create_predictor(config: PredictorConfig) -> BoundaryPredictor:
    """The predictor a role's config asks for."""
    if config.type == "lexicon":
        return LexiconPredictor(
            config.phrases, phrases_file=config.phrases_file, replace_defaults=config.replace_defaults
        )
    if config.type == "classifier":
        return ClassifierPredictor.from_config(config)
    raise ConfigError(f"unknown predictor type {config.type!r}")
