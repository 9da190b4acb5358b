"""The service's pure parts: auth and body-limit middleware, the in-flight limiter, statuses."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from athena.service import http_runs, schemas, wire
from athena.service.asgi import (
    TENANT_KEY,
    AuthMiddleware,
    BodyLimitMiddleware,
    Message,
    bearer_token,
    carries_files,
)
from athena.service.gate import check_recorded_policy
from athena.service.http import error_response, status_of
from athena.service.inflight import InFlight
from athena.service.metrics import outcome_of
from athena.service.serve import check_listen, is_loopback
from athena.service.tokens import Tenant, TokenFile, local_tenant
from athena.service.wire import ServiceUnavailableError, TooManyRunsError
from memory_store.errors import RecordNotFoundError, StoreError
from orchestrator.errors import (
    PolicyError,
    PolicyNotFoundError,
    QueueFullError,
    RequestError,
    SessionEndedError,
    UnknownLanguageError,
)
from orchestrator.models import ExecutionResult, Violation
from orchestrator.policy import load_policy


class Recorder:
    """A fake next app: remembers the scope and the body it read, answers 204."""

    def __init__(self) -> None:
        self.called = False
        self.body = b""
        self.scope: dict[str, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called, self.scope = True, scope
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _scope(path: str = "/v1/execute", headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }


def _call(
    app: Any, scope: dict[str, Any], chunks: list[bytes], stay: bool = False
) -> tuple[list[Message], int]:
    """Drive an ASGI app; return what it sent and how many body messages it read.

    After the body the client hangs up, unless it is to ``stay`` (then it waits forever).
    """
    sent: list[Message] = []
    reads = 0

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        if reads <= len(chunks):
            return {
                "type": "http.request",
                "body": chunks[reads - 1],
                "more_body": reads < len(chunks),
            }
        if stay:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, reads


def _status(sent: list[Message]) -> int:
    return int(sent[0]["status"])


def _body(sent: list[Message]) -> Any:
    return json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[TokenFile, str]:
    """A token file with one token for tenant alice."""
    file = TokenFile(tmp_path / "tokens.json")
    _info, token = file.add("alice")
    return file, token


def test_missing_token_is_401_before_the_body_is_read(tokens: tuple[TokenFile, str]) -> None:
    """No token: 401 with the envelope and WWW-Authenticate, and not one body read."""
    inner = Recorder()
    sent, reads = _call(AuthMiddleware(inner, tokens[0], local_tenant()), _scope(), [b"x" * 10])
    assert _status(sent) == 401 and reads == 0 and not inner.called
    assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
    assert _body(sent) == {
        "error": {"type": "Unauthorized", "message": "a valid bearer token is required"}
    }


def test_wrong_token_gets_the_same_401(tokens: tuple[TokenFile, str]) -> None:
    """A wrong token and a malformed header answer exactly like a missing one."""
    for header in (f"Bearer {tokens[1]}x", f"Basic {tokens[1]}", "Bearer"):
        scope = _scope(headers={"Authorization": header})
        sent, reads = _call(AuthMiddleware(Recorder(), tokens[0], local_tenant()), scope, [b""])
        assert _status(sent) == 401 and reads == 0
        assert _body(sent)["error"]["message"] == "a valid bearer token is required"


def test_a_valid_token_puts_its_tenant_in_the_scope(tokens: tuple[TokenFile, str]) -> None:
    """The tenant of the token is in scope["state"]["athena_tenant"]."""
    inner = Recorder()
    scope = _scope(headers={"Authorization": f"bearer {tokens[1]}"})
    _call(AuthMiddleware(inner, tokens[0], local_tenant()), scope, [b"{}"])
    assert inner.scope["state"]["athena_tenant"].name == "alice"


def test_health_paths_and_no_token_mode_need_no_token(tokens: tuple[TokenFile, str]) -> None:
    """/healthz and /readyz are open; without a token file every request is the local tenant's."""
    sent, _ = _call(AuthMiddleware(Recorder(), tokens[0], local_tenant()), _scope("/readyz"), [])
    assert _status(sent) == 204
    inner = Recorder()
    _call(
        AuthMiddleware(inner, None, local_tenant()),
        _scope(headers={"Host": "127.0.0.1:8000"}),
        [b""],
    )
    assert inner.scope["state"]["athena_tenant"].name == "default"


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000", "[::1]"]
)
def test_no_token_mode_answers_loopback_names(host: str) -> None:
    """Without tokens, a request addressed to a loopback name is the local tenant's."""
    inner = Recorder()
    sent, _ = _call(
        AuthMiddleware(inner, None, local_tenant()), _scope(headers={"Host": host}), [b""]
    )
    assert _status(sent) == 204


