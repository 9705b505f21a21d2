"""Prompt templates of the comparison methods: editable text files with ``{name}`` placeholders.

A template file may open with a note for people, ended by a line that holds only ``---``; the
note is never sent. Placeholders are filled in one pass (a value that itself holds ``{answer}``
is left as it is), and any other brace is plain text, so templates may quote code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError

__all__ = ["DEFAULT_REFERENCE_PROMPT", "DEFAULT_SCORE_PROMPT", "PromptTemplate"]

_FOLDER = Path(__file__).resolve().parent / "prompts"
#: The prompt the teacher scores a candidate with (tessy's own; the paper did not publish its).
DEFAULT_SCORE_PROMPT = _FOLDER / "teacher_score.md"
#: The prompt the student writes with the teacher's response as a reference (tessy's own).
DEFAULT_REFERENCE_PROMPT = _FOLDER / "teacher_reference.md"

_NOTE_END = re.compile(r"^---[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with placeholders; ``fill`` gives the text sent."""

    text: str
    placeholders: tuple[str, ...]
    source: str = "<text>"

    @classmethod
    def load(cls, path: Path, *, placeholders: tuple[str, ...], required: tuple[str, ...]) -> PromptTemplate:
        """The template in ``path``, its note dropped; refused (:class:`ConfigError`) when it
        lacks a ``required`` placeholder."""
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the prompt template {path}: {exc}") from None
        return cls.parse(raw, placeholders=placeholders, required=required, source=str(path))

    @classmethod
    def parse(
        cls, raw: str, *, placeholders: tuple[str, ...], required: tuple[str, ...], source: str = "<text>"
    ) -> PromptTemplate:
        note = _NOTE_END.search(raw)
        text = raw[note.end() :].lstrip("\n") if note else raw
        text = text.rstrip() + "\n" if text.strip() else ""
        missing = [p for p in required if "{" + p + "}" not in text]
        if missing:
            names = ", ".join("{" + p + "}" for p in missing)
            raise ConfigError(f"the prompt template {source} lacks {names}")
        return cls(text.rstrip("\n"), placeholders, source)

    def fill(self, **values: str) -> str:
        unknown = set(values) - set(self.placeholders)
        if unknown:
            raise ValueError(f"{self.source} has no placeholder {', '.join(sorted(unknown))}")
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, self.placeholders)) + r")\}")
        return pattern.sub(lambda m: values.get(m.group(1), m.group(0)), self.text)
