"""RemoteMemoryAPI's pure parts over httpx.MockTransport: bodies, errors, streams, signatures.

The server itself is exercised in tests/integration/test_remote_client.py; here a mock
transport stands for it, so each test pins exactly what goes on the wire and what comes back.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from athena.api import MemoryAPI
from athena.service import wire
from athena.service.client import (
    CONNECT_TIMEOUT_SECONDS,
    RUN_MARGIN_SECONDS,
    RemoteMemoryAPI,
    RemoteSession,
)
from athena.sessions import SandboxSession
from memory_store.errors import RecordNotFoundError, StoreError
from memory_store.requests import NewMemory
from orchestrator.errors import (
    PolicyError,
    PolicyNotFoundError,
    RequestError,
    SessionEndedError,
    UnknownLanguageError,
)
from orchestrator.models import ExecutionRequest
from orchestrator.policy import load_policy

URL = "http://sandbox.test:8000"
RESULT = {"success": True, "execution_id": "e1", "stdout": "hi\n", "exit_code": 0}
Handler = Callable[[httpx.Request], httpx.Response]

# What only one side has: the local factories and views, and the remote address.
LOCAL_ONLY = {"create", "connect", "store", "orchestrator", "for_tenant"}
REMOTE_ONLY = {"url"}


class Wire:
    """A mock server: records each request and answers with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.handler(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


def client(handler: Handler, token: str | None = "ath_secret") -> tuple[RemoteMemoryAPI, Wire]:
    mock = Wire(handler)
    api = RemoteMemoryAPI(URL, token=token, transport=httpx.MockTransport(mock))
    return api, mock


def answer(body: Any, status: int = 200, **headers: str) -> Handler:
    return lambda _request: httpx.Response(status, json=body, headers=headers)


def refuse(error_type: str, message: str, status: int = 400, **headers: str) -> Handler:
    return answer(wire.envelope(error_type, message), status, **headers)


def never(_request: httpx.Request) -> httpx.Response:
    raise AssertionError("no request should have been sent")


def sse(*events: dict[str, Any], comment: bool = True) -> bytes:
    """The bytes of an event stream: each event as ``event:``/``data:``, with a keep-alive."""
    text = ": keep-alive\n\n" if comment else ""
    for event in events:
        text += f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
    return text.encode()


def streaming(body: bytes, chunk: int = 7) -> Handler:
    """Answer with an event stream delivered in small chunks (lines split across reads)."""

    def handle(_request: httpx.Request) -> httpx.Response:
        parts = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=ChunkStream(parts)
        )

    return handle


class ChunkStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body in chunks that records whether the client closed it."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self.parts

    async def __aiter__(self) -> Any:
        for part in self.parts:
            yield part

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


EVENTS = [
    {"type": "begin", "elapsed_ms": 1.0, "sandbox_id": "abc"},
    {"type": "stdout", "elapsed_ms": 2.0, "text": "hi\n"},
    {"type": "stderr", "elapsed_ms": 3.0, "text": "warn: é\r\n"},
    {"type": "exit", "elapsed_ms": 4.0, "exit_code": 0, "result": RESULT},
]


# --------------------------------------------------------------------------- the same API


def public_methods(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }


def same_signature(remote: Any, local: Any) -> inspect.Signature:
    """The local signature, its session return type renamed to the remote one's."""
    signature = inspect.signature(local)
    if signature.return_annotation == "SandboxSession":
        return signature.replace(return_annotation="RemoteSession")
    return signature


def assert_same_methods(remote_cls: type, local_cls: type, local_only: set[str]) -> None:
    local = public_methods(local_cls)
    remote = public_methods(remote_cls)
    assert set(local) - local_only == set(remote) - REMOTE_ONLY
    for name in set(remote) - REMOTE_ONLY:
        if isinstance(local[name], property):  # read-only properties on both sides
            assert isinstance(remote[name], property) and remote[name].fset is None, name
            assert remote[name].fget.__annotations__ == local[name].fget.__annotations__, name
            continue
        assert inspect.signature(remote[name]) == same_signature(remote[name], local[name]), name
        assert inspect.iscoroutinefunction(remote[name]) == inspect.iscoroutinefunction(
            local[name]
        ), name


