"""The methods users compare TESSY with, as modes of the same engine (``Mode.is_method``).

- :mod:`.candidates` — ``teacher-score``, ``student-select``, ``teacher-reference`` and
  ``teacher-mix``: whole responses of the basic modes, chosen, scored or combined;
- :mod:`.rsd` — ``rsd``: reverse speculative decoding, token by token;
- :mod:`.templates` — the editable prompt files ``teacher-score`` and ``teacher-reference`` use.

Every method writes the same record as the basic modes (spans with sources, stats, the mode);
what it spent beyond the record (candidates not kept, scoring requests, rejected proposals) is
in ``discarded_tokens`` and ``requests``.
"""

from __future__ import annotations

from ...records import Mode
from .base import MethodRun, MethodSettings, Session
from .candidates import ReferenceRun, StudentSelectRun, TeacherMixRun, TeacherScoreRun, mix_source, parse_score
from .rsd import RsdRun, judge
from .templates import DEFAULT_REFERENCE_PROMPT, DEFAULT_SCORE_PROMPT, PromptTemplate

__all__ = [
    "DEFAULT_REFERENCE_PROMPT",
    "DEFAULT_SCORE_PROMPT",
    "METHOD_RUNS",
    "MethodRun",
    "MethodSettings",
    "PromptTemplate",
    "Session",
    "judge",
    "mix_source",
    "parse_score",
]

#: The run of each comparison method.
METHOD_RUNS: dict[Mode, type[MethodRun]] = {
    Mode.TEACHER_SCORE: TeacherScoreRun,
    Mode.STUDENT_SELECT: StudentSelectRun,
    Mode.TEACHER_REFERENCE: ReferenceRun,
    Mode.TEACHER_MIX: TeacherMixRun,
    Mode.RSD: RsdRun,
}
