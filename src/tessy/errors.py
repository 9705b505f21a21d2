"""The one error tree of tessy.

Every error tessy raises on purpose is a :class:`TessyError`; backends translate client
exceptions at their edge into :class:`BackendError`, so callers never need to know which HTTP
or model library sits underneath. Messages say what went wrong *and* what to do about it::

    TessyError
    ├── ConfigError             the configuration is invalid or inconsistent
    ├── DataError               input or output cannot be read, written or resumed
    ├── FormatError             a chat format cannot render a prompt or parse a response
    ├── BoundaryError           a boundary predictor failed or returned an impossible cut
    ├── BackendError            a generation request failed (``retryable``, ``status``)
    ├── OutageError             every replica of a model stayed down past ``outage_timeout_s`` (ends the run)
    ├── ShardError              a shard of a sharded run (a worker, a Ray actor) ended early
    ├── ServerStartError        a local server (llama.cpp) did not start or never became healthy
    ├── ModelError              a model file cannot be found, verified or installed
    │   └── MissingModelError   a catalogued model's package is not installed
    ├── JudgeOutputError        a judge's output cannot be used (``reason``)
    └── MissingDependencyError  an optional dependency is missing (also an ``ImportError``)

A sample that fails inside the engine is not raised: it becomes a recorded
:class:`tessy.records.Failure`, whose ``kind`` is the error's class name where an error caused it.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BoundaryError",
    "ConfigError",
    "DataError",
    "FormatError",
    "JudgeOutputError",
    "MissingDependencyError",
    "MissingModelError",
    "ModelError",
    "OutageError",
    "ServerStartError",
    "ShardError",
    "TessyError",
]


class TessyError(Exception):
    """Base class of every error tessy raises on purpose."""


class ConfigError(TessyError):
    """The configuration is invalid or inconsistent."""


class DataError(TessyError):
    """Input or output data cannot be read, written or resumed."""


class FormatError(TessyError):
    """A chat format cannot render a prompt or parse a response."""


class BoundaryError(TessyError):
    """A boundary predictor failed or returned an impossible cut."""


class BackendError(TessyError):
    """A generation request failed.

    ``retryable`` tells the engine whether trying the same request again may succeed
    (a connection reset, a 5xx, a 429) or not (a 4xx that names a bad request).
    ``retry_after`` is how long the server asked the client to wait first (seconds), if it did.
    """

    def __init__(
        self, message: str, *, retryable: bool = True, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class OutageError(TessyError):
    """Every replica of a model failed and none answered a health probe for ``outage_timeout_s``.

    Not a sample's failure: samples wait out an outage (their failure budgets are not charged),
    and one that lasts too long ends the whole run, the records already written kept.
    """


class ShardError(TessyError):
    """A shard of a sharded run (a worker process, a Ray actor) ended before its samples did.

    The records every shard wrote are kept in the output; running the same command again
    runs the samples that have none.
    """


class ServerStartError(TessyError):
    """A local model server did not start or never became healthy; the message holds its log's tail."""


class ModelError(TessyError):
    """A model file cannot be found, verified or installed."""


class MissingModelError(ModelError):
    """A catalogued model's package is not installed; the message says how to install it."""


class JudgeOutputError(TessyError):
    """A judge's output cannot be used; ``reason`` is ``unparsable`` or ``not_verbatim``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MissingDependencyError(TessyError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'tessy[{extra}]'"
        )
        self.package = package
        self.extra = extra