def test_the_remote_api_has_the_local_methods_and_signatures() -> None:
    """Every public method of MemoryAPI is on RemoteMemoryAPI with the very same signature."""
    assert_same_methods(RemoteMemoryAPI, MemoryAPI, LOCAL_ONLY)
    assert {"open_session", "session", "sessions", "replay_session"} <= set(
        public_methods(RemoteMemoryAPI)
    )


def test_the_remote_session_has_the_local_session_methods_and_signatures() -> None:
    """RemoteSession has SandboxSession's methods and properties with the same signatures."""
    assert_same_methods(RemoteSession, SandboxSession, set())
    assert "replayed" in RemoteSession(None, {"session_id": "s"}).__dict__  # type: ignore[arg-type]


def test_connect_returns_a_remote_api() -> None:
    """MemoryAPI.connect(url, token=..., timeout=...) builds a RemoteMemoryAPI for that URL."""
    with MemoryAPI.connect(URL + "/", token="ath_x", timeout=30.0) as api:
        assert isinstance(api, RemoteMemoryAPI) and api.url == URL
    connect = inspect.signature(MemoryAPI.connect)
    assert list(connect.parameters) == ["url", "token", "timeout"]
    assert connect.parameters["timeout"].kind is inspect.Parameter.KEYWORD_ONLY


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host", "http://", 8000, ""])
def test_a_url_that_is_not_http_is_refused(url: Any) -> None:
    """A URL without http(s) and a host is a RequestError saying what to give."""
    with pytest.raises(RequestError, match="http"):
        RemoteMemoryAPI(url)


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan, True, "5", 10**400])
def test_a_bad_timeout_is_refused(timeout: Any) -> None:
    """The client timeout must be a positive finite number of seconds."""
    with pytest.raises(RequestError, match="timeout"):
        RemoteMemoryAPI(URL, timeout=timeout)


def test_the_token_is_sent_as_a_bearer_and_never_shown() -> None:
    """The token goes in the Authorization header; repr shows the URL only."""
    api, mock = client(answer({"policies": []}), token="ath_secret")
    api.list_policies()
    assert mock.last.headers["authorization"] == "Bearer ath_secret"
    assert "ath_secret" not in repr(api) and URL in repr(api)


def test_without_a_token_no_authorization_is_sent() -> None:
    """token=None (a server without --tokens) sends no Authorization header."""
    api, mock = client(answer({"policies": []}), token=None)
    api.list_policies()
    assert "authorization" not in mock.last.headers


def test_a_closed_client_says_so() -> None:
    """A call after close() is a ServiceError saying the client is closed."""
    api, _ = client(never)
    with api:
        pass
    with pytest.raises(wire.ServiceError, match="closed"):
        api.remember("x")


# --------------------------------------------------------------------------- requests


def test_execute_code_posts_every_argument() -> None:
    """execute_code posts the local keyword names and values and returns the result dict."""
    api, mock = client(answer(RESULT))
    result = api.execute_code(
        "print(1)", "js", {"n": 1}, 5, "research", track_resources=True, record=False
    )
    assert result == RESULT
    assert (mock.last.method, mock.last.url.path) == ("POST", "/v1/execute")
    assert mock.body() == {
        "code": "print(1)",
        "language": "js",
        "parameters": {"n": 1},
        "timeout_seconds": 5,
        "sandbox_policy": "research",
        "track_resources": True,
        "record": False,
    }


def test_policies_are_sent_as_names_dicts_or_path_text(tmp_path: Path) -> None:
    """A shipped Policy goes by name, another as its dict, a path as its text (the server judges)."""
    api, mock = client(answer(RESULT))
    api.execute_code("1", sandbox_policy=load_policy("research"))
    assert mock.body()["sandbox_policy"] == "research"
    custom = load_policy({"extends": "strict", "limits": {"timeout_seconds": 9}})
    api.execute_code("1", sandbox_policy=custom)
    assert mock.body()["sandbox_policy"] == custom.model_dump(mode="json")
    assert mock.body()["sandbox_policy"]["extends"] == "strict"
    api.execute_code("1", sandbox_policy={"extends": "strict", "limits": {"timeout_seconds": 9}})
    assert mock.body()["sandbox_policy"] == {"extends": "strict", "limits": {"timeout_seconds": 9}}
    api.execute_code("1", sandbox_policy=tmp_path / "p.yaml")
    assert mock.body()["sandbox_policy"] == str(tmp_path / "p.yaml")