@pytest.mark.parametrize(
    "host",
    [
        None,
        "evil.example:8000",
        "127.0.0.1.evil.example",
        "10.0.0.1:8000",
        "localhost.:80",
        "[::2]:8000",
    ],
)
def test_no_token_mode_refuses_other_host_names(host: str | None) -> None:
    """Without tokens, any other Host (a DNS-rebinding page's name) is a 401 saying why."""
    inner = Recorder()
    headers = {} if host is None else {"Host": host}
    sent, reads = _call(
        AuthMiddleware(inner, None, local_tenant()), _scope(headers=headers), [b"x"]
    )
    assert _status(sent) == 401 and reads == 0
    assert "127.0.0.1, localhost or [::1]" in _body(sent)["error"]["message"]


def test_content_length_over_the_limit_is_413_unread() -> None:
    """A declared length over the limit: 413 before any body read."""
    scope = _scope(headers={"Content-Length": "101"})
    sent, reads = _call(BodyLimitMiddleware(Recorder(), 100), scope, [b"x" * 101])
    assert _status(sent) == 413 and reads == 0
    assert _body(sent)["error"]["type"] == "PayloadTooLarge"


def test_chunked_body_is_cut_off_as_soon_as_it_is_over() -> None:
    """A body without a length: 413 at the chunk that goes over, later chunks unread."""
    inner = Recorder()
    sent, reads = _call(BodyLimitMiddleware(inner, 100), _scope(), [b"x" * 60] * 5)
    assert _status(sent) == 413 and reads == 2 and not inner.called


def test_a_body_within_the_limit_reaches_the_app_whole() -> None:
    """Chunks within the limit arrive as one body; later receives reach the server."""
    inner = Recorder()
    sent, _ = _call(BodyLimitMiddleware(inner, 100), _scope(), [b"ab", b"cd", b"ef"])
    assert _status(sent) == 204 and inner.body == b"abcdef"


def test_bearer_token_parsing() -> None:
    """Only ``Bearer <token>`` (any case) gives a token."""
    assert bearer_token(_scope(headers={"Authorization": "BEARER  abc "})) == "abc"
    assert bearer_token(_scope(headers={"Authorization": "Token abc"})) is None
    assert bearer_token(_scope()) is None


def test_in_flight_limit_and_batch_slots() -> None:
    """A tenant gets at most its limit; a batch takes what is free; over it: TooManyRuns."""
    limiter = InFlight()
    assert limiter.acquire("a", 3) == 1
    assert limiter.acquire("a", 3, wanted=5) == 2
    with pytest.raises(TooManyRunsError) as caught:
        limiter.acquire("a", 3)
    assert caught.value.retry_after >= 1 and "limit (3)" in str(caught.value)
    assert limiter.acquire("b", 1) == 1  # another tenant is not affected
    limiter.release("a", 2)
    with limiter.slots("a", 3, wanted=4) as granted:
        assert granted == 2 and limiter.counts() == {"a": 3, "b": 1}
    assert limiter.total() == 2


