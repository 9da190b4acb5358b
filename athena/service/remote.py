"""The remote client's side of the wire: request bodies, answers, errors and the event stream.

Pure helpers of :class:`athena.service.client.RemoteMemoryAPI`. Arguments become JSON bodies
(a value JSON cannot hold is refused with the local API's own error, by running its check);
answers become values, error envelopes the exceptions :func:`athena.service.wire.error_from`
names; a Server-Sent Events response becomes an iterator of event dicts.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from datetime import date
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from httpx_sse import EventSource, ServerSentEvent

from athena.api import check_execution_id
from athena.policies import get_shipped_policy
from athena.service import wire
from athena.service.wire import ServiceUnavailableError
from memory_store import checks
from orchestrator.errors import PolicyError, RequestError, SandboxError
from orchestrator.models import ExecutionRequest, check_text
from orchestrator.policy import Policy, load_policy, shipped_policy_names


class EventStream(Iterator[dict[str, Any]]):
    """The events of one streamed run; closing it closes the response (the server kills the run)."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response = response
        self._url = url
        self._events: Generator[dict[str, Any], None, None] = self._read()

    def _read(self) -> Generator[dict[str, Any], None, None]:
        for sse in EventSource(self._response).iter_sse():
            event = event_of(sse, self._url)
            if event is not None:
                yield wire.event_from_wire(event)
                if event.get("type") == "exit":
                    return
        raise no_exit(self._url)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return next(self._events)
        except StopIteration:
            self.close()
            raise
        except httpx.TransportError as exc:
            self.close()
            raise unreachable(exc, self._url) from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop reading: the connection is closed, and the server kills the run if it goes on."""
        self._events.close()
        self._response.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- answers


def base_url(url: object) -> str:
    """Return the server's base URL without a trailing slash.

    Raises:
        RequestError: not a string, or not an http(s) URL with a host.
    """
    if not isinstance(url, str):
        raise RequestError(f"url must be a string such as 'http://127.0.0.1:8000', not {url!r}")
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise RequestError(
            f"url {url!r} is not an http(s) URL: give the server's address, "
            "e.g. 'http://127.0.0.1:8000'"
        )
    return url.strip().rstrip("/")


def unreachable(exc: httpx.TransportError, url: str) -> ServiceUnavailableError:
    """Return the error of a request that got no answer: what happened and what to check."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return ServiceUnavailableError(
            f"the athena-sandbox service at {url} did not answer in time ({type(exc).__name__}); "
            "check the server's load, or pass a larger timeout= to MemoryAPI.connect"
        )
    return ServiceUnavailableError(
        f"cannot reach the athena-sandbox service at {url} ({type(exc).__name__}: {exc}); "
        "check that `athena-sandbox serve` runs there and that the URL's scheme, host and "
        "port are right"
    )


def json_of(response: httpx.Response, url: str) -> Any:
    """Return an answer's JSON.

    Raises:
        ServiceUnavailableError: the body is not JSON (another server, a proxy's page).
    """
    try:
        return response.json()
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        kind = response.headers.get("content-type", "no content type")
        raise ServiceUnavailableError(
            f"{url} answered HTTP {response.status_code} with {kind}, not the JSON of the "
            "athena-sandbox service: check that the URL points at `athena-sandbox serve`"
        ) from exc


def refusal(response: httpx.Response, url: str) -> SandboxError:
    """Return the error an error response (or a stream that is not one) stands for."""
    body = json_of(response, url)
    if response.status_code < 400:
        return ServiceUnavailableError(
            f"{url} answered HTTP {response.status_code} without an event stream; "
            "check that the URL points at `athena-sandbox serve`"
        )
    return wire.error_from(body, response.status_code, retry_after(response))


def error_type(response: httpx.Response) -> object:
    """Return the ``type`` of an error envelope (None when the body is not one)."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("type") if isinstance(error, dict) else None


def retry_after(response: httpx.Response) -> float | None:
    """Return the seconds of a ``Retry-After`` header (None when absent or not a number)."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def is_event_stream(response: httpx.Response) -> bool:
    """Whether an answer is a successful ``text/event-stream``."""
    kind = response.headers.get("content-type", "").partition(";")[0].strip()
    return response.status_code < 300 and kind == "text/event-stream"