def test_a_lone_surrogate_is_sent_for_the_server_to_judge() -> None:
    """Text with a lone surrogate is escaped in the JSON, not refused by the client."""
    api, mock = client(refuse("RequestError", "code holds a lone surrogate"))
    with pytest.raises(RequestError, match="lone surrogate"):
        api.execute_code("print('\ud800')")
    assert mock.body()["code"] == "print('\ud800')"


def test_run_timeouts_cover_the_run() -> None:
    """Connecting gives up soon; reading waits the client timeout or the run's plus a margin."""
    api, mock = client(answer(RESULT))
    api.execute_code("1")
    assert mock.last.extensions["timeout"]["connect"] == CONNECT_TIMEOUT_SECONDS
    assert mock.last.extensions["timeout"]["read"] == 300.0
    api.execute_code("1", timeout_seconds=1000)
    assert mock.last.extensions["timeout"]["read"] == 1000 + RUN_MARGIN_SECONDS
    api.execute_code("1", timeout_seconds=10**400)  # the server says what is wrong with it
    assert mock.last.extensions["timeout"]["read"] == 300.0


def test_memory_calls_post_their_arguments() -> None:
    """Each memory method posts its keyword names to its route and returns the plain value."""
    api, mock = client(answer({"id": 7}))
    assert api.remember("fact", "semantic", {"k": 1}, ["a"]) == 7
    assert (mock.last.url.path, mock.body()) == (
        "/v1/memories",
        {"content": "fact", "memory_type": "semantic", "context": {"k": 1}, "tags": ["a"]},
    )
    assert api.remember_event("error", "it broke", "failure") == 7
    assert mock.body() == {
        "event_type": "error",
        "content": "it broke",
        "outcome": "failure",
        "context": None,
    }
    assert api.remember_procedure("deploy", ["build", {"description": "ship"}]) == 7
    assert mock.body()["steps"] == ["build", {"description": "ship"}]
    assert api.remember_entity("db", "service") == 7
    assert api.relate_entities(1, 2, "uses") == 7
    assert (mock.last.url.path, mock.body()["relation_type"]) == ("/v1/relations", "uses")


def test_recall_events_sends_dates_as_iso_text() -> None:
    """Dates and datetimes become ISO 8601 text (a bare date stays a date: a whole day)."""
    api, mock = client(answer({"results": [{"id": 1}]}))
    start = datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
    assert api.recall_events("deploy", None, start, date(2026, 11, 2), 3) == [{"id": 1}]
    assert mock.body() == {
        "query": "deploy",
        "event_type": None,
        "start_date": "2026-11-01T08:30:00+00:00",
        "end_date": "2026-11-02",
        "limit": 3,
    }


def test_ids_in_the_path_are_checked_as_locally() -> None:
    """forget and generate_procedure_code put the id in the URL after the local id check."""
    api, mock = client(answer({"forgotten": True}))
    assert api.forget("12") is True  # type: ignore[arg-type]
    assert (mock.last.method, mock.last.url.path) == ("DELETE", "/v1/records/12")
    bad: Any
    for bad in (0, "x", True, 1.5):
        with pytest.raises(RequestError, match="memory_id"):
            api.forget(bad)
    with pytest.raises(RequestError, match="procedure_id must be 1 or more"):
        api.generate_procedure_code(0)
    assert len(mock.requests) == 1


def test_a_code_generator_cannot_cross_the_wire() -> None:
    """generate_procedure_code(generator=...) is a RequestError; nothing is sent."""
    api, _ = client(never)
    with pytest.raises(RequestError, match="generator cannot be sent"):
        api.generate_procedure_code(1, generator=lambda procedure: "print(1)")


