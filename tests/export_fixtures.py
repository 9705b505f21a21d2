"""Runs written by hand for export and report tests: records in the shape synthesis writes,
with guards, verifications and input fields set as a test needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tessy.formats import HarmonyFormat
from tessy.records import Record, SampleStats, Span, Verification

THINKING = "Okay, so 17 + 25 = 42. Let me double-check: 42 - 25 = 17, correct."
ANSWER = "The answer is 42."


def record(
    sample_id: str,
    *,
    prompt: str = "What is 17 + 25?",
    guards: tuple[str, ...] = (),
    passed: bool | str | None = "unverified",
    teacher_tokens: int = 10,
    student_tokens: int = 10,
    mode: str = "tessy",
    harmony: bool = False,
    thinking: str = THINKING,
    answer_text: str = ANSWER,
    **fields: Any,
) -> Record:
    spans = [
        Span("student", "think", thinking[:8], 3),
        Span("teacher", "think", thinking[8:], teacher_tokens),
        Span("student", "answer", answer_text, student_tokens - 3),
    ]
    if harmony:
        response = HarmonyFormat().render_response(thinking, answer_text)
    else:
        response = f"<think>\n{thinking}\n</think>\n\n{answer_text}"
    verification = None if passed == "unverified" else Verification("math", passed, None, "checked")  # type: ignore[arg-type]
    return Record(
        id=sample_id,
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        mode=mode,
        spans=spans,
        stats=SampleStats(
            teacher_tokens=teacher_tokens, student_tokens=student_tokens, switches=2, requests=3, guards=list(guards)
        ),
        config_hash="cafe0123",
        fields=dict(fields),
        verification=verification,
    )


def write_run(path: Path, records: list[Record], *, student_format: str = "qwen3") -> Path:
    """A run file and its config sidecar (teacher and student as a run config names them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records), encoding="utf-8")
    config = {
        "mode": "tessy",
        "teacher": {"backend": "openai", "model": "big-teacher", "format": "qwen3"},
        "student": {"backend": "openai", "model": "small-student", "format": student_format},
    }
    path.with_name(path.stem + ".config.json").write_text(
        json.dumps({"config_hash": "cafe0123", "config": config}), encoding="utf-8"
    )
    return path
