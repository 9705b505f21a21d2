"""The verifier interface: a record's answer in, a :class:`~tessy.records.Verification` out.

A verifier reads the record's answer (``record.answer``: the answer phase, thinking left out)
and the input's fields kept with it (``record.fields``: a reference answer, tests). It says
``passed`` (``None`` when it could not judge: no reference, a sandbox that did not start), a
``score`` where it has one and a short ``detail``. It never raises for a bad answer; an answer
that cannot be judged is recorded as such, never as wrong.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from ..records import Record, Verification

__all__ = ["FunctionVerifier", "NoVerifier", "Verifier"]


class Verifier(abc.ABC):
    """Judges a record's answer. ``kind`` names it in the stored verification."""

    kind: str = ""

    @abc.abstractmethod
    async def verify(self, record: Record) -> Verification:
        """The verdict on ``record``'s answer (never raises for a bad answer)."""

    async def aclose(self) -> None:
        """Release what the verifier holds (nothing, by default)."""


class NoVerifier(Verifier):
    """``kind: none``: nothing is checked (records are stored without a verification)."""

    kind = "none"

    async def verify(self, record: Record) -> Verification:
        return Verification("none", None, None, "not verified")


class FunctionVerifier(Verifier):
    """A user's function as a verifier (``kind: module:function``).

    The function is called with the record and its input fields (``fn(record, fields)``),
    plainly or as a coroutine function, and returns a :class:`Verification`, a bool, ``None``
    (not judged) or a dict with ``passed`` and optionally ``score`` and ``detail``. A plain
    function runs in a worker thread so that a slow one does not stall the synthesis. If it
    raises, the answer is recorded as not judged, with the error as the detail.
    """

    def __init__(self, fn: Callable[..., Any], kind: str) -> None:
        self.fn = fn
        self.kind = kind

    async def verify(self, record: Record) -> Verification:
        try:
            if inspect.iscoroutinefunction(self.fn):
                value = await self.fn(record, dict(record.fields))
            else:
                value = await asyncio.to_thread(self.fn, record, dict(record.fields))
        except Exception as exc:
            return Verification(self.kind, None, None, f"the verifier raised {type(exc).__name__}: {exc}"[:500])
        return _as_verification(value, self.kind)


def _as_verification(value: Any, kind: str) -> Verification:
    if isinstance(value, Verification):
        return value
    if value is None or isinstance(value, bool):
        return Verification(kind, value, None if value is None else float(value), "")
    if isinstance(value, dict):
        passed = value.get("passed")
        score = value.get("score")
        return Verification(
            kind,
            None if passed is None else bool(passed),
            None if score is None else float(score),
            str(value.get("detail") or ""),
        )
    return Verification(kind, None, None, f"the verifier returned {type(value).__name__}, not a verdict")