def test_status_of_each_error_class() -> None:
    """Each error class gets the status the spec gives it."""
    assert status_of(RequestError("x")) == 400
    assert status_of(UnknownLanguageError("x")) == 400
    assert status_of(PolicyNotFoundError("x")) == 400
    assert status_of(RecordNotFoundError("x")) == 404
    assert status_of(TooManyRunsError("x")) == 429
    assert status_of(QueueFullError("x")) == 429
    assert status_of(StoreError("x")) == 503
    assert status_of(SessionEndedError("x")) == 410


def test_a_session_ended_error_says_which_session_and_why() -> None:
    """A 410 envelope carries the session's id and the reason, which the client rebuilds."""
    response = error_response(SessionEndedError("over", session_id="s1", reason="idle"))
    body = json.loads(bytes(response.body))
    assert response.status_code == 410
    assert body["error"] == {
        "type": "SessionEndedError",
        "message": "over",
        "session_id": "s1",
        "reason": "idle",
    }
    rebuilt = wire.error_from(body, 410)
    assert isinstance(rebuilt, SessionEndedError)
    assert (str(rebuilt), rebuilt.session_id, rebuilt.reason) == ("over", "s1", "idle")


@pytest.mark.parametrize(
    ("path", "carries"),
    [
        ("/v1/execute", True),
        ("/v1/execute/stream", True),
        ("/v1/execute/batch", True),
        ("/v1/sessions/abc/execute", True),
        ("/v1/sessions/abc/replay", True),
        ("/v1/sessions/abc/execute/stream", True),
        ("/v1/sessions", False),
        ("/v1/sessions//execute", False),
        ("/v1/sessions/abc/execute/x", False),
        ("/v1/memories", False),
        ("/mcp", False),
    ],
)
def test_which_paths_take_files(path: str, carries: bool) -> None:
    """Only the routes whose bodies hold files get the larger body limit."""
    assert carries_files(path) is carries


def test_routes_with_files_have_the_larger_body_limit() -> None:
    """A body over the general limit reaches a files route, and is 413 anywhere else."""
    for path, status in (("/v1/sessions/s/execute", 204), ("/v1/memories", 413)):
        limiter = BodyLimitMiddleware(Recorder(), 100, files_max_bytes=1000)
        sent, _ = _call(limiter, _scope(path), [b"x" * 500])
        assert _status(sent) == status, path
    sent, _ = _call(BodyLimitMiddleware(Recorder(), 100, 1000), _scope(), [b"x" * 1001])
    assert _status(sent) == 413 and "1000 bytes" in _body(sent)["error"]["message"]


def test_files_cross_json_as_text_or_base64_and_come_back_as_bytes() -> None:
    """Input bytes go as base64 objects (text as text); results' contents round-trip exactly."""
    data = bytes(range(256))
    sent = wire.files_to_wire({"a.txt": "hé", "b.bin": data})
    assert sent == {"a.txt": "hé", "b.bin": {"base64": base64.b64encode(data).decode()}}
    assert wire.files_from_wire(json.loads(json.dumps(sent))) == {"a.txt": "hé", "b.bin": data}
    item = {"name": "b.bin", "size": 256, "sha256": "x", "mime_type": "m", "content": data}
    result = {"success": True, "files": [item], "artifacts": [{**item, "name": "f.png"}]}
    over_json = json.loads(json.dumps(wire.result_to_wire(result)))
    assert isinstance(over_json["files"][0]["content"], str)
    assert wire.result_from_wire(over_json) == result
    exit_event = {"type": "exit", "result": result}
    wired_event = json.loads(json.dumps(wire.event_to_wire(exit_event)))
    assert wire.event_from_wire(wired_event) == exit_event
    plain = {"success": True, "files": [], "artifacts": []}
    assert wire.result_to_wire(plain) is plain  # nothing to encode: nothing copied


