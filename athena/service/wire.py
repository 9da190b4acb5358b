"""The error envelope the HTTP API sends and the remote client reads, and the service's errors.

Every error response of the HTTP API has the body ``{"error": {"type": ..., "message": ...}}``
(plus ``fields`` on a 422). ``type`` is the class name of the error the local API would have
raised, so the remote client raises that very class with the server's message. The service adds
its own branches to the one error tree (:mod:`orchestrator.errors`)::

    SandboxError
    └── ServiceError                           the service refused or could not answer
        ├── AuthenticationError (PermissionError)  no valid bearer token (401)
        ├── PayloadTooLargeError (ValueError)       the body is over the server's limit (413)
        ├── TooManyRunsError                        the tenant's in-flight limit (429)
        └── ServiceUnavailableError (ConnectionError)  draining, unreachable, or a bad answer
"""

from __future__ import annotations

from typing import Any

from memory_store import errors as store_errors
from orchestrator import errors as run_errors
from orchestrator.errors import SandboxError


class ServiceError(SandboxError):
    """The service refused the request or could not answer it."""


class AuthenticationError(ServiceError, PermissionError):
    """No valid bearer token: give ``token=`` (or ``Authorization: Bearer ...``)."""


class PayloadTooLargeError(ServiceError, ValueError):
    """The request body is over the server's size limit: send less."""


class TooManyRunsError(ServiceError):
    """The tenant already has as many runs in flight as its token allows.

    Attributes:
        retry_after: seconds the server suggests waiting before trying again.
    """

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailableError(ServiceError, ConnectionError):
    """The server is draining, unreachable, or answered something the client cannot read."""


# The name on the wire for each class whose name is not itself.
WIRE_NAMES: dict[type[BaseException], str] = {
    AuthenticationError: "Unauthorized",
    PayloadTooLargeError: "PayloadTooLarge",
    TooManyRunsError: "TooManyRuns",
    ServiceUnavailableError: "Draining",
}

_CLASSES: dict[str, type[SandboxError]] = {
    cls.__name__: cls
    for module in (run_errors, store_errors)
    for cls in vars(module).values()
    if isinstance(cls, type) and issubclass(cls, SandboxError)
}
_CLASSES.update({name: cls for cls, name in WIRE_NAMES.items() if issubclass(cls, SandboxError)})
_CLASSES["ServiceError"] = ServiceError


def envelope(error_type: str, message: str, **extra: Any) -> dict[str, Any]:
    """Return the JSON body of an error response."""
    return {"error": {"type": error_type, "message": message, **extra}}


def wire_name(exc: BaseException) -> str:
    """Return the ``type`` an error is sent as: its class name, or the service's wire name."""
    for cls in type(exc).__mro__:
        if cls in WIRE_NAMES:
            return WIRE_NAMES[cls]
    return type(exc).__name__


def error_from(body: object, status: int, retry_after: float | None = None) -> SandboxError:
    """Return the exception an error response stands for (never raises).

    A ``type`` this package knows gives that class with the server's message; a 401 gives
    :class:`AuthenticationError`, a 422 a ``RequestError``; anything else a
    :class:`ServiceUnavailableError` (5xx) or :class:`ServiceError` saying what came back.
    """
    error = body.get("error") if isinstance(body, dict) else None
    name = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = f"the server answered HTTP {status} without an error message"
    if status == 429 and name == "TooManyRuns":
        return TooManyRunsError(message, retry_after if retry_after is not None else 1.0)
    cls = _CLASSES.get(name) if isinstance(name, str) else None
    if cls is not None:
        return cls(message)
    if status == 401:
        return AuthenticationError(message)
    if status == 422:
        return run_errors.RequestError(message)
    if status >= 500:
        return ServiceUnavailableError(f"HTTP {status}: {message}")
    return ServiceError(f"HTTP {status}: {message}")