def event_of(sse: ServerSentEvent, url: str) -> dict[str, Any] | None:
    """Return one streamed event dict (None for a keep-alive); raise what an error event says."""
    if not sse.data:
        return None
    try:
        data = json.loads(sse.data)
    except ValueError as exc:
        raise ServiceUnavailableError(f"{url} streamed an event that is not JSON") from exc
    if sse.event == "error":
        raise wire.error_from(data, 503)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ServiceUnavailableError(f"{url} streamed an event without a type: {sse.data[:200]}")
    return data


def exit_result(event: dict[str, Any], url: str) -> dict[str, Any]:
    """Return the result dict of an exit event.

    Raises:
        ServiceUnavailableError: the event carries no result.
    """
    result = event.get("result")
    if not isinstance(result, dict):
        raise ServiceUnavailableError(f"{url} streamed an exit event without a result")
    local: dict[str, Any] = wire.result_from_wire(result)
    return local


def no_exit(url: str) -> ServiceUnavailableError:
    """Return the error of a stream that ended before its exit event."""
    return ServiceUnavailableError(
        f"the stream from {url} ended before the run's exit event (the server stopped or the "
        "connection broke); the run may be in its records: get_execution(execution_id)"
    )


def field(answer: Any, key: str, kind: type, url: str) -> Any:
    """Return ``answer[key]``, which must be a ``kind``.

    Raises:
        ServiceUnavailableError: the answer is not a dict with such a value.
    """
    value = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ServiceUnavailableError(f"{url} answered without {key!r}: {str(answer)[:200]}")
    return value


def info_of(answer: Any, url: str) -> dict[str, Any]:
    """Return a session's info dict.

    Raises:
        ServiceUnavailableError: the answer is not one (no ``session_id``).
    """
    if not isinstance(answer, dict) or not isinstance(answer.get("session_id"), str):
        raise ServiceUnavailableError(f"{url} answered without a session: {str(answer)[:200]}")
    return answer


def dicts(answer: Any, key: str, url: str) -> list[dict[str, Any]]:
    """Return the list ``answer[key]`` (results, policies).

    Raises:
        ServiceUnavailableError: the answer has no such list.
    """
    found: list[dict[str, Any]] = field(answer, key, list, url)
    return found


# --------------------------------------------------------------------------- requests


def encode(body: object, check: Callable[[], object] | None) -> bytes:
    """Return a body as JSON bytes (lone surrogates escaped, so the server judges them).

    A value JSON cannot hold is refused here: ``check`` runs the local API's own checks on the
    arguments, so the caller gets the very error a local call gives.
    """
    try:
        return json.dumps(body, allow_nan=False).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        if check is not None:
            check()
        raise RequestError(
            f"the arguments cannot be sent as JSON ({exc}): pass dicts, lists, strings, "
            "numbers (not NaN or infinity), booleans and None"
        ) from exc


def plain(value: object) -> object:
    """A mapping as a dict (JSON writes tuples as lists, and refuses what it cannot hold)."""
    return dict(value) if isinstance(value, Mapping) else value


def iso(value: object) -> object:
    """A date or datetime as ISO 8601 text (a bare date stays a date); anything else as is."""
    return value.isoformat() if isinstance(value, date) else value


def policy_body(spec: object) -> object:
    """A ``sandbox_policy`` as JSON: a shipped Policy as its name, another Policy as its dict.

    A path goes as its text: the server refuses it (it names a file on the server's disk).
    """
    if isinstance(spec, Policy):
        if spec.name in shipped_policy_names() and spec == load_policy(spec.name):
            return spec.name  # the server takes a shipped policy by name only
        return spec.model_dump(mode="json")
    if isinstance(spec, os.PathLike):
        return os.fspath(spec)
    return plain(spec)


def run_body(
    code: object,
    language: object,
    parameters: object,
    timeout_seconds: object,
    sandbox_policy: object,
    track_resources: object,
    record: object,
    files: object = None,
    capture_figures: object = True,
    image: object = None,
    requirements: object = None,
) -> dict[str, Any]:
    """The body of an execute call: ``execute_code``'s keyword names and values.

    ``files`` go as JSON (:func:`athena.service.wire.files_to_wire`: bytes as base64);
    ``capture_figures``, ``image`` and ``requirements`` only when they differ from the
    defaults, so a body stays what an older server takes.
    """
    body = {
        "code": code,
        "language": language,
        "parameters": plain(parameters),
        "timeout_seconds": timeout_seconds,
        "sandbox_policy": policy_body(sandbox_policy),
        "track_resources": track_resources,
        "record": record,
    }
    return {**body, **extras(files, capture_figures, image, requirements)}


