"""Verifiers by kind: the built-in ones' names and a user's ``module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

__all__ = ["BUILTIN_KINDS", "load_function"]

#: The verifiers tessy ships; any other kind is a ``module:function``.
BUILTIN_KINDS = ("none", "math", "code")


def load_function(spec: str) -> Callable[..., Any]:
    """The function ``module:function`` names (``module`` importable, e.g. from the working folder)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"verify.kind {spec!r}: cannot import {module_name!r} ({exc})") from None
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"verify.kind {spec!r}: {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ConfigError(f"verify.kind {spec!r}: {attr!r} is not a function")
    function: Callable[..., Any] = fn
    return function