def test_get_execution_is_none_for_an_unknown_id() -> None:
    """A 404 ExecutionNotFound is None; the id is quoted into the path."""
    api, mock = client(refuse("ExecutionNotFound", "no execution has this id", 404))
    assert api.get_execution("a/b c") is None
    assert mock.last.url.raw_path == b"/v1/executions/a%2Fb%20c"


def test_get_execution_raises_other_errors() -> None:
    """Any other error of the route is raised, not taken for an unknown id."""
    api, _ = client(refuse("StoreError", "database is locked", 503))
    with pytest.raises(StoreError, match="locked"):
        api.get_execution("abc")


def test_batch_posts_the_calls_and_returns_the_results() -> None:
    """execute_code_batch posts calls (policies as dicts) and concurrency; returns results."""
    api, mock = client(answer({"results": [RESULT, RESULT]}))
    strict = load_policy({"extends": "strict", "limits": {"timeout_seconds": 9}})
    calls: list[dict[str, Any]] = [{"code": "1"}, {"code": "2", "sandbox_policy": strict}]
    assert api.execute_code_batch(iter(calls), concurrency=2) == [RESULT, RESULT]  # type: ignore[arg-type]
    body = mock.body()
    assert body["concurrency"] == 2 and body["calls"][0] == {"code": "1"}
    assert body["calls"][1]["sandbox_policy"] == strict.model_dump(mode="json")


def test_small_answers_become_plain_values() -> None:
    """prewarm, list_policies, get_policy, consolidate, validate return the server's values."""
    api, mock = client(answer({"ready": True}))
    assert api.prewarm("bash", "strict") is True
    assert mock.body() == {"language": "bash", "sandbox_policy": "strict"}
    api, mock = client(answer({"policies": [{"name": "strict"}]}))
    assert api.list_policies() == [{"name": "strict"}]
    api, mock = client(answer({"name": "strict"}))
    assert api.get_policy("strict") == {"name": "strict"}
    assert mock.last.url.path == "/v1/policies/strict"
    api, mock = client(answer({"strategy": "speed"}))
    assert api.consolidate("speed", 2) == {"strategy": "speed"}
    assert mock.body() == {"strategy": "speed", "days_back": 2}


# --------------------------------------------------------------------------- JSON cannot hold it


def local_error(call: Callable[[], object]) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


@pytest.mark.parametrize(
    ("remote", "local"),
    [
        (
            lambda api: api.execute_code("1", parameters={"s": {1, 2}}),
            lambda: ExecutionRequest.create("1", parameters={"s": {1, 2}}),
        ),
        (
            lambda api: api.execute_code("1", timeout_seconds=math.nan),
            lambda: ExecutionRequest.create("1", timeout_seconds=math.nan),
        ),
        (
            lambda api: api.remember("x", context={"when": datetime(2026, 1, 1)}),
            lambda: NewMemory.create("x", context={"when": datetime(2026, 1, 1)}),
        ),
        (
            lambda api: api.execute_code(b"print(1)"),
            lambda: ExecutionRequest.create(b"print(1)"),  # type: ignore[arg-type]
        ),
    ],
)
def test_what_json_cannot_hold_gets_the_local_error(
    remote: Callable[[RemoteMemoryAPI], object], local: Callable[[], object]
) -> None:
    """A value JSON cannot carry raises the local API's class and message; nothing is sent."""
    api, _ = client(never)
    expected = local_error(local)
    with pytest.raises(type(expected)) as caught:
        remote(api)
    assert str(caught.value) == str(expected)