def test_bad_base64_is_a_request_error_naming_the_file() -> None:
    """A files item whose base64 does not decode is refused before anything runs."""
    with pytest.raises(RequestError, match=r"files\['data.bin'\]\.base64"):
        wire.files_from_wire({"data.bin": {"base64": "not base64!"}})


def test_outcome_labels() -> None:
    """A result maps to one bounded outcome label."""

    def result(**fields: Any) -> ExecutionResult:
        return ExecutionResult(execution_id="e", language="python", **fields)

    timeout = Violation(category="timeout", message="killed")
    assert outcome_of(result(success=True)) == "success"
    assert outcome_of(result(success=False, error_type="RunCancelledError")) == "cancelled"
    assert outcome_of(result(success=False, violations=(timeout,))) == "timeout"
    assert outcome_of(result(success=False, error="Code validation failed")) == "rejected"
    assert outcome_of(result(success=False, error_type="QueueFullError")) == "error"
    assert outcome_of(result(success=False, exit_code=1)) == "failure"


def test_non_loopback_host_needs_tokens(tmp_path: Path) -> None:
    """Listening beyond loopback without a token file is refused, saying what to do."""
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_listen("127.0.0.1", None)
    check_listen("0.0.0.0", tmp_path / "tokens.json")
    with pytest.raises(RequestError, match="--tokens FILE"):
        check_listen("0.0.0.0", None)


def test_admission_counts_runs_waiting_for_a_place() -> None:
    """Admission.waiting (the queue-depth gauge) counts runs admitted but not yet running."""
    import threading

    from orchestrator.admission import Admission
    from orchestrator.run import CancelToken

    admission = Admission(running=1, queued=2, queue_wait=5.0)
    release = threading.Event()
    entered = threading.Event()

    def hold() -> None:
        with admission.slot(CancelToken()):
            entered.set()
            release.wait(10)

    first = threading.Thread(target=hold)
    first.start()
    entered.wait(5)
    second = threading.Thread(target=hold)
    second.start()
    deadline = time.monotonic() + 5
    while admission.waiting != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert admission.waiting == 1
    release.set()
    first.join(5)
    second.join(5)
    assert admission.waiting == 0


# --------------------------------------------------------------------------- FastExecute


class FakeRuns:
    """The parts of :class:`~athena.service.state.Service` a run goes through; runs are fakes."""

    def __init__(self) -> None:
        self.in_flight = InFlight()
        self.calls: list[dict[str, Any]] = []

    def refuse_if_draining(self) -> None:
        pass

    def view(self, _tenant: Any) -> FakeRuns:
        return self

    killed = False

    @contextmanager
    def running(self, _task: Any) -> Iterator[None]:
        yield

    dispatch = False  # whether a run gets as far as handing its code over
    fail_after_dispatch: Exception | None = None

    async def execute_code_async(self, **call: Any) -> dict[str, Any]:
        self.calls.append(call)
        if self.dispatch:  # from a worker thread, as the orchestrator calls it
            await asyncio.to_thread(call["on_dispatch"])
        if self.fail_after_dispatch is not None:
            raise self.fail_after_dispatch
        result: dict[str, Any] = {"success": True, "stdout": f"ran {call['code']}"}
        if call.get("files"):  # the files sent come back as output files, contents as bytes
            result["files"] = [
                {"name": name, "content": data if isinstance(data, bytes) else data.encode()}
                for name, data in call["files"].items()
            ]
        return result


def _fast(
    body: bytes,
    content_type: str = "application/json",
    query: bytes = b"",
    runs: FakeRuns | None = None,
) -> Any:
    """Drive FastExecute over a Recorder with ``body``; return (sent, recorder, runs, scope)."""
    runs, inner = runs or FakeRuns(), Recorder()
    app = http_runs.FastExecute(inner, runs, error_response)  # type: ignore[arg-type]
    scope = _scope(headers={"Content-Type": content_type})
    scope.update(query_string=query, state={TENANT_KEY: local_tenant()})
    sent, _reads = _call(app, scope, [body[:5], body[5:]], stay=runs.dispatch)
    return sent, inner, runs, scope


