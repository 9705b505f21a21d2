"""Run configuration: the schema (:mod:`.schema`), its hash (:mod:`.hashing`), loading from YAML
with overrides (:mod:`.loading`) and the schema in words (:mod:`.describe`).

This package only describes a run; :mod:`tessy.build` turns a config into objects.
"""

from . import schema
from .describe import FieldDoc, describe_config
from .loading import apply_overrides, load_config, validate_config
from .schema import *  # noqa: F403  (the schema's names, listed once, in schema.__all__)

__all__ = [*schema.__all__, "FieldDoc", "apply_overrides", "describe_config", "load_config", "validate_config"]
