"""The one error tree of athena-sandbox.

Every error we raise derives from :class:`SandboxError`. Caller mistakes also derive from the
matching builtin, so ``except ValueError`` keeps working for code that does not know us::

    SandboxError
    ├── RequestError (ValueError)             the call itself is wrong: fix the arguments
    │   └── UnknownLanguageError (LookupError)
    ├── PolicyError (ValueError)              a policy file or dict is wrong: fix the policy
    │   └── PolicyNotFoundError (LookupError)
    ├── ImageBuildError                       building a sandbox image failed
    └── RunError                              the run could not happen or finish as asked
        ├── CodeNotAcceptedError              the language cannot take this code (NUL bytes)
        ├── BackendUnavailableError (ConnectionError)   no Docker engine answers
        ├── ImageNotFoundError (LookupError)  the language's image is missing: `make images`
        ├── QueueFullError                    too many runs waiting: the queue stayed full
        ├── RunCancelledError                 the caller cancelled the run (it was killed)
        ├── SandboxFailedError                the sandbox broke before it could report
        └── SessionEndedError                 the session is over (closed, expired, a violation)

``MemoryAPI.execute_code`` raises ``RequestError`` and ``PolicyError`` to its caller and turns a
``RunError`` into ``success: False`` with ``error`` and ``error_type``. Errors of docker-py and
of subprocesses are translated into this tree in one place per backend (``raise ... from exc``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.models import ExecutionResult


class SandboxError(Exception):
    """Root of every error raised by athena-sandbox."""


class RequestError(SandboxError, ValueError):
    """The request is invalid; the message says what to change."""


class UnknownLanguageError(RequestError, LookupError):
    """The language name is not one we run."""


class PolicyError(SandboxError, ValueError):
    """A policy is invalid or asks for something we cannot do."""


class PolicyNotFoundError(PolicyError, LookupError):
    """No shipped policy has this name and no file has this path."""


class ImageBuildError(SandboxError):
    """Building a sandbox image failed; the message carries the build's own error."""


class RunError(SandboxError):
    """The run could not happen or could not finish as asked.

    Attributes:
        result: the failed result the orchestrator recorded for this run, when it got that far.
    """

    result: ExecutionResult | None = None


class CodeNotAcceptedError(RunError):
    """The language cannot take this code as it is (for example NUL bytes in Python source)."""


class BackendUnavailableError(RunError, ConnectionError):
    """The isolation backend (the Docker engine) does not answer."""


class ImageNotFoundError(RunError, LookupError):
    """The sandbox image of a language is missing or out of date."""


class QueueFullError(RunError):
    """More runs are waiting than the queue holds, and no place freed up in time."""


class RunCancelledError(RunError):
    """The run was cancelled by its caller; its sandbox was killed."""


class SandboxFailedError(RunError):
    """The sandbox failed before it could report a result (runner lost, engine error)."""


class SessionEndedError(RunError):
    """The session is over: closed, expired, or ended by a violation; the message says why.

    Attributes:
        session_id: the session's id.
        reason: why it ended, as a sentence.
    """

    def __init__(self, message: str, *, session_id: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.session_id = session_id
        self.reason = reason or message