def test_a_valid_execute_body_is_run_without_the_router() -> None:
    """A valid body goes straight to the run; the next app (FastAPI) never sees the request."""
    sent, inner, runs, scope = _fast(b'{"code": "print(1)", "timeout_seconds": 5}')
    assert not inner.called
    assert _status(sent) == 200 and _body(sent) == {"success": True, "stdout": "ran print(1)"}
    assert runs.calls[0]["code"] == "print(1)" and runs.calls[0]["timeout_seconds"] == 5
    assert runs.calls[0]["sandbox_policy"].name == "strict"  # the tenant's gate still decides
    assert scope[http_runs.ROUTE_PATH_KEY] == "/v1/execute"


@pytest.mark.parametrize(
    ("body", "content_type", "query"),
    [
        (b'{"code": ', "application/json", b""),  # not JSON
        (b'{"code": 1}', "application/json", b""),  # a field of the wrong type
        (b'{"code": "1", "timeout": 5}', "application/json", b""),  # an unknown field
        (b'["print(1)"]', "application/json", b""),  # not an object
        (b'{"code": "\xff"}', "application/json", b""),  # not UTF-8
        (b'{"code": "print(1)"}', "text/plain", b""),  # another content type
        (b'{"code": "print(1)"}', "application/jsonp", b""),  # not a JSON type
        (b'{"code": "1", "files": {"a": 1}}', "application/json", b""),  # a file not text
        (b'{"code": "1", "files": {"a": {"b64": "AA=="}}}', "application/json", b""),
        (b'{"code": "1", "capture_figures": "no"}', "application/json", b""),
    ],
)
def test_anything_else_goes_to_the_route_with_its_body_intact(
    body: bytes, content_type: str, query: bytes
) -> None:
    """Whatever is not a plain valid run reaches FastAPI unchanged, to answer as it always did."""
    sent, inner, runs, _ = _fast(body, content_type, query)
    assert inner.called and inner.body == body
    assert _status(sent) == 204 and not runs.calls


FILES_BODY = {
    "code": "x",
    "files": {"a.txt": "hé", "b.bin": {"base64": "AP8="}},
    "capture_figures": False,
    "image": "athena-sandbox/python-custom",
}


def test_files_figures_and_image_take_the_fast_path_as_the_route_would() -> None:
    """The issue-12 fields reach the run exactly as the route's own call would pass them."""
    sent, inner, runs, _ = _fast(json.dumps(FILES_BODY).encode())
    assert not inner.called and _status(sent) == 200
    route_call = http_runs._call(schemas.ExecuteBody.model_validate(FILES_BODY), local_tenant())
    fast_call = runs.calls[0]
    assert fast_call["sandbox_policy"] == route_call.pop("sandbox_policy")
    assert callable(fast_call.pop("on_dispatch"))  # the early start's (see below)
    assert {k: v for k, v in fast_call.items() if k != "sandbox_policy"} == route_call
    assert fast_call["files"] == {"a.txt": "hé", "b.bin": b"\x00\xff"}
    assert fast_call["capture_figures"] is False
    assert fast_call["image"] == "athena-sandbox/python-custom"
    contents = [item["content"] for item in _body(sent)["files"]]
    assert contents == [base64.b64encode("hé".encode()).decode(), "AP8="]  # bytes as base64


def test_bad_base64_on_the_fast_path_is_the_routes_400() -> None:
    """A files item that is not base64 is a 400 RequestError naming it; nothing runs."""
    body = {"code": "x", "files": {"b.bin": {"base64": "@@"}}}
    sent, inner, runs, _ = _fast(json.dumps(body).encode())
    assert not inner.called and not runs.calls and _status(sent) == 400
    assert _body(sent)["error"]["type"] == "RequestError"
    assert "files['b.bin']" in _body(sent)["error"]["message"]


