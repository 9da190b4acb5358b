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

import base64
import binascii
from collections.abc import Callable, Mapping
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


def _rebuilt(cls: type[SandboxError], message: str, error: object) -> SandboxError:
    """The error of a known class, with what the envelope says of an ended session."""
    if cls is run_errors.SessionEndedError and isinstance(error, dict):
        return run_errors.SessionEndedError(
            message,
            session_id=str(error.get("session_id") or ""),
            reason=str(error.get("reason") or ""),
        )
    return cls(message)


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
        return _rebuilt(cls, message, error)
    if status == 401:
        return AuthenticationError(message)
    if status == 422:
        return run_errors.RequestError(message)
    if status >= 500:
        return ServiceUnavailableError(f"HTTP {status}: {message}")
    return ServiceError(f"HTTP {status}: {message}")


# --------------------------------------------------------------------------- files over JSON

_FILE_LISTS = ("files", "artifacts")


def result_to_wire(result: dict[str, Any]) -> dict[str, Any]:
    """A result dict as JSON can hold it: each file's and artifact's ``content`` as base64 text.

    A result without files or artifacts is returned as it is (the hot path copies nothing).
    """
    if not any(result.get(key) for key in _FILE_LISTS):
        return result
    wired = dict(result)
    for key in _FILE_LISTS:
        items = result.get(key)
        if items:
            wired[key] = [_content_as(item, _b64_text) for item in items]
    return wired


def result_from_wire(result: object) -> Any:
    """A result dict as the local API returns it: each ``content`` decoded from base64 to bytes.

    Anything that is not a result dict (or content that is not base64 text) is left as it
    came: the caller's checks say what is wrong with an answer.
    """
    if not isinstance(result, dict) or not any(result.get(key) for key in _FILE_LISTS):
        return result
    local = dict(result)
    for key in _FILE_LISTS:
        items = result.get(key)
        if isinstance(items, list):
            local[key] = [_content_as(item, _b64_bytes) for item in items]
    return local


def event_to_wire(event: dict[str, Any]) -> dict[str, Any]:
    """A run event as JSON can hold it (the exit event's result through :func:`result_to_wire`)."""
    result = event.get("result")
    if event.get("type") != "exit" or not isinstance(result, dict):
        return event
    wired = result_to_wire(result)
    return event if wired is result else {**event, "result": wired}


def event_from_wire(event: dict[str, Any]) -> dict[str, Any]:
    """A streamed event as the local API yields it (the exit event's contents as bytes)."""
    if event.get("type") != "exit" or not isinstance(event.get("result"), dict):
        return event
    return {**event, "result": result_from_wire(event["result"])}


def files_to_wire(files: object) -> object:
    """``files=`` as a JSON value: text stays text, bytes become ``{"base64": ...}``.

    Anything else is left as it is, for the local checks (or the server) to refuse.
    """
    if not isinstance(files, Mapping):
        return files
    return {
        name: {"base64": _b64_text(data)} if isinstance(data, bytes | bytearray) else data
        for name, data in files.items()
    }


def files_from_wire(files: Mapping[str, object] | None) -> dict[str, bytes | str] | None:
    """``files`` of a request body as ``execute_code`` takes them (base64 items decoded).

    Args:
        files: name -> text (written as UTF-8) or an object with a ``base64`` string
            (a pydantic model or a dict).

    Raises:
        RequestError: an item's base64 is not valid base64 (the message names the file).
    """
    if files is None:
        return None
    decoded: dict[str, bytes | str] = {}
    for name, item in files.items():
        if isinstance(item, str):
            decoded[name] = item
            continue
        text = item.get("base64") if isinstance(item, Mapping) else getattr(item, "base64", None)
        try:
            decoded[name] = base64.b64decode(str(text), validate=True)
        except (binascii.Error, ValueError) as exc:
            shown = name if len(name) <= 80 else name[:80] + "..."
            raise run_errors.RequestError(
                f"files[{shown!r}].base64 is not valid base64 ({exc}): send the file's bytes "
                "base64-encoded (standard alphabet, with padding), or its text as a string"
            ) from None
    return decoded


def _b64_text(data: bytes | bytearray) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_bytes(text: object) -> object:
    if not isinstance(text, str):
        return text
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return text


def _content_as(item: object, convert: Callable[[Any], object]) -> object:
    if not isinstance(item, dict) or "content" not in item:
        return item
    return {**item, "content": convert(item["content"])}