def test_an_unsendable_batch_call_names_its_index() -> None:
    """A batch call JSON cannot hold is refused with its index, as a local batch does."""
    api, _ = client(never)
    with pytest.raises(RequestError, match=r"^calls\[1\]: parameters must be JSON-serialisable"):
        api.execute_code_batch([{"code": "1"}, {"code": "2", "parameters": {"x": {1}}}])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("error_type", "status", "cls", "builtin"),
    [
        ("RequestError", 400, RequestError, ValueError),
        ("UnknownLanguageError", 400, UnknownLanguageError, LookupError),
        ("PolicyError", 400, PolicyError, ValueError),
        ("PolicyNotFoundError", 400, PolicyNotFoundError, LookupError),
        ("RecordNotFoundError", 404, RecordNotFoundError, LookupError),
        ("StoreError", 503, StoreError, Exception),
        ("Unauthorized", 401, wire.AuthenticationError, PermissionError),
        ("PayloadTooLarge", 413, wire.PayloadTooLargeError, ValueError),
        ("Draining", 503, wire.ServiceUnavailableError, ConnectionError),
    ],
)
def test_error_envelopes_raise_the_local_classes(
    error_type: str, status: int, cls: type[Exception], builtin: type[Exception]
) -> None:
    """Each envelope type raises its class (and builtin) with the server's message as is."""
    api, _ = client(refuse(error_type, "the server's words", status))
    with pytest.raises(cls) as caught:
        api.recall("q")
    assert isinstance(caught.value, builtin)
    assert str(caught.value) == "the server's words"


def test_too_many_runs_carries_retry_after() -> None:
    """A 429 TooManyRuns raises TooManyRunsError with the Retry-After seconds; no retry."""
    api, mock = client(refuse("TooManyRuns", "8 runs in flight", 429, **{"Retry-After": "3"}))
    with pytest.raises(wire.TooManyRunsError) as caught:
        api.execute_code("1")
    assert caught.value.retry_after == 3.0 and len(mock.requests) == 1


def test_a_422_is_a_request_error_naming_the_field() -> None:
    """A validation error (422) is a RequestError with the server's message."""
    body = wire.envelope("RequestError", "body.limit: not a number", fields=[])
    api, _ = client(answer(body, 422))
    with pytest.raises(RequestError, match=r"body\.limit"):
        api.recall("q", limit="many")  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [200, 404, 502])
def test_an_answer_that_is_not_json_is_service_unavailable(status: int) -> None:
    """HTML from a proxy or another server is a ServiceUnavailableError naming the URL."""
    api, _ = client(lambda _r: httpx.Response(status, html="<h1>Bad gateway</h1>"))
    with pytest.raises(wire.ServiceUnavailableError, match="not the JSON") as caught:
        api.remember("x")
    assert URL in str(caught.value)


def test_an_answer_without_the_field_is_service_unavailable() -> None:
    """A JSON answer without the expected field (another service) is ServiceUnavailableError."""
    api, _ = client(answer({"hello": "world"}))
    with pytest.raises(wire.ServiceUnavailableError, match="'id'"):
        api.remember("x")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_server_names_the_url_and_what_to_check() -> None:
    """Nothing listening: ServiceUnavailableError (a ConnectionError) naming URL and serve."""
    url = f"http://127.0.0.1:{free_port()}"
    with RemoteMemoryAPI(url) as api, pytest.raises(ConnectionError) as caught:
        api.remember("x")
    assert isinstance(caught.value, wire.ServiceUnavailableError)
    assert url in str(caught.value) and "athena-sandbox serve" in str(caught.value)


# --------------------------------------------------------------------------- streams


def test_stream_yields_the_events_in_order() -> None:
    """SSE split across reads, with keep-alives, gives the event dicts; exit ends it."""
    api, mock = client(streaming(sse(*EVENTS)))
    events = list(api.execute_code_stream("print('hi')", "python"))
    assert events == EVENTS
    assert mock.last.url.path == "/v1/execute/stream"
    assert mock.last.headers["accept"] == "text/event-stream"


def test_callbacks_get_the_output_and_the_result_comes_back() -> None:
    """execute_code with on_stdout/on_stderr streams, feeds them, and returns the result."""
    api, mock = client(streaming(sse(*EVENTS)))
    out: list[str] = []
    err: list[str] = []
    assert api.execute_code("x", on_stdout=out.append, on_stderr=err.append) == RESULT
    assert (out, err) == (["hi\n"], ["warn: é\r\n"])
    assert mock.last.url.path == "/v1/execute/stream"


