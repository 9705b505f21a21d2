"""``kind: math``: the answer's final value against the input's reference, with ``math-verify``.

The answer is the record's answer phase (its thinking is never searched). ``math-verify``
extracts the last ``\\boxed{}`` value or, failing that, the last number or expression, from
the answer and from the reference, and compares them symbolically (``1/2`` = ``0.5`` =
``\\frac{1}{2}``). The ``math-verify`` package is an extra: ``pip install 'tessy[verify]'``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from ..errors import MissingDependencyError
from ..records import Record, Verification
from .base import Verifier

__all__ = ["MathVerifier"]


def _math_verify() -> Any:
    try:
        import math_verify  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise MissingDependencyError("math-verify", "verify", "the math verifier") from None
    return math_verify


class MathVerifier(Verifier):
    """Compares the answer's final value with ``fields[answer_field]``."""

    kind = "math"

    def __init__(self, *, answer_field: str = "answer", timeout_s: float = 5.0) -> None:
        self.answer_field = answer_field
        self.timeout_s = timeout_s
        self._mv = _math_verify()

    async def verify(self, record: Record) -> Verification:
        reference = record.fields.get(self.answer_field)
        if reference is None or (isinstance(reference, str) and not reference.strip()):
            return Verification(self.kind, None, None, f"the input has no reference answer ({self.answer_field!r})")
        if threading.current_thread() is threading.main_thread():
            return self.judge(record.answer, reference)
        return await asyncio.to_thread(self.judge, record.answer, reference)

    def judge(self, answer: str, reference: Any) -> Verification:
        """The verdict on one answer text against one reference (sync)."""
        mv = self._mv
        # math-verify's timeouts use SIGALRM, which only the main thread may set.
        timeout = max(1, int(self.timeout_s)) if threading.current_thread() is threading.main_thread() else None
        gold = mv.parse(_as_math(reference), parsing_timeout=timeout)
        if not gold:
            return Verification(self.kind, None, None, f"the reference answer {str(reference)[:80]!r} is no value")
        pred = mv.parse(answer, parsing_timeout=timeout)
        if not pred:
            return Verification(self.kind, False, 0.0, "no final answer found in the answer")
        ok = bool(mv.verify(gold, pred, timeout_seconds=timeout))
        got = pred[-1] if len(pred) > 1 else pred[0]
        detail = f"answer {str(got)[:60]!r} {'matches' if ok else 'differs from'} reference {str(reference)[:60]!r}"
        return Verification(self.kind, ok, 1.0 if ok else 0.0, detail)


def _as_math(reference: Any) -> str:
    """A reference as text math-verify reads: plain values are put in math mode."""
    text = str(reference).strip()
    return text if "$" in text or "\\" in text else f"${text}$"