def test_what_the_run_raises_gets_the_routes_error_response() -> None:
    """A policy the gate refuses is the same 400 envelope the route's handler gives."""
    sent, inner, runs, _ = _fast(b'{"code": "1", "sandbox_policy": "lax"}')
    assert not inner.called and not runs.calls
    assert _status(sent) == 400
    assert _body(sent)["error"]["type"] == "PolicyNotFoundError"
    assert "lax" in _body(sent)["error"]["message"]


def test_a_client_gone_before_its_body_gets_nothing_and_runs_nothing() -> None:
    runs, inner = FakeRuns(), Recorder()
    app = http_runs.FastExecute(inner, runs, error_response)  # type: ignore[arg-type]
    scope = _scope(headers={"Content-Type": "application/json"})
    sent, _reads = _call(app, scope, [])
    assert sent == [] and not inner.called and not runs.calls


def test_a_recorded_policy_is_replayed_only_if_the_tenant_may_use_it() -> None:
    """Replay re-checks the recorded policy: a shipped one by name, an inline one by its reach."""
    strict_only = Tenant(name="bob", policies=("strict",))
    narrowed = load_policy({"extends": "strict", "name": "tight", "limits": {"memory_mb": 64}})
    research = load_policy("research")
    check_recorded_policy("strict", load_policy("strict").model_dump(mode="json"), strict_only)
    check_recorded_policy("tight", narrowed.model_dump(mode="json"), strict_only)
    with pytest.raises(PolicyError, match="may not use policy 'research'"):
        check_recorded_policy("research", research.model_dump(mode="json"), strict_only)
    wider = research.model_copy(update={"name": "wide"}).model_dump(mode="json")
    with pytest.raises(PolicyError, match="cannot be replayed"):
        check_recorded_policy("wide", wider, strict_only)


def test_a_run_answer_starts_with_200_before_its_code_is_handed_over() -> None:
    """The status line and a first byte go out at dispatch; the result follows in the body."""
    runs = FakeRuns()
    runs.dispatch = True
    sent, _inner, _runs, _scope = _fast(b'{"code": "print(1)"}', runs=runs)
    assert _status(sent) == 200
    assert sent[1] == {"type": "http.response.body", "body": b" ", "more_body": True}
    assert not any(k == b"content-length" for k, _ in sent[0]["headers"])
    assert _body(sent) == {"success": True, "stdout": "ran print(1)"}
    assert sent[-1]["more_body"] is False


def test_an_error_after_dispatch_is_the_envelope_under_the_200() -> None:
    """Once the 200 went out, an error (the drain killed the run) is the body's envelope."""
    runs = FakeRuns()
    runs.dispatch = True
    runs.fail_after_dispatch = ServiceUnavailableError("the server shut down")
    sent, _inner, _runs, _scope = _fast(b'{"code": "print(1)"}', runs=runs)
    assert _status(sent) == 200
    assert _body(sent)["error"]["type"] == "Draining"


def test_an_error_before_dispatch_keeps_its_own_status() -> None:
    """A run refused before its code was handed over answers its error's status, as before."""
    runs = FakeRuns()
    runs.fail_after_dispatch = ServiceUnavailableError("the server drains")
    sent, _inner, _runs, _scope = _fast(b'{"code": "print(1)"}', runs=runs)
    assert _status(sent) == 503 and _body(sent)["error"]["type"] == "Draining"


@pytest.mark.parametrize(
    ("content_type", "query"),
    [("application/json", b"trace=1"), ("application/vnd.x+json", b""), ("APPLICATION/JSON", b"")],
)
def test_every_body_the_route_would_run_takes_the_fast_path(
    content_type: str, query: bytes
) -> None:
    """A query string or a +json type still runs here, where the answer starts before the code."""
    sent, inner, runs, _ = _fast(b'{"code": "print(1)"}', content_type, query)
    assert not inner.called and _status(sent) == 200 and runs.calls