def test_a_refused_stream_raises_at_the_call() -> None:
    """An error before the run is raised by the call itself, before any iteration."""
    api, _ = client(refuse("UnknownLanguageError", "unknown language 'cobol'"))
    with pytest.raises(UnknownLanguageError, match="cobol"):
        api.execute_code_stream("1", "cobol")


def test_closing_the_stream_early_closes_the_response() -> None:
    """Closing the iterator after one event closes the HTTP response (the server kills the run)."""
    bodies: list[ChunkStream] = []

    def handle(request: httpx.Request) -> httpx.Response:
        response = streaming(sse(*EVENTS), chunk=1000)(request)
        bodies.append(response.stream)  # type: ignore[arg-type]
        return response

    api, _ = client(handle)
    stream = api.execute_code_stream("1")
    assert next(stream)["type"] == "begin"
    stream.close()  # type: ignore[attr-defined]
    assert bodies[0].closed
    with pytest.raises(StopIteration):
        next(stream)


def test_a_stream_without_exit_is_service_unavailable() -> None:
    """A stream that ends before the exit event raises ServiceUnavailableError."""
    api, _ = client(streaming(sse(*EVENTS[:2])))
    stream = api.execute_code_stream("1")
    with pytest.raises(wire.ServiceUnavailableError, match="ended before"):
        list(stream)


def test_an_error_event_raises_its_class() -> None:
    """An ``error`` event mid-stream raises the class its envelope names."""
    body = sse(EVENTS[0]) + b"event: error\ndata: "
    body += json.dumps(wire.envelope("Draining", "the server is shutting down")).encode() + b"\n\n"
    api, _ = client(streaming(body))
    with pytest.raises(wire.ServiceUnavailableError, match="shutting down"):
        list(api.execute_code_stream("1"))


def async_client(handler: Handler) -> tuple[RemoteMemoryAPI, Wire]:
    mock = Wire(handler)
    api = RemoteMemoryAPI(URL, async_transport=httpx.MockTransport(mock))
    return api, mock


def test_execute_code_async_streams_and_returns_the_result() -> None:
    """execute_code_async returns the exit event's result and calls on_event for each event."""
    api, mock = async_client(streaming(sse(*EVENTS)))
    seen: list[dict[str, Any]] = []
    assert asyncio.run(api.execute_code_async("1", on_event=seen.append)) == RESULT
    assert seen == EVENTS and mock.last.url.path == "/v1/execute/stream"


def test_execute_code_async_raises_the_servers_error() -> None:
    """An error answer to an async run raises the local class with the server's message."""
    api, _ = async_client(refuse("PolicyNotFoundError", "no policy 'x': strict, research"))
    with pytest.raises(PolicyNotFoundError, match="no policy 'x'"):
        asyncio.run(api.execute_code_async("1", sandbox_policy="x"))


