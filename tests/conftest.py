from __future__ import annotations

from collections.abc import Sequence

import pytest

from tessy import Engine, Limits, Mode, Role, get_format
from tessy.boundary import BoundaryPredictor, LexiconPredictor
from tessy.fakes import ScriptedBackend

#: The style words of design.md's worked example.
EXAMPLE_PHRASES = ("okay", "so", "let me", "now")


def toks(text: str) -> list[str]:
    """Token strings written with `|` between tokens, as in design.md's worked example."""
    return text.split("|")


def example_lexicon() -> LexiconPredictor:
    return LexiconPredictor(EXAMPLE_PHRASES, replace_defaults=True)


def make_engine(
    student: ScriptedBackend,
    teacher: ScriptedBackend,
    *,
    k: int = 8,
    mode: Mode | str = Mode.TESSY,
    student_predictor: BoundaryPredictor | None = None,
    teacher_predictor: BoundaryPredictor | None = None,
    student_format: str = "qwen3",
    teacher_format: str = "qwen3",
    limits: Limits | None = None,
    streaming: bool = False,
) -> Engine:
    return Engine(
        Role("teacher", teacher, get_format(teacher_format), teacher_predictor or example_lexicon(), k),
        Role("student", student, get_format(student_format), student_predictor or example_lexicon(), k),
        mode=mode,
        limits=limits,
        streaming=streaming,
    )


def scripted(*continuations: str | Sequence[str] | BaseException) -> ScriptedBackend:
    return ScriptedBackend(list(continuations))


@pytest.fixture
def worked_example() -> tuple[ScriptedBackend, ScriptedBackend]:
    """The student and teacher of design.md's worked example (k = 8)."""
    student = scripted(
        toks("Okay|,| so| I| need| to| add| 17"),
        toks(" Let| me| double|-check|:| 42| -| 25"),
        toks("The| answer| is| 42|."),
    )
    teacher = scripted(
        toks(" 17| +| 25| =| 42|.| Now| verify"),
        toks(" double|-check|:| 42| -| 25| =| 17"),
        toks(",| correct|.|\n|</think>"),
    )
    return student, teacher
