"""``kind: code``: the answer's last fenced code block run against the input's tests, sandboxed.

Two shapes of tests, as users' datasets have them (field names are settings of ``verify:``):

- HumanEval / MBPP: ``test`` is Python that defines ``check(candidate)`` and ``entry_point``
  names the function to check (the program is the code, the test, then
  ``check(entry_point)``), or ``test`` is a list of ``assert`` lines (each one counted: the
  score is the share that pass).
- stdin / stdout (LiveCodeBench, CodeContests): ``inputs`` and ``outputs`` are lists of
  strings; the program runs once per case with the input on stdin and passes a case when its
  stdout equals the output (trailing spaces and blank lines aside). The score is the share of
  cases passed.

Every run goes through a :class:`~tessy.verify.sandbox.Sandbox`. When the sandbox cannot run
programs the answer is recorded as not judged (``passed=None``), never as wrong.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

from ..records import Record, Verification
from .base import Verifier
from .sandbox import Sandbox, SandboxResult

__all__ = ["CodeVerifier", "last_code_block"]

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON = {"", "python", "py", "python3", "py3"}
_MARK = "__tessy_asserts_passed__"


def last_code_block(text: str) -> tuple[str, str] | None:
    """The language tag and body of the last fenced block in ``text`` (an unclosed last fence
    counts to the end of the text), or ``None``."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    tail = text.rfind("```")
    if tail != -1 and text.count("```") % 2 == 1:  # a last fence the answer never closed
        head, _, body = text[tail + 3 :].partition("\n")
        blocks.append((head.strip().lower(), body))
    return blocks[-1] if blocks else None


def _asserts_program(code: str, asserts: Sequence[str]) -> str:
    return (
        f"{code}\n\n"
        f"__tessy_n = 0\n"
        f"for __tessy_src in {json.dumps(list(asserts))}:\n"
        f"    try:\n"
        f"        exec(__tessy_src, globals())\n"
        f"        __tessy_n += 1\n"
        f"    except BaseException as __tessy_exc:\n"
        f"        import sys\n"
        f"        print(f'failed: {{__tessy_src[:200]}}: {{type(__tessy_exc).__name__}}: {{__tessy_exc}}', file=sys.stderr)\n"
        f"print('{_MARK}', __tessy_n, flush=True)\n"
        f"raise SystemExit(0 if __tessy_n == {len(asserts)} else 1)\n"
    )


def _same_output(got: str, want: str) -> bool:
    def norm(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip("\n").splitlines()]

    return norm(got) == norm(want)


class CodeVerifier(Verifier):
    """Runs the answer's code against the tests in the record's input fields."""

    kind = "code"

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        test_field: str = "test",
        entry_point_field: str = "entry_point",
        inputs_field: str = "inputs",
        outputs_field: str = "outputs",
    ) -> None:
        self.sandbox = sandbox
        self.test_field = test_field
        self.entry_point_field = entry_point_field
        self.inputs_field = inputs_field
        self.outputs_field = outputs_field

    def _verdict(self, passed: bool | None, score: float | None, detail: str) -> Verification:
        return Verification(self.kind, passed, score, detail[:500])

    async def verify(self, record: Record) -> Verification:
        fields = record.fields
        test, inputs, outputs = (
            fields.get(self.test_field),
            fields.get(self.inputs_field),
            fields.get(self.outputs_field),
        )
        if test is None and inputs is None:
            return self._verdict(
                None,
                None,
                f"the input has no tests ({self.test_field!r} + {self.entry_point_field!r}, "
                f"or {self.inputs_field!r} / {self.outputs_field!r})",
            )
        block = last_code_block(record.answer)
        if block is None:
            return self._verdict(False, 0.0, "no fenced code block in the answer")
        language, code = block
        if language not in _PYTHON:
            return self._verdict(None, None, f"the answer's code is {language}; only Python runs here")
        if test is not None:
            return await self._unit_tests(code, test, fields.get(self.entry_point_field))
        return await self._io_cases(code, inputs, outputs)

    async def _unit_tests(self, code: str, test: Any, entry_point: Any) -> Verification:
        if isinstance(test, list) and all(isinstance(t, str) for t in test):
            if not test:
                return self._verdict(None, None, f"{self.test_field!r} is an empty list")
            result = await self.sandbox.run(_asserts_program(code, test))
            if not result.ran:
                return self._verdict(None, None, result.reason)
            passed_n = _passed_count(result.stdout)
            score = passed_n / len(test) if passed_n is not None else 0.0
            if result.passed:
                return self._verdict(True, 1.0, f"{len(test)} of {len(test)} asserts passed")
            return self._verdict(False, score, f"{passed_n or 0} of {len(test)} asserts passed; {result.reason}")
        if not isinstance(test, str):
            return self._verdict(None, None, f"{self.test_field!r} is neither Python text nor a list of asserts")
        if entry_point is None:
            if "check(" not in test:
                # MBPP-style asserts as one text: run as they are.
                result = await self.sandbox.run(f"{code}\n\n{test}\n")
                return self._single(result)
            return self._verdict(None, None, f"the input has a test but no {self.entry_point_field!r}")
        result = await self.sandbox.run(f"{code}\n\n{test}\n\ncheck({entry_point})\n")
        return self._single(result)

    def _single(self, result: SandboxResult) -> Verification:
        if not result.ran:
            return self._verdict(None, None, result.reason)
        if result.passed:
            return self._verdict(True, 1.0, "tests passed")
        return self._verdict(False, 0.0, result.reason)

    async def _io_cases(self, code: str, inputs: Any, outputs: Any) -> Verification:
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            return self._verdict(
                None, None, f"{self.inputs_field!r} and {self.outputs_field!r} are not lists of the same length"
            )
        if not inputs:
            return self._verdict(None, None, f"{self.inputs_field!r} is empty")
        results = await asyncio.gather(*(self.sandbox.run(code, str(case)) for case in inputs))
        broken = next((r for r in results if not r.ran), None)
        if broken is not None:
            return self._verdict(None, None, broken.reason)
        wrong: list[str] = []
        for number, (result, want) in enumerate(zip(results, outputs, strict=True)):
            if not result.passed:
                wrong.append(f"case {number}: {result.reason}")
            elif not _same_output(result.stdout, str(want)):
                wrong.append(
                    f"case {number}: wrong output {result.stdout.strip()[:40]!r}, want {str(want).strip()[:40]!r}"
                )
        good = len(inputs) - len(wrong)
        if not wrong:
            return self._verdict(True, 1.0, f"{good} of {len(inputs)} cases passed")
        return self._verdict(False, good / len(inputs), f"{good} of {len(inputs)} cases passed; {wrong[0]}")


def _passed_count(stdout: str) -> int | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARK):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None