class HangingStream(httpx.AsyncByteStream):
    """An event stream that sends ``begin`` and then nothing, until the client closes it."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def __aiter__(self) -> Any:
        yield sse(EVENTS[0])
        await self.closed.wait()

    async def aclose(self) -> None:
        self.closed.set()


def test_cancelling_the_async_run_closes_its_response() -> None:
    """Cancelling the task that awaits execute_code_async closes the HTTP response at once."""
    body = HangingStream()
    seen: list[dict[str, Any]] = []

    def handle(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    api, _ = async_client(handle)

    async def run_and_cancel() -> None:
        task = asyncio.ensure_future(api.execute_code_async("1", on_event=seen.append))
        while not seen:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(run_and_cancel(), 10))
    assert body.closed.is_set() and seen == [EVENTS[0]]


# --------------------------------------------------------------------------- files and sessions

INFO = {"session_id": "s1", "language": "python", "policy": "strict", "state": "open"}
ITEM = {"name": "o.bin", "size": 2, "sha256": "h", "mime_type": "application/octet-stream"}


def sessions_server(ended: set[str]) -> Handler:
    """A mock of the session routes: s1 is open until DELETE, then 410 with the reason."""

    def handle(request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if path.startswith("/v1/sessions/s1") and "s1" in ended:
            body = wire.envelope("SessionEndedError", "s1 ended: closed", reason="closed")
            return httpx.Response(410, json=body)
        if (method, path) == ("POST", "/v1/sessions"):
            return httpx.Response(201, json=INFO)
        if (method, path) == ("DELETE", "/v1/sessions/s1"):
            ended.add("s1")
            return httpx.Response(200, json={**INFO, "state": "ended"})
        if (method, path) == ("POST", "/v1/sessions/s1/execute/stream"):
            return streaming(sse(*EVENTS))(request)
        if (method, path) == ("POST", "/v1/sessions/s1/execute"):
            files = [{**ITEM, "content": "AP8="}]
            result = {**RESULT, "session_id": "s1", "files": files, "artifacts": []}
            return httpx.Response(200, json=result)
        return httpx.Response(200, json=INFO)

    return handle


def test_a_session_call_sends_files_as_base64_and_returns_bytes() -> None:
    """open_session posts its arguments; a call's bytes go as base64 and come back as bytes."""
    api, mock = client(sessions_server(set()))
    session = api.open_session("python", "strict", 60, 120, image="img")
    assert mock.body() == {
        "language": "python",
        "sandbox_policy": "strict",
        "idle_timeout_seconds": 60,
        "max_lifetime_seconds": 120,
        "image": "img",
    }
    result = session.execute_code("x", {"a": 1}, 5, {"in.bin": b"\x00\xff", "t.txt": "hé"})
    assert mock.last.url.path == "/v1/sessions/s1/execute"
    assert mock.body()["files"] == {"in.bin": {"base64": "AP8="}, "t.txt": "hé"}
    assert mock.body()["timeout_seconds"] == 5 and "capture_figures" not in mock.body()
    assert result["files"][0]["content"] == b"\x00\xff" and result["session_id"] == "s1"


def test_a_session_call_with_callbacks_is_streamed() -> None:
    """on_stdout/on_stderr stream the call from the session's stream route, chunk by chunk."""
    api, mock = client(sessions_server(set()))
    session = api.open_session()
    out: list[str] = []
    err: list[str] = []
    result = session.execute_code("x", on_stdout=out.append, on_stderr=err.append)
    assert mock.last.url.path == "/v1/sessions/s1/execute/stream"
    assert mock.last.headers["accept"] == "text/event-stream"
    assert (out, err, result) == (["hi\n"], ["warn: é\r\n"], RESULT)


def test_a_closed_session_raises_session_ended_with_the_servers_reason() -> None:
    """After close (idempotent) a call is a 410: SessionEndedError with the reason; closed."""
    api, mock = client(sessions_server(set()))
    with api.open_session() as session:
        assert not session.closed
    assert (mock.last.method, mock.last.url.path) == ("DELETE", "/v1/sessions/s1")
    assert session.closed and session.info()["state"] == "ended"
    session.close()  # nothing more is sent
    with pytest.raises(SessionEndedError) as caught:
        session.execute_code("1")
    assert caught.value.reason == "closed" and "s1 ended" in str(caught.value)


@pytest.mark.parametrize("session_id", ["", "a/b", 7, "x" * 257])
def test_an_id_no_session_can_have_is_refused_before_sending(session_id: Any) -> None:
    """An id that no URL path can carry raises SessionEndedError, as a local lookup does."""
    api, _ = client(never)
    with pytest.raises(SessionEndedError):
        api.session(session_id)


def test_replay_returns_a_session_with_the_replayed_results() -> None:
    """replay_session posts to the recorded id; the results come back with bytes contents."""
    replayed = [{**RESULT, "files": [{**ITEM, "content": "AP8="}], "artifacts": []}]
    api, mock = client(answer({"session": {**INFO, "session_id": "s2"}, "replayed": replayed}))
    session = api.replay_session("s1", idle_timeout_seconds=30, files={"a": b"\x01"})
    assert mock.last.url.path == "/v1/sessions/s1/replay"
    assert mock.body() == {
        "idle_timeout_seconds": 30,
        "max_lifetime_seconds": 3600,
        "files": {"a": {"base64": "AQ=="}},
    }
    assert session.session_id == "s2" and session.replayed[0]["files"][0]["content"] == b"\x00\xff"
