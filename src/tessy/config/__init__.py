"""Run configuration: the schema (:mod:`.schema`), its hash (:mod:`.hashing`), loading from YAML
with overrides (:mod:`.loading`) and the schema in words (:mod:`.describe`).

This package only describes a run; :mod:`tessy.build` turns a config into objects.
"""

from .describe import FieldDoc, describe_config
from .loading import apply_overrides, load_config, validate_config
from .schema import (
    NOT_HASHED,
    ClassifierPredictorConfig,
    DataConfig,
    GuardsConfig,
    HFRole,
    LexiconPredictorConfig,
    LlamaCppRole,
    OpenAIRole,
    PredictorConfig,
    RoleBase,
    RoleConfig,
    SamplingConfig,
    ScriptedRole,
    SynthConfig,
)

__all__ = [
    "NOT_HASHED",
    "ClassifierPredictorConfig",
    "DataConfig",
    "FieldDoc",
    "GuardsConfig",
    "HFRole",
    "LexiconPredictorConfig",
    "LlamaCppRole",
    "OpenAIRole",
    "PredictorConfig",
    "RoleBase",
    "RoleConfig",
    "SamplingConfig",
    "ScriptedRole",
    "SynthConfig",
    "apply_overrides",
    "describe_config",
    "load_config",
    "validate_config",
]
