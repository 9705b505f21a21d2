"""The ``verify:`` section: how a record's answer is checked (see :mod:`tessy.verify`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["VerifyConfig"]

_NOT_HASHED: dict[str, Any] = {"hashed": False}


class VerifyConfig(BaseModel):
    """Which verifier judges each finished record, the input fields it reads, and the sandbox's
    limits for code. The verdict is stored as the record's ``verification``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(
        "none",
        description="none, math (math-verify against the reference answer), code (the last fenced "
        "block run against the tests, sandboxed) or module:function (your own verifier).",
    )
    answer_field: str = Field("answer", description="math: the input field with the reference answer.")
    test_field: str = Field(
        "test", description="code: the input field with a HumanEval test (defines check) or a list of asserts."
    )
    entry_point_field: str = Field("entry_point", description="code: the input field naming the function to check.")
    inputs_field: str = Field("inputs", description="code: the input field with the stdin of each case (a list).")
    outputs_field: str = Field(
        "outputs", description="code: the input field with the expected stdout of each case (a list)."
    )
    timeout_s: float = Field(10.0, gt=0, description="code: wall seconds a program may run.")
    cpu_s: float = Field(10.0, gt=0, description="code: CPU seconds a program may use.")
    memory_mb: int = Field(1024, ge=64, description="code: address space (memory) a program may map, in MiB.")
    file_size_mb: int = Field(16, ge=1, description="code: the largest file a program may write, in MiB.")
    folder_mb: int = Field(64, ge=1, description="code: the size of the program's private folder, in MiB.")
    max_processes: int = Field(32, ge=1, description="code: processes (and threads) a program may run at once.")
    output_bytes: int = Field(1 << 20, ge=1024, description="code: stdout (and stderr) kept; more stops the program.")
    python: str | None = Field(
        None,
        description="code: the Python that runs programs (default: this one, or a system python3 when "
        "the sandbox's user cannot reach this one).",
        json_schema_extra=_NOT_HASHED,
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        description="Programs (or checks) run at once; default: one per CPU core.",
        json_schema_extra=_NOT_HASHED,
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value in ("none", "math", "code") or (":" in value and all(value.split(":", 1))):
            return value
        raise ValueError(f"verify.kind is {value!r}: use none, math, code or module:function")