def extras(
    files: object, capture_figures: object, image: object, requirements: object = None
) -> dict[str, Any]:
    """The fields of issue 12 a body carries when they are not their defaults."""
    found: dict[str, Any] = {}
    if requirements is not None:
        found["requirements"] = listed_specs(requirements)
    if files is not None:
        found["files"] = wire.files_to_wire(files)
    if capture_figures is not True:
        found["capture_figures"] = capture_figures
    if image is not None:
        found["image"] = image
    return found


def listed_specs(requirements: object) -> object:
    """Requirements as a JSON list (a tuple or other sequence of specs; text as is)."""
    if isinstance(requirements, Iterable) and not isinstance(requirements, str | bytes | Mapping):
        return list(requirements)
    return requirements


def listed(calls: object) -> object:
    """A batch's calls as a list of call bodies (anything else as is, for the server to judge)."""
    if isinstance(calls, Iterable) and not isinstance(calls, str | bytes | Mapping):
        return [call_body(call) for call in calls]
    return calls


def call_body(call: object) -> object:
    """One batch call as a JSON body (its policy and parameters made plain)."""
    if not isinstance(call, Mapping):
        return call
    body = dict(call)
    if "parameters" in body:
        body["parameters"] = plain(body["parameters"])
    if body.get("files") is not None:
        body["files"] = wire.files_to_wire(body["files"])
    if body.get("requirements") is not None:
        body["requirements"] = listed_specs(body["requirements"])
    if "sandbox_policy" in body:
        body["sandbox_policy"] = policy_body(body["sandbox_policy"])
    return body


def check_policy(spec: object) -> None:
    """Raise what loading this policy raises locally (a path is left to the server)."""
    if not isinstance(spec, str | os.PathLike):  # a path is the server's to refuse
        load_policy(spec)  # type: ignore[arg-type]


def check_run(
    code: object, language: object, parameters: object, timeout: object, spec: object
) -> None:
    """Raise what a local call raises for these arguments (the policy first, as there)."""
    check_policy(spec)
    ExecutionRequest.create(code, language, parameters, timeout)  # type: ignore[arg-type]


def check_calls(calls: object) -> None:
    """Raise what a local batch raises for the first call JSON cannot hold."""
    for index, call in enumerate(calls if isinstance(calls, list) else []):
        try:
            json.dumps(call, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            if not isinstance(call, dict):
                raise RequestError(
                    f"calls[{index}]: a call must be a dict of execute_code's arguments, "
                    f"not {type(call).__name__}"
                ) from None
            fields = (call.get("code"), call.get("language", "python"), call.get("parameters"))
            try:
                check_run(*fields, call.get("timeout_seconds"), call.get("sandbox_policy"))
            except (RequestError, PolicyError) as exc:
                raise type(exc)(f"calls[{index}]: {exc}") from exc


def execution_path(execution_id: object) -> str:
    """Return the URL path of a recorded execution.

    Raises:
        RequestError: what a local ``get_execution`` raises for an id no URL path can carry
            (not a string, empty, too long, a lone surrogate).
    """
    return f"/v1/executions/{quote(check_execution_id(execution_id), safe='')}"


def policy_path(name: object) -> str:
    """Return the URL path of a shipped policy.

    Raises:
        RequestError: ``name`` is not a string (as locally).
        PolicyNotFoundError: ``name`` is empty (as locally: no URL path can carry it).
    """
    if not isinstance(name, str):
        raise RequestError(f"a policy name must be a string, not {type(name).__name__}")
    if not name:
        get_shipped_policy(name)
    check_text(name, "name")
    return f"/v1/policies/{quote(name, safe='')}"


def check_validate(code: object, procedure_id: object) -> None:
    """Raise what a local ``validate_procedure_code`` raises before reading the store."""
    if not isinstance(code, str):
        raise RequestError(f"code must be a string, not {type(code).__name__}")
    if procedure_id is not None:
        checks.object_id(procedure_id, "procedure_id")
