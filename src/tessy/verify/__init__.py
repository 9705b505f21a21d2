"""Verifiers: is a record's answer right? (``verify:`` in a run config, ``tessy verify``).

- :class:`Verifier`: the interface (a record in, a :class:`~tessy.records.Verification` out).
- :class:`MathVerifier` (``math``): the final answer against a reference, with ``math-verify``.
- :class:`CodeVerifier` (``code``): the last fenced block against tests, in a :class:`Sandbox`.
- :class:`NoVerifier` (``none``) and :class:`FunctionVerifier` (a user's ``module:function``).
- :class:`PassTally`: pass rate, pass@1 and pass@n of a run's records.

Build one from a config with :func:`tessy.build.build_verifier`.
"""

from .base import FunctionVerifier, NoVerifier, Verifier
from .code import CodeVerifier, last_code_block
from .math import MathVerifier
from .passk import PassTally, attempt_index
from .registry import BUILTIN_KINDS, load_function
from .sandbox import INSTALL_HINT, Sandbox, SandboxLimits, SandboxResult, find_bwrap

__all__ = [
    "BUILTIN_KINDS",
    "INSTALL_HINT",
    "CodeVerifier",
    "FunctionVerifier",
    "MathVerifier",
    "NoVerifier",
    "PassTally",
    "Sandbox",
    "SandboxLimits",
    "SandboxResult",
    "Verifier",
    "attempt_index",
    "find_bwrap",
    "last_code_block",
    "load_function",
]
