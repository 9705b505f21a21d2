"""Backends: where continuations come from.

A backend is chosen by the role's explicit ``backend:`` key; :func:`tessy.build.build_backend`
maps that key to the class that implements it, importing heavy dependencies only when that
backend is used.
"""

from __future__ import annotations

from . import base
from .base import *  # noqa: F403  (the interface's names, listed once, in base.__all__)
from .scripted import ScriptedBackend

__all__ = [*base.__all__, "ScriptedBackend"]
