"""The TESSY engine: teacher and student take turns inside one response.

- :mod:`~tessy.engine.policy` — what the engine is given: the two :class:`Role` s, the
  :class:`Limits` and the :class:`RepetitionGuard`;
- :mod:`~tessy.engine.scheduler` — the :class:`Engine`: many samples at once, bounded requests
  per backend, one session per sample on both roles;
- :mod:`~tessy.engine.sample` — the state machine of one sample (the rules of design.md section 1);
- :mod:`~tessy.engine.context` — each role's prompt (token-exact mode), spans and token helpers;
- :mod:`~tessy.engine.methods` — the comparison modes (teacher-score, teacher-reference,
  teacher-mix, rsd, student-select), run by the same engine.
"""

from __future__ import annotations

from .policy import Limits, RepetitionGuard, Role
from .scheduler import Engine

__all__ = ["Engine", "Limits", "RepetitionGuard", "Role"]
